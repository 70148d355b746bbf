"""QLoRA: LoRA adapters trained on a frozen 4-bit (NF4) or float base, saved in the peft
format, merged back into a float copy of the base for quantization and serving.

data.py (records -> token ids + response-only labels), lora.py (LoraLinear, targets),
base.py (the frozen base, 4-bit on load), config.py (TrainConfig, LR schedule), loop.py
(the training loop), checkpoints.py (save / resume), adapters.py (peft format), merge.py.
"""
from .adapters import load_adapter, read_adapter, save_adapter
from .config import TrainConfig
from .lora import LoraLinear, LoraSettings, apply_lora, trainable_summary
from .merge import merge

__all__ = ["LoraLinear", "LoraSettings", "TrainConfig", "apply_lora", "load_adapter", "merge", "read_adapter",
           "save_adapter", "trainable_summary"]
