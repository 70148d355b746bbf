"""Helpers for the interchange tests (imported as ``exporthelp``; tests/export is put on sys.path
by this folder's conftest)."""
import copy
import json
from pathlib import Path

import torch

import tiny


def quantize_tiny(bits: int = 4, group_size: int = 32, sym: bool = True, lm_head: bool = False, seed: int = 0,
                  skip: tuple = ()):
    """(model with QuantLinear layers, tokenizer, cfg): RTN on the tiny Llama (hidden 96, mlp 160)."""
    from lowbit.config import QuantConfig
    from lowbit.quantize import quantize_model

    model, tok = tiny.build("llama", seed=seed)
    cfg = QuantConfig(method="rtn", bits=bits, group_size=group_size, sym=sym, quantize_lm_head=lm_head,
                      modules_to_not_convert=list(skip))
    quantize_model(model, cfg, progress=False)
    return model, tok, cfg


def quant_layers(model) -> dict:
    from lowbit.nn import QuantLinear

    return {n: m for n, m in model.named_modules() if isinstance(m, QuantLinear)}


def read_config(folder: Path) -> dict:
    return json.loads((folder / "config.json").read_text())


def read_state(folder: Path) -> dict:
    from safetensors.torch import load_file

    out = {}
    for f in sorted(folder.glob("*.safetensors")):
        out.update(load_file(str(f)))
    return out


def mutate_checkpoint(folder: Path, config_update=None, tensor_update=None) -> None:
    """Edit a written checkpoint in place: config_update(config dict), tensor_update(tensors dict)."""
    from safetensors.torch import save_file

    if config_update:
        cfg = read_config(folder)
        config_update(cfg)
        (folder / "config.json").write_text(json.dumps(cfg))
    if tensor_update:
        tensors = read_state(folder)
        tensor_update(tensors)
        for f in folder.glob("*.safetensors"):
            f.unlink()
        save_file(tensors, str(folder / "model.safetensors"))


def clone(model):
    return copy.deepcopy(model)


def tokens(n=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, 300, (2, n), generator=g)


def decode_stream(words, bits: int, count: int) -> "np.ndarray":
    """Independent decoder of a packed int32 run (the published layouts' description, in numpy):
    the words form one little-endian bit stream, code i is bits [i*bits, (i+1)*bits), low bit first."""
    import numpy as np

    w = np.ascontiguousarray(np.asarray(words, dtype=np.int64).astype(np.uint32).astype("<u4"))
    stream = np.unpackbits(w.view(np.uint8), bitorder="little")
    assert stream.size >= count * bits, "too few words for the codes"
    chunks = stream[: count * bits].reshape(count, bits).astype(np.int64)
    return (chunks << np.arange(bits)).sum(axis=1)
