"""lowbit.load takes a folder, a GGUF file, a hub id or "demo"."""
import pytest
import torch

import lowbit
from lowbit.errors import LowbitError


def test_plain_hf_folder_loads_with_its_tokenizer(tiny_llama_dir):
    model = lowbit.load(tiny_llama_dir, device="cpu")
    assert model.config.model_type == "llama" and model.tokenizer is not None
    assert not model.training


def test_hub_id_offline_fails_with_a_clear_message(monkeypatch):
    import huggingface_hub

    # HF_HUB_OFFLINE is read once at import; patch the constant so no request is attempted.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(LowbitError, match="could not load 'lowbit-test/no-such-model' from the Hugging Face Hub"):
        lowbit.load("lowbit-test/no-such-model", device="cpu")


def test_a_file_that_is_not_a_model_is_refused(tmp_path):
    f = tmp_path / "notes.txt"
    f.write_text("hello")
    with pytest.raises(LowbitError, match="is not a model"):
        lowbit.load(f, device="cpu")


def test_unknown_dtype_is_refused(tiny_llama_dir):
    with pytest.raises(LowbitError, match="unknown dtype 'float12'"):
        lowbit.load(tiny_llama_dir, device="cpu", dtype="float12")


@pytest.mark.demo
def test_gguf_file_loads_to_the_same_weights_as_the_demo_folder(demo_dir):
    from lowbit.models.demo import demo_gguf_path

    from_gguf = lowbit.load(demo_gguf_path(), device="cpu")
    from_folder = lowbit.load("demo", device="cpu")
    ids = torch.tensor([[1, 504, 3458, 314, 4301]])
    with torch.inference_mode():
        assert torch.equal(from_gguf(ids).logits, from_folder(ids).logits)
    assert from_gguf.tokenizer("def f(x):").input_ids == from_folder.tokenizer("def f(x):").input_ids
