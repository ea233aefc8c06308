"""Hugging Face checkpoints (ProSparse, ReluLLaMA, LLaMA, MiniCPM, Qwen2, Qwen3, Llama 3) -> GGUF."""

from .converter import ConversionSummary, convert_checkpoint

__all__ = ["ConversionSummary", "convert_checkpoint"]
