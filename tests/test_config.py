"""QuantConfig: validation in one place, round trip through config.json."""
import pytest

from lowbit.config import CalibrationConfig, QuantConfig
from lowbit.errors import LowbitError


def test_round_trip_through_quantization_config():
    cfg = QuantConfig(method="rtn", bits=3, group_size=64, sym=False, modules_to_not_convert=["mlp.down_proj"])
    d = cfg.to_dict()
    assert d["quant_method"] == "lowbit" and d["desc_act"] is False
    assert QuantConfig.from_dict(d) == cfg


def test_symmetry_defaults_follow_the_method():
    assert QuantConfig(method="rtn").sym is True
    assert QuantConfig(method="awq").sym is False


@pytest.mark.parametrize("bits", [1, 5, 16, True])
def test_bad_bits_name_the_choices(bits):
    with pytest.raises(LowbitError, match="--bits .* choose one of 2, 3, 4, 8"):
        QuantConfig(bits=bits)


@pytest.mark.parametrize("group_size", [0, -7, -2])
def test_bad_group_size_names_the_fix(group_size):
    with pytest.raises(LowbitError, match="positive number of columns .* or -1"):
        QuantConfig(group_size=group_size)


def test_unknown_method_lists_the_known_ones():
    with pytest.raises(LowbitError, match="unknown quantization type 'foo'"):
        QuantConfig(method="foo")


@pytest.mark.parametrize(
    "bad, message",
    [
        ("not a dict", "must be a JSON object"),
        ({"quant_method": "lowbit", "format_version": 99, "method": "rtn", "bits": 4, "group_size": 64}, "format_version"),
        ({"quant_method": "lowbit", "format_version": 1, "method": "rtn", "bits": 4}, "missing 'group_size'"),
        ({"quant_method": "lowbit", "format_version": 1, "method": "rtn", "bits": 4, "group_size": 64, "x": 1}, "unknown field"),
        ({"quant_method": "lowbit", "format_version": 1, "method": "rtn", "bits": 9, "group_size": 64}, "--bits 9"),
    ],
)
def test_malformed_quantization_config_is_a_clear_error(bad, message):
    with pytest.raises(LowbitError, match=message):
        QuantConfig.from_dict(bad)


def test_calibration_config_refuses_empty_calibration():
    with pytest.raises(LowbitError, match="--calibration-samples 0"):
        CalibrationConfig(n_samples=0)


def test_clip_search_defaults_per_method_and_round_trips():
    assert QuantConfig(method="gptq").clip_search is True
    assert QuantConfig(method="rtn").clip_search is False
    cfg = QuantConfig(method="gptq", clip_search=False)
    assert QuantConfig.from_dict(cfg.to_dict()).clip_search is False
