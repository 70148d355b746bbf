"""Memory report: bytes by layer / dtype / type and bits per quantized weight, measured."""
import torch
from torch import nn

import lowbit
from lowbit.evaluate.footprint import bits_per_quantized_weight, bytes_by_layer
from lowbit.nn import Linear4bit, Linear8bitLt


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(512, 256), nn.LayerNorm(256), nn.Linear(256, 512, bias=False))


def test_bits_per_weight_measured_on_buffers():
    net = _net()
    net[0] = Linear4bit.from_linear(net[0], "nf4", 64, double_quant=True)
    net[2] = Linear4bit.from_linear(net[2], "nf4", 64, double_quant=False)
    n = 2 * 512 * 256
    dq = 512 * 256 // 2 + 512 * 256 // 64 + 4 * 8 + 4  # codes, 8-bit absmax, nested absmax, offset
    plain = 512 * 256 // 2 + 4 * 512 * 256 // 64
    assert bits_per_quantized_weight(net) == 8 * (dq + plain) / n
    net[2] = Linear8bitLt.from_linear(_net()[2])
    assert bits_per_quantized_weight(net) == 8 * (dq + 512 * 256 + 4 * 512) / n


def test_detail_report_adds_up():
    net = _net()
    net[2] = Linear4bit.from_linear(net[2], "fp4", double_quant=True)
    report = lowbit.memory_footprint(net, detail=True)
    assert report["total"] == lowbit.memory_footprint(net) == sum(r["bytes"] for r in report["by_layer"])
    assert report["total"] == sum(report["by_dtype"].values()) == sum(report["by_type"].values())
    rows = {r["layer"]: r for r in bytes_by_layer(net)}
    assert rows["0"]["bytes"] == (512 * 256 + 256) * 4 and "weights" not in rows["0"]
    assert rows["2"]["type"] == "Linear4bit" and rows["2"]["weights"] == 256 * 512
    assert 4.12 < report["bits_per_quantized_weight"] < 4.2
    assert bits_per_quantized_weight(_net()) is None


def test_tied_tensors_count_once():
    emb = nn.Embedding(100, 32)
    head = nn.Linear(32, 100, bias=False)
    head.weight = emb.weight
    net = nn.ModuleDict({"emb": emb, "head": head})
    assert lowbit.memory_footprint(net) == 100 * 32 * 4
    assert [r["layer"] for r in bytes_by_layer(net)] == ["emb"]
