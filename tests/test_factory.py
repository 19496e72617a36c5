from pathlib import Path

import pytest

from videofusion.config import TrainConfig
from videofusion.models.factory import build_model, count_parameters

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("condition", ["none", "class", "text"])
def test_vdm_baseline_matches_videofusion_parameters(condition):
    vf = build_model("videofusion", 32, 3, condition)
    vdm = build_model("vdm", 32, 3, condition)
    assert vdm.is_baseline and not vf.is_baseline
    total = count_parameters(vf)
    assert abs(count_parameters(vdm) - total) / total < 0.15


def test_bad_kind_and_condition():
    with pytest.raises(ValueError, match="kind"):
        build_model("gan")
    with pytest.raises(ValueError, match="condition"):
        build_model(condition="audio")


def test_vdm_baseline_matches_the_physics_model_and_keeps_the_digits_ablation_widths():
    """The RQ1 rows on the physics model (scripts/ablations.py --config
    configs/physics_64.yaml) compare models of one size: at its widths (4 latent channels,
    16x16 latents, class + text, a key-frame input) the baseline is within 2% of VideoFusion's
    10.1M and has no key-frame input; the digits ablations' baseline keeps the widths its rows
    were trained with."""
    for name, channels, side, widths, tolerance in (
            ("physics_64.yaml", 4, 16, None, 0.02),
            ("moving_digits_ablations.yaml", 3, 32, (24, 48, 96), 0.01)):
        config = TrainConfig.from_yaml(ROOT / "configs" / name)
        kwargs = dict(sample_size=side, channels=channels, condition=config.condition,
                      num_classes=6, base_channels=config.base_channels,
                      residual_channels=config.residual_channels,
                      layers_per_block=config.layers_per_block,
                      residual_input=config.residual_input,
                      key_frame_correction=config.key_frame_correction)
        vf, vdm = build_model("videofusion", **kwargs), build_model("vdm", **kwargs)
        total = count_parameters(vf)
        assert abs(count_parameters(vdm) - total) / total < tolerance, name
        assert vdm.residual.config.in_channels == channels and vdm.residual_input == "paper"
        assert not vdm.key_frame_correction
        if widths is not None:
            assert vdm.residual.config.block_out_channels == widths
