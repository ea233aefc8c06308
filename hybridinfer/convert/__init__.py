"""Hugging Face checkpoints (ProSparse, ReluLLaMA, LLaMA, MiniCPM) -> GGUF."""

from .converter import ConversionSummary, convert_checkpoint

__all__ = ["ConversionSummary", "convert_checkpoint"]
