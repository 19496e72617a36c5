import pytest

from videofusion.models.factory import build_model, count_parameters


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
