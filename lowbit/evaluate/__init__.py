"""Measuring what quantization lost and gained: perplexity, speed, memory."""
