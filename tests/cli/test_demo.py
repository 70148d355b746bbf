"""The main job on the real demo model: RTN w4 g64 through the CLI, then load and generate."""
import json

import pytest
import torch

import lowbit
from lowbit.cli import main

pytestmark = pytest.mark.demo


@pytest.fixture(scope="module")
def demo_rtn(demo_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "rtn-w4g64"
    assert main(["quantize", "--model-path", "demo", "--output-dir", str(out), "--quantization-type", "rtn",
                 "--bits", "4", "--group-size", "64", "--quiet"]) == 0
    return out


def test_demo_checkpoint_quantizes_every_block_linear(demo_rtn):
    report = json.loads((demo_rtn / "lowbit_report.json").read_text())
    assert len(report["layers"]) == 30 * 7
    config = json.loads((demo_rtn / "config.json").read_text())
    assert config["quantization_config"]["group_size"] == 64


def test_demo_quantized_model_generates_text(demo_rtn):
    model = lowbit.load(demo_rtn, device="cpu")
    tok = model.tokenizer
    ids = tok("The capital of France is", return_tensors="pt").input_ids
    with torch.inference_mode():
        out = model.generate(ids, max_new_tokens=8, do_sample=False, pad_token_id=tok.eos_token_id)
    text = tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
    assert len(text.strip()) > 0


def test_demo_quantized_loss_stays_near_the_original(demo_rtn):
    from pydoc_data.topics import topics

    text = topics["assert"][:2000]
    base = lowbit.load("demo", device="cpu")
    quant = lowbit.load(demo_rtn, device="cpu")
    ids = base.tokenizer(text, return_tensors="pt").input_ids[:, :256]
    with torch.inference_mode():
        l0 = base(ids, labels=ids).loss.item()
        l1 = quant(ids, labels=ids).loss.item()
    # Symmetric 4-bit g64 RTN costs about 0.3-0.4 nats on this short text; a broken model costs several.
    assert l1 < l0 + 0.5, (l0, l1)


def test_demo_ragged_group_128_quantizes_hidden_576(demo_dir, tmp_path):
    out = tmp_path / "g128"
    assert main(["quantize", "--model-path", "demo", "--output-dir", str(out), "--quantization-type", "rtn",
                 "--group-size", "128", "--skip-modules", "mlp", "--format", "lowbit", "--quiet"]) == 0
    model = lowbit.load(out, device="cpu")
    q_proj = model.model.layers[0].self_attn.q_proj
    assert q_proj.scales.shape == (5, 576)  # 4 groups of 128 + one of 64 over 576 columns
