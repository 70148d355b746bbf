"""The block-by-block runner agrees with whole-model passes; bad input fails clearly."""
import pytest
import torch
import tiny

from lowbit.algorithms.gptq import HessianStats
from lowbit.calibration import sequential
from lowbit.calibration.blockwise import frozen_parts, sequential_subsets
from lowbit.config import QuantConfig
from lowbit.errors import LowbitError
from lowbit.models.registry import block_linears, get_arch, get_blocks
from lowbit.quantize import quantize_model

F32 = torch.float32


# tiny tensors: see the one_thread fixture (tests/conftest.py)
pytestmark = pytest.mark.usefixtures("one_thread")


def ids(n=6, length=48, seed=0):
    return torch.randint(3, tiny.VOCAB, (n, length), generator=torch.Generator().manual_seed(seed))


def build(arch):
    model, tok = tiny.build(arch)
    if arch == "gemma3_text":  # a sliding-window layer and a full one, window shorter than the text:
        cfg = model.config  # the runner must pass each layer its own mask and rotary embedding
        cfg.sliding_window = 8
        cfg.layer_types = ["sliding_attention", "full_attention"]
        model, tok = tiny.build(arch)
        model = type(model)(cfg).eval()
    return model


@pytest.mark.parametrize("arch", ["llama", "gemma3_text", "opt"])
def test_block_inputs_match_a_whole_model_pass(arch):
    model = build(arch)
    x = ids()
    with torch.no_grad():
        ref = model(x, output_hidden_states=True).hidden_states
    seen = []

    def step(i, block, runner):
        seen.append(torch.cat(runner.acts.hidden))
        return []

    sequential.run(model, x, step, device="cpu", compute_dtype=F32, batch_size=4, progress=False)
    assert len(seen) == len(get_blocks(model))
    for i, h in enumerate(seen):
        assert torch.allclose(h, ref[i], atol=1e-5, rtol=1e-4), f"block {i} inputs differ"


def test_statistics_match_hooks_on_a_whole_model_pass():
    model = build("llama")
    x = ids()
    full = {}
    hooks = [m.register_forward_pre_hook(lambda m, a, n=n: full.setdefault(n, []).append(a[0].reshape(-1, a[0].shape[-1])))
             for n, m in get_blocks(model)[1].named_modules() if isinstance(m, torch.nn.Linear)]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    got = {}

    def step(i, block, runner):
        if i == 1:
            got.update(runner.collect(list(block_linears(block)), HessianStats.zeros, stop_early=False))
        return []

    sequential.run(model, x, step, device="cpu", compute_dtype=F32, batch_size=5, progress=False)
    assert got["self_attn.q_proj"] is got["self_attn.k_proj"] is got["self_attn.v_proj"]  # one shared input
    for name, xs in full.items():
        X = torch.cat(xs)
        assert torch.allclose(got[name].H, 2 * X.t() @ X / X.shape[0], rtol=1e-4, atol=1e-5), name


@pytest.mark.parametrize("method", ["gptq", "awq"])
def test_quantized_blocks_feed_the_next_one_as_at_inference(method):
    """Block i is calibrated on the outputs of the already-quantized blocks < i: exactly what
    the finished quantized model computes."""
    model = build("llama")
    x = ids()
    seen = []
    original = sequential.BlockRunner.collect

    def spy(self, *a, **k):
        if not seen or seen[-1][0] != self.index:
            seen.append((self.index, torch.cat(self.acts.hidden)))
        return original(self, *a, **k)

    sequential.BlockRunner.collect = spy
    try:
        quantize_model(model, QuantConfig(method=method, bits=4, group_size=32), progress=False, calibration=x,
                       compute_dtype=F32, batch_size=4)
    finally:
        sequential.BlockRunner.collect = original
    with torch.no_grad():
        ref = model(x, output_hidden_states=True).hidden_states
    for i, h in seen:
        assert torch.allclose(h, ref[i], atol=1e-5, rtol=1e-4), f"block {i}"


