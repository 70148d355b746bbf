"""The training loop and `lowbit train`: schedule, accumulation, exact resume, refusals."""
import json
import sys

import pytest
import tiny
import torch

from lowbit.cli import main
from lowbit.errors import LowbitError
from lowbit.train import adapters, base, data
from lowbit.train.config import TrainConfig, lr_factor
from lowbit.train.lora import LoraSettings, apply_lora
from lowbit.train.loop import make_optimizer, train


def _records(n=16):
    words = ["fox", "dog", "quick", "lazy", "brown", "jumps", "over", "the"]
    return [{"prompt": f"Say {w} twice: ", "completion": f"{w} {w}"} for w in (words * 4)[:n]]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "train.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in _records()))
    return path


def _run(folder, out, seed=0, dropout=0.05, resume=None, **kw):
    torch.manual_seed(seed)
    model, tok = base.load_base(str(folder), load_in_4bit=True)
    settings = LoraSettings(r=4, alpha=8, dropout=dropout)
    apply_lora(model, settings)
    opts = dict(max_steps=6, learning_rate=1e-2, logging_steps=1, save_steps=3, per_device_train_batch_size=4)
    opts.update(kw)
    cfg = TrainConfig(output_dir=str(out), **opts)
    report = train(model, tok, data.tokenize(_records(), tok, 64), [], cfg, settings, str(folder),
                   base.fingerprint(model), resume=resume, progress=False)
    return model, report


def _adapter(folder):
    return adapters.read_adapter(folder).layers


def test_lr_schedule_warmup_then_decay():
    assert [round(lr_factor(s, 10, 2, "linear"), 4) for s in (0, 1, 2, 6, 9)] == [0.3333, 0.6667, 1.0, 0.5, 0.125]
    assert lr_factor(2, 10, 2, "cosine") == 1.0 and lr_factor(9, 10, 2, "cosine") == pytest.approx(0.0381, abs=1e-4)
    assert lr_factor(0, 10, 0, "constant") == 1.0 and lr_factor(0, 10, 3, "constant_with_warmup") == 0.25


def test_steps_from_epochs_and_max_steps():
    cfg = TrainConfig(output_dir="x", per_device_train_batch_size=4, gradient_accumulation_steps=2, num_train_epochs=2)
    assert cfg.updates_per_epoch(17) == 3 and cfg.total_steps(17) == 6
    assert TrainConfig(output_dir="x", max_steps=5).total_steps(1000) == 5


def test_accumulation_equals_one_big_batch(tiny_llama_dir, tmp_path, monkeypatch):
    # SGD makes the update linear in the gradient (Adam would amplify rounding where g ~ 0).
    import lowbit.train.loop as loop

    monkeypatch.setattr(loop, "make_optimizer", lambda params, cfg: (torch.optim.SGD(params, lr=1.0), "SGD"))
    big, _ = _run(tiny_llama_dir, tmp_path / "a", dropout=0.0, max_steps=2, save_steps=0)
    acc, _ = _run(tiny_llama_dir, tmp_path / "b", dropout=0.0, max_steps=2, save_steps=0,
                  per_device_train_batch_size=2, gradient_accumulation_steps=2)
    for name, (a, b) in _adapter(tmp_path / "a").items():
        a2, b2 = _adapter(tmp_path / "b")[name]
        assert b.abs().max() > 0  # B moved away from 0: there is something to compare
        assert (a - a2).abs().max() <= 1e-4 * (a - 0).abs().max()
        assert (b - b2).abs().max() <= 1e-4 * b.abs().max()


def test_gradient_checkpointing_gives_the_same_updates(tiny_llama_dir, tmp_path, monkeypatch):
    import lowbit.train.loop as loop

    monkeypatch.setattr(loop, "make_optimizer", lambda params, cfg: (torch.optim.SGD(params, lr=1.0), "SGD"))
    _run(tiny_llama_dir, tmp_path / "a", dropout=0.0, max_steps=2, save_steps=0)
    _run(tiny_llama_dir, tmp_path / "b", dropout=0.0, max_steps=2, save_steps=0, gradient_checkpointing=True)
    for name, (a, b) in _adapter(tmp_path / "a").items():
        a2, b2 = _adapter(tmp_path / "b")[name]
        assert b.abs().max() > 0 and torch.allclose(a, a2, rtol=0, atol=1e-7) and torch.allclose(b, b2, rtol=0, atol=1e-7)


def test_resume_continues_exactly(tiny_llama_dir, tmp_path):
    _, straight = _run(tiny_llama_dir, tmp_path / "straight")
    ckpt = tmp_path / "straight" / "checkpoint-3"
    assert sorted(p.name for p in ckpt.iterdir()) == ["adapter_config.json", "adapter_model.safetensors",
                                                       "optimizer.pt", "rng_state.pt", "trainer_state.json"]
    # A fresh process-like start (other seed for the LoRA init: the checkpoint must override it).
    _, resumed = _run(tiny_llama_dir, tmp_path / "resumed", seed=1, resume=str(ckpt))
    for name, (a, b) in _adapter(tmp_path / "straight").items():
        a2, b2 = _adapter(tmp_path / "resumed")[name]
        assert torch.equal(a, a2) and torch.equal(b, b2), name
    assert resumed["train_loss_last"] == straight["train_loss_last"]
    state = json.loads((tmp_path / "resumed" / "trainer_state.json").read_text())
    assert [h["step"] for h in state["log_history"]] == [1, 2, 3, 4, 5, 6]


