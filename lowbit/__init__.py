"""lowbit: quantize, fine-tune, evaluate and serve large language models in low bit widths."""
__version__ = "0.1.0"


def load(src, device=None, dtype=None, quantization_config=None, device_map=None, **quant_kwargs):
    """A ready model from a lowbit checkpoint, a Hugging Face folder, a hub id, a GGUF file
    or "demo"; its tokenizer is at ``model.tokenizer``. ``quantization_config`` /
    ``load_in_4bit=True`` / ``load_in_8bit=True`` / ``device_map`` quantize a float model
    while loading it (bitsandbytes names). See ``lowbit.models.load``."""
    from .models.load import load as _load

    return _load(src, device=device, dtype=dtype, quantization_config=quantization_config, device_map=device_map,
                 **quant_kwargs)


def memory_footprint(model, detail: bool = False):
    """Bytes of the model's parameters and buffers (like transformers' get_memory_footprint).

    detail=True: a dict with "total", "by_dtype", "by_type", "by_layer" (one row per module
    holding tensors) and "bits_per_quantized_weight" (see ``lowbit.evaluate.footprint``)."""
    from .evaluate.memory import memory_footprint as _footprint

    if not detail:
        return _footprint(model)
    from .evaluate.footprint import bits_per_quantized_weight, bytes_by_layer, bytes_by_type
    from .evaluate.memory import bytes_by_dtype

    return {"total": _footprint(model), "by_dtype": bytes_by_dtype(model), "by_type": bytes_by_type(model),
            "by_layer": bytes_by_layer(model), "bits_per_quantized_weight": bits_per_quantized_weight(model)}