@pytest.mark.parametrize("arch", ["llama", "gemma2", "phi3"])
def test_replaying_frozen_submodules_changes_nothing(monkeypatch, arch):
    x = ids()
    results = []
    original = sequential.BlockRunner.outputs
    for freeze in (True, False):
        if not freeze:
            monkeypatch.setattr(sequential.BlockRunner, "freeze", lambda self, child: None)
            monkeypatch.setattr(sequential.BlockRunner, "freeze_tail", lambda self, child, linear: None)
        model = build(arch)
        checked = []
        monkeypatch.setattr(sequential.BlockRunner, "outputs",
                            lambda self: checked.append(dict(self.acts.replay_ok)) or original(self))
        quantize_model(model, QuantConfig(method="gptq", bits=3, group_size=32), progress=False, calibration=x,
                       compute_dtype=F32, batch_size=4)
        if freeze:  # the replays were used, and checked against recomputing
            assert checked[-1] and all(checked[-1].values()), checked
        results.append(model.state_dict())
    assert all(torch.equal(results[0][k], results[1][k]) for k in results[0])


def test_rtn_through_the_runner_is_layerwise_rtn():
    from lowbit.formats import quantize_affine

    model = build("qwen2")
    W = model.model.layers[1].mlp.down_proj.weight.detach().clone()
    quantize_model(model, QuantConfig(method="rtn", bits=4, group_size=32), progress=False, device="cpu")
    assert torch.equal(model.model.layers[1].mlp.down_proj.dequantize(), quantize_affine(W, 4, (1, 32)).dequantize())


def test_true_sequential_subsets_and_frozen_children():
    arch = get_arch(build("llama"))
    names = list(arch.linears)
    assert sequential_subsets(names, arch) == [
        ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"], ["self_attn.o_proj"],
        ["mlp.gate_proj", "mlp.up_proj"], ["mlp.down_proj"]]
    block = get_blocks(build("llama"))[0]
    assert frozen_parts(block, names, set()) == ([], [])
    assert frozen_parts(block, names, set(names[:3])) == ([], [("self_attn", "self_attn.o_proj")])
    assert frozen_parts(block, names, set(names[:4])) == (["self_attn"], [])
    assert frozen_parts(block, names, set(names[:6])) == (["self_attn"], [("mlp", "mlp.down_proj")])
    assert frozen_parts(block, names, set(names)) == (["self_attn", "mlp"], [])


def test_calibrated_gptq_beats_rtn_on_a_tiny_model():
    x = ids(n=16, length=64)
    errs = {}
    for method in ("rtn", "gptq", "awq"):
        model = build("llama")
        with torch.no_grad():
            ref = model(x).logits
        quantize_model(model, QuantConfig(method=method, bits=3, group_size=32), progress=False, calibration=x,
                       batch_size=8)
        with torch.no_grad():
            errs[method] = (model(x).logits - ref).pow(2).mean().item()
    assert errs["gptq"] < 0.8 * errs["rtn"] and errs["awq"] < errs["rtn"], errs


def test_out_of_memory_is_a_clear_error(monkeypatch):
    model = build("llama")

    def oom(module, args):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    model.model.layers[1].mlp.register_forward_pre_hook(oom)
    with pytest.raises(LowbitError, match="out of memory.*fewer --calibration-samples or a shorter --max-seq-length"):
        quantize_model(model, QuantConfig(method="gptq", bits=4, group_size=32), progress=False, calibration=ids())


def test_nan_weights_and_activations_are_clear_errors():
    model = build("llama")
    with torch.no_grad():
        model.model.layers[1].mlp.up_proj.weight[0, 0] = float("nan")
    with pytest.raises(LowbitError, match="NaN or Inf weights"):
        quantize_model(model, QuantConfig(method="rtn", bits=4, group_size=32), progress=False)
    model = build("llama")
    with torch.no_grad():
        model.model.layers[0].post_attention_layernorm.weight.fill_(float("inf"))
    with pytest.raises(LowbitError, match="NaN"):
        quantize_model(model, QuantConfig(method="gptq", bits=4, group_size=32), progress=False, calibration=ids())


def test_bad_device_and_calibration_ids():
    model = build("llama")
    if not torch.cuda.is_available():
        with pytest.raises(LowbitError, match="no CUDA device"):
            quantize_model(model, QuantConfig(method="gptq"), progress=False, calibration=ids(), device="cuda")
    with pytest.raises(LowbitError, match="LongTensor"):
        quantize_model(model, QuantConfig(method="gptq"), progress=False, calibration=torch.randn(2, 8))
