"""The key-frame embedding (beyond the paper, spec §7): the clip's clean key-frame estimate,
pooled into one vector, joins every frame's embedding of the residual generator."""

import pytest
import torch
from conftest import tiny_base

from videofusion import SpaceTimeUNet, VideoFusionModel, make_lambdas
from videofusion.models.factory import build_model
from videofusion.noise import key_frame_index

pytestmark = pytest.mark.usefixtures("one_thread")


def residual(key_frame_embedding: bool, in_channels: int = 3) -> SpaceTimeUNet:
    torch.manual_seed(1)
    return SpaceTimeUNet(
        in_channels=in_channels, out_channels=3, block_out_channels=(8, 16),
        spatial_attention=(False, True), temporal_attention=(True, True), attention_heads=2,
        norm_num_groups=4, num_classes=10, key_frame_embedding=key_frame_embedding,
    )


def live(network: SpaceTimeUNet) -> SpaceTimeUNet:
    """The embedding's zero last layer made non-zero, as training would."""
    torch.manual_seed(2)
    torch.nn.init.normal_(network.key_frame_encoder.project.weight, std=0.5)
    return network


def test_a_new_embedding_starts_as_the_model_it_extends():
    plain, embedding = residual(False), residual(True)
    missing, unexpected = embedding.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and missing and all(k.startswith("key_frame_encoder.") for k in missing)
    g = torch.Generator().manual_seed(0)
    z, key = torch.randn(2, 3, 4, 8, 8, generator=g), torch.rand(2, 3, 8, 8, generator=g)
    labels, t = torch.tensor([1, 2]), torch.tensor([10, 900])
    with torch.no_grad():
        torch.testing.assert_close(embedding(z, t, class_labels=labels, key_frame=key),
                                   plain(z, t, class_labels=labels))


def test_each_clip_s_key_frame_reaches_all_of_its_frames_and_no_other_clip():
    network = live(residual(True))
    g = torch.Generator().manual_seed(0)
    z, key = torch.randn(2, 3, 4, 8, 8, generator=g), torch.rand(2, 3, 8, 8, generator=g)
    other = key.clone()
    other[0] = torch.rand(3, 8, 8, generator=g)  # only the first clip's key frame changes
    labels, t = torch.tensor([1, 2]), torch.tensor([10, 900])
    with torch.no_grad():
        before = network(z, t, class_labels=labels, key_frame=key)
        after = network(z, t, class_labels=labels, key_frame=other)
    changed = (after - before).abs().amax(dim=(1, 3, 4))  # (B, F)
    assert (changed[0] > 1e-4).all()
    assert (changed[1] == 0).all()


def test_the_embedding_is_pooled_so_the_content_s_position_does_not_matter():
    network = live(residual(True))
    key = -torch.ones(1, 3, 16, 16)
    moved = key.clone()
    key[:, 0, 5:8, 5:8] = 1  # a red square, away from the borders
    moved[:, 0, 8:11, 6:9] = 1  # the same square elsewhere
    recoloured = -torch.ones(1, 3, 16, 16)
    recoloured[:, 2, 5:8, 5:8] = 1  # a blue one where the red one was
    encode = network.key_frame_encoder
    with torch.no_grad():
        torch.testing.assert_close(encode(moved), encode(key))
        assert (encode(recoloured) - encode(key)).abs().max() > 1e-3


def test_the_residual_generator_is_given_the_clean_key_frame_the_base_noise_implies():
    g = torch.Generator().manual_seed(0)
    frames, k = 5, key_frame_index(5)
    x = torch.rand(2, 3, frames, 8, 8, generator=g) * 1.6 - 0.8  # inside [-1, 1]
    b = torch.randn(2, 3, 8, 8, generator=g)
    alpha_bar = torch.tensor([0.05, 0.9])
    a = alpha_bar.view(-1, 1, 1, 1)
    z = torch.randn(2, 3, frames, 8, 8, generator=g)
    z[:, :, k] = a.sqrt() * x[:, :, k] + (1 - a).sqrt() * b  # the key frame is all base
    network = residual(True)
    seen = []
    network.key_frame_encoder.register_forward_hook(lambda m, args, out: seen.append(args[0]))
    model = VideoFusionModel(network, tiny_base(num_classes=10))
    labels, t, lambdas = torch.tensor([1, 2]), torch.tensor([980, 100]), make_lambdas(frames)
    with torch.no_grad():
        model.predict_residual(z, b, t, alpha_bar, lambdas, class_labels=labels)
        torch.testing.assert_close(seen[-1], x[:, :, k])  # the true b: the clean key frame
        bhat = b + 0.3 * torch.randn(b.shape, generator=g)
        model.predict_residual(z, bhat, t, alpha_bar, lambdas, class_labels=labels)
        implied = (z[:, :, k] - (1 - a).sqrt() * bhat) / a.sqrt()
        torch.testing.assert_close(seen[-1], implied.clamp(-1, 1))
        assert (implied.abs() > 1).any()  # the clamp was exercised
        # the whole model: teacher-forced clips see b, the others their own bhat
        model(z, t, alpha_bar, lambdas, class_labels=labels, base_noise=b,
              teacher_forced=torch.tensor([True, False]))
        torch.testing.assert_close(seen[-1][0], x[0, :, k])
        assert not torch.allclose(seen[-1][1], x[1, :, k], atol=1e-2)


def test_key_frame_inputs_are_refused_where_they_do_not_fit():
    plain, embedding = residual(False), residual(True)
    z, t = torch.randn(1, 3, 4, 8, 8), torch.tensor([10])
    labels = torch.tensor([1])
    with pytest.raises(ValueError, match="^this model was built without key_frame_embedding: "
                                         "it takes no key_frame$"):
        plain(z, t, class_labels=labels, key_frame=torch.zeros(1, 3, 8, 8))
    with pytest.raises(ValueError, match=r"^this model embeds the key frame: pass key_frame of "
                                         r"shape \(1, 3, 8, 8\), got None$"):
        embedding(z, t, class_labels=labels)
    with pytest.raises(ValueError, match=r"got \(1, 6, 8, 8\)$"):
        embedding(z, t, class_labels=labels, key_frame=torch.zeros(1, 6, 8, 8))
    with pytest.raises(ValueError, match="^key_frame_embedding needs a base generator"):
        VideoFusionModel(embedding)


def test_build_model_gives_the_embedding_to_videofusion_and_not_to_its_vdm_baseline():
    kwargs = dict(condition="class", residual_input="with_key_frame", key_frame_embedding=True,
                  base_channels=(8, 16), residual_channels=(8, 16))
    videofusion = build_model(**kwargs)
    assert videofusion.embeds_key_frame and videofusion.residual.config.key_frame_embedding
    assert not build_model(**{**kwargs, "key_frame_embedding": False}).embeds_key_frame
    assert not build_model("vdm", **kwargs).embeds_key_frame


def test_the_embedding_survives_save_and_load(tmp_path):
    network = live(residual(True, in_channels=6))
    network.save_pretrained(tmp_path)
    loaded = SpaceTimeUNet.from_pretrained(tmp_path)
    assert loaded.config.key_frame_embedding
    z, key = torch.randn(1, 6, 4, 8, 8), torch.rand(1, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(loaded(z, torch.tensor([5]), class_labels=torch.tensor([3]),
                                          key_frame=key),
                                   network(z, torch.tensor([5]), class_labels=torch.tensor([3]),
                                           key_frame=key))
