"""BnbConfig (bitsandbytes names) and the nf4/fp4/int8 fields of QuantConfig."""
import pytest
import torch

from lowbit.config import BnbConfig, QuantConfig
from lowbit.errors import LowbitError


def test_accepts_transformers_bitsandbytes_config_as_is():
    from transformers import BitsAndBytesConfig

    hf = BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16,
        bnb_4bit_use_double_quant=True, llm_int8_skip_modules=["lm_head", "mlp.down_proj"],
        llm_int8_enable_fp32_cpu_offload=True,
    )
    cfg = BnbConfig.from_any(hf)
    assert cfg.method == "nf4" and cfg.bnb_4bit_compute_dtype == "bfloat16"
    assert cfg.bnb_4bit_use_double_quant and cfg.llm_int8_enable_fp32_cpu_offload
    assert cfg.llm_int8_skip_modules == ["lm_head", "mlp.down_proj"]
    # and its serialized form (config.json of a transformers bnb checkpoint)
    assert BnbConfig.from_any(hf.to_dict()) == cfg
    eight = BnbConfig.from_any(BitsAndBytesConfig(load_in_8bit=True, llm_int8_threshold=4.0))
    assert eight.method == "int8" and eight.llm_int8_threshold == 4.0
    # transformers' own default quant type (fp4) is taken as is
    assert BnbConfig.from_any(BitsAndBytesConfig(load_in_4bit=True)).method == "fp4"


def test_to_quant_config_carries_every_knob():
    q = BnbConfig(load_in_4bit=True, bnb_4bit_quant_type="fp4", bnb_4bit_compute_dtype=torch.float16,
                  bnb_4bit_use_double_quant=True, bnb_4bit_blocksize=128).to_quant_config()
    assert (q.method, q.bits, q.blocksize, q.double_quant, q.compute_dtype) == ("fp4", 4, 128, True, "float16")
    q8 = BnbConfig(load_in_8bit=True, llm_int8_threshold=0.0, llm_int8_skip_modules=["o_proj"]).to_quant_config()
    assert (q8.method, q8.bits, q8.int8_threshold, q8.modules_to_not_convert) == ("int8", 8, 0.0, ["o_proj"])
    assert q8.int8_act_block_size == 64  # lowbit's default: per token and block of 64 columns
    assert QuantConfig.from_dict(q8.to_dict()) == q8
    paper = BnbConfig(load_in_8bit=True, llm_int8_act_block_size=0).to_quant_config()
    assert paper.int8_act_block_size == 0 and QuantConfig.from_dict(paper.to_dict()) == paper


def test_overrides_and_keywords():
    assert BnbConfig.from_any(None, load_in_4bit=True).method == "nf4"
    assert BnbConfig.from_any({"load_in_8bit": True}).method == "int8"


@pytest.mark.parametrize("kwargs, message", [
    ({"load_in_4bit": True, "load_in_8bit": True}, "both set"),
    ({}, "neither load_in_4bit nor load_in_8bit"),
    ({"load_in_4bit": True, "bnb_4bit_quant_type": "nf3"}, "unknown bnb_4bit_quant_type 'nf3'"),
    ({"load_in_4bit": True, "bnb_4bit_compute_dtype": "int8"}, "bnb_4bit_compute_dtype 'int8' is not supported"),
    ({"load_in_4bit": True, "bnb_4bit_blocksize": 63}, "blocksize 63"),
    ({"load_in_8bit": True, "llm_int8_threshold": -1.0}, "threshold -1.0"),
    ({"load_in_8bit": True, "llm_int8_act_block_size": -64}, "block size -64 is invalid"),
    ({"load_in_8bit": True, "llm_int8_act_block_size": 64.0}, "block size 64.0 is invalid"),
    ({"load_in_8bit": True, "llm_int8_skip_modules": "lm_head"}, "list of layer names"),
    ({"load_in_4bit": "yes"}, "load_in_4bit must be True or False"),
])
def test_bad_input_is_one_clear_error(kwargs, message):
    with pytest.raises(LowbitError, match=message):
        BnbConfig(**kwargs)


def test_bad_dict_and_type():
    with pytest.raises(LowbitError, match="unknown key"):
        BnbConfig.from_any({"load_in_4bit": True, "bnb_4bit_quant_typ": "nf4"})
    with pytest.raises(LowbitError, match="not understood"):
        BnbConfig.from_any(42)
    with pytest.raises(LowbitError, match="both set"):
        BnbConfig.from_any({"load_in_4bit": True}, load_in_8bit=True)


def test_quant_config_bnb_fields_validated_and_bits_implied():
    assert QuantConfig(method="int8").bits == 8 and QuantConfig(method="nf4").bits == 4
    with pytest.raises(LowbitError, match="compute_dtype"):
        QuantConfig(method="nf4", compute_dtype="float64")
    with pytest.raises(LowbitError, match="blocksize"):
        QuantConfig(method="nf4", blocksize=0)
    old = QuantConfig(method="rtn").to_dict()
    for k in ("blocksize", "double_quant", "compute_dtype", "int8_threshold", "int8_act_block_size"):
        old.pop(k)  # a checkpoint written before these fields existed still loads
    assert QuantConfig.from_dict(old).blocksize == 64
