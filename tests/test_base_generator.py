"""The base generator wrapper (spec §2: an image diffusion UNet on the key frame): what it keeps
of the UNet's output, what it forwards, and its errors (found by mutation survivors)."""

import pytest
import torch
from conftest import tiny_base
from diffusers import UNet2DModel

from videofusion.models.base import BaseGenerator


def test_a_unet_that_learns_its_variance_gives_only_its_epsilon():
    unet = UNet2DModel(sample_size=8, in_channels=3, out_channels=6, block_out_channels=(8, 16),
                       layers_per_block=1, norm_num_groups=4,
                       down_block_types=("DownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "UpBlock2D"))
    z = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([10, 500])
    with torch.no_grad():
        out = BaseGenerator(unet)(z, t)
        torch.testing.assert_close(out, unet(z, t).sample[:, :3])
    assert out.shape == (2, 3, 8, 8)


def test_loading_forwards_its_options_and_refuses_other_models(tmp_path):
    tiny_base().save_pretrained(tmp_path / "unet")
    loaded = BaseGenerator.from_pretrained(tmp_path, torch_dtype=torch.float64)
    assert next(loaded.parameters()).dtype == torch.float64
    config = tmp_path / "unet" / "config.json"
    config.write_text(config.read_text().replace('"UNet2DModel"', '"UNet3DConditionModel"'))
    with pytest.raises(ValueError, match=r"holds a UNet3DConditionModel, not one of "
                                         r"\['UNet2DConditionModel', 'UNet2DModel'\]$"):
        BaseGenerator.from_pretrained(tmp_path)
    with pytest.raises(TypeError, match=r"^the base generator must be a UNet2DModel or "
                                        r"UNet2DConditionModel, got Linear$"):
        BaseGenerator(torch.nn.Linear(2, 2))


def test_a_conditioned_base_says_which_condition_is_missing():
    z, t = torch.zeros(1, 3, 8, 8), torch.tensor([1])
    with pytest.raises(ValueError, match=r"^the base generator is class-conditioned: pass "
                                         r"class_labels$"):
        BaseGenerator(tiny_base(num_classes=3))(z, t)
    with pytest.raises(ValueError, match=r"^the base generator is text-conditioned: pass "
                                         r"encoder_hidden_states$"):
        BaseGenerator(tiny_base(cross_attention_dim=8))(z, t)