def test_resume_refuses_checkpoint_of_another_model(tiny_llama_dir, tmp_path):
    _run(tiny_llama_dir, tmp_path / "a", max_steps=4, save_steps=2)
    other = tiny.save("llama", tmp_path / "other", seed=1)  # same shapes, other weights
    with pytest.raises(LowbitError, match="trained on another model"):
        _run(other, tmp_path / "b", resume=str(tmp_path / "a" / "checkpoint-2"))
    with pytest.raises(LowbitError, match="LoRA r 4, this run 8"):
        torch.manual_seed(0)
        model, tok = base.load_base(str(tiny_llama_dir))
        apply_lora(model, LoraSettings(r=8))
        train(model, tok, data.tokenize(_records(), tok, 64), [], TrainConfig(output_dir=str(tmp_path / "c")),
              LoraSettings(r=8), "x", base.fingerprint(model), resume=str(tmp_path / "a" / "checkpoint-2"),
              progress=False)


def test_optimizer_falls_back_to_torch_adamw_without_bitsandbytes(monkeypatch, caplog):
    p = [torch.nn.Parameter(torch.zeros(3))]
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # import fails
    opt, name = make_optimizer(p, TrainConfig(output_dir="x", optim="paged_adamw_8bit"))
    assert isinstance(opt, torch.optim.AdamW) and name == "AdamW (torch)"
    assert "bitsandbytes, which is not installed: using plain torch AdamW" in caplog.text


def test_bitsandbytes_optimizer_when_installed():
    bnb = pytest.importorskip("bitsandbytes")
    p = [torch.nn.Parameter(torch.zeros(4096))]
    opt, name = make_optimizer(p, TrainConfig(output_dir="x", optim="adamw_8bit"))
    assert isinstance(opt, bnb.optim.AdamW8bit) and name.startswith("AdamW8bit (bitsandbytes")


def test_regex_targets_when_suffixes_would_catch_more(tiny_llama_dir, tmp_path):
    peft = pytest.importorskip("peft")
    from transformers import AutoModelForCausalLM

    model, _ = base.load_base(str(tiny_llama_dir), load_in_4bit=False)
    settings = LoraSettings(r=2, alpha=4, target_modules=["model.layers.0.self_attn.q_proj"])
    apply_lora(model, settings)
    adapters.save_adapter(model, tmp_path, settings, str(tiny_llama_dir))
    cfg = json.loads((tmp_path / "adapter_config.json").read_text())
    assert isinstance(cfg["target_modules"], str)
    pm = peft.PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(tiny_llama_dir)), str(tmp_path))
    adapted = [n for n, m in pm.named_modules() if hasattr(m, "lora_A") and isinstance(m.lora_A, torch.nn.ModuleDict)]
    assert adapted == ["base_model.model.model.layers.0.self_attn.q_proj"]


def test_cli_train_lowers_loss_and_writes_the_adapter(tiny_llama_dir, dataset, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["train", "--model-path", str(tiny_llama_dir), "--dataset", str(dataset), "--output-dir", str(out),
                 "--max-steps", "8", "--learning-rate", "1e-2", "--logging-steps", "2", "--eval-ratio", "0.25",
                 "--lora-r", "4", "--target-modules", "q_proj,v_proj", "--gradient-checkpointing", "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "trainable params: 2,688 || all params: 181,344 || trainable%: 1.4823" in printed and "trainable%: " in printed
    report = json.loads((out / "train_report.json").read_text())
    assert report["train_loss_last"] < report["train_loss_first"] and report["eval_loss_last"] < report["eval_loss_first"]
    assert (out / "adapter_config.json").is_file() and (out / "tokenizer.json").is_file()
    # A second run into the same folder is refused without --overwrite, and nothing is touched.
    before = (out / "adapter_model.safetensors").read_bytes()
    assert main(["train", "--model-path", str(tiny_llama_dir), "--dataset", str(dataset), "--output-dir", str(out),
                 "--quiet"]) == 2
    assert "not empty" in capsys.readouterr().err and (out / "adapter_model.safetensors").read_bytes() == before


@pytest.mark.parametrize("extra, message", [
    (["--target-modules", "qkv"], "--target-modules qkv match no Linear layer"),
    (["--max-seq-length", "4096"], "longer than the model's maximum of 256 tokens"),
    (["--dataset", "BAD"], "no 'completion' field"),
    (["--resume-from-checkpoint", "last"], "no checkpoint-"),
])
def test_cli_bad_input(tiny_llama_dir, dataset, tmp_path, capsys, extra, message):
    if "BAD" in extra:
        bad = tmp_path / "bad.jsonl"
        bad.write_text(json.dumps({"prompt": "only a prompt"}) + "\n")
        extra = ["--dataset", str(bad)]
    out = tmp_path / "out"
    argv = ["train", "--model-path", str(tiny_llama_dir), "--dataset", str(dataset), "--output-dir", str(out),
            "--max-steps", "1", "--quiet"] + extra
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and len(err.strip().splitlines()) == 1
    assert not out.exists() or not any(out.iterdir())
    if "BAD" in str(extra):
        assert '"prompt": "only a prompt"' in err  # the record is shown
