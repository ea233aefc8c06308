"""RoPE settings of a Hugging Face config, and Llama 3's `rope_freqs` tensor computed as llama.cpp's converter does.

transformers 4 writes `rope_theta` and `rope_scaling` (`type` or `rope_type`, `factor`, ...); transformers 5 writes
one `rope_parameters` object holding `rope_theta` and `rope_type` too. Either is read. Kinds:

    default (or no scaling)  nothing more in the GGUF
    linear                   rope.scaling.type "linear" and rope.scaling.factor (every angle divided by factor)
    llama3                   (LlamaForCausalLM only) a `rope_freqs.weight` tensor of head_dim / 2 divisors, one
                             per RoPE pair (llama.cpp's convert_hf_to_gguf.py, LlamaModel.generate_extra_tensors)

Any other kind (yarn, dynamic, longrope, ...) is refused in one line: the runtime does not compute it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import HybridInferError
from .config_values import ConfigValues
from .json_file import shown

LLAMA3_ORIGINAL_CONTEXT = 8192  # llama.cpp's default for original_max_position_embeddings (Llama 3.1, 3.2, 3.3)


@dataclass(frozen=True)
class RopeScaling:
    kind: str  # "none", "linear" or "llama3"
    factor: float = 1.0
    low_freq_factor: float = 1.0  # llama3 only
    high_freq_factor: float = 4.0
    original_context: int = LLAMA3_ORIGINAL_CONTEXT


def read_rope_theta(values: ConfigValues) -> float:
    params = values.section("rope_parameters")
    if params is not None and "rope_theta" in params.config:
        return params.number("rope_theta")
    return values.number("rope_theta", 10000.0)


def read_rope_scaling(values: ConfigValues, arch: str) -> RopeScaling:
    """The scaling of `rope_scaling` (transformers 4), else of `rope_parameters` (transformers 5)."""
    section = values.section("rope_scaling") or values.section("rope_parameters")
    if section is None:
        return RopeScaling("none")
    kind = section.text("rope_type") or section.text("type")
    if kind is None and any(isinstance(value, dict) for value in section.config.values()):
        raise HybridInferError(f"unsupported checkpoint: {section.prefix[:-1]} holds per-layer-type RoPE settings, "
                               "which these architectures do not have")
    kind = kind or "default"
    if kind == "default":
        return RopeScaling("none")
    if kind == "linear":
        return RopeScaling("linear", factor=section.number("factor"))
    if kind == "llama3" and arch == "llama":
        low, high = section.number("low_freq_factor", 1.0), section.number("high_freq_factor", 4.0)
        if high <= low:
            raise HybridInferError(f"{values.path}: {section.prefix}high_freq_factor {high:g} must be above "
                                   f"low_freq_factor {low:g}; correct config.json or download it again")
        # the scaling's own original_max_position_embeddings, as transformers reads it; llama.cpp reads the
        # config's top-level one (default 8192), which is the same number for every released Llama 3.x
        original = section.count("original_max_position_embeddings",
                                 values.count("original_max_position_embeddings", LLAMA3_ORIGINAL_CONTEXT))
        return RopeScaling("llama3", factor=section.number("factor", 8.0), low_freq_factor=low,
                           high_freq_factor=high, original_context=original)
    raise HybridInferError(f"unsupported checkpoint: rope scaling {shown(kind)} is not implemented (supported: linear, "
                           "and llama3 for LlamaForCausalLM)")


def llama3_rope_freqs(scaling: RopeScaling, theta: float, head_dim: int) -> np.ndarray:
    """(head_dim / 2,) float32: the divisor of each RoPE pair's frequency. Pairs whose wavelength is shorter than
    original_context / high_freq_factor keep theirs (1), those longer than original_context / low_freq_factor are
    divided by `factor`, and those between are interpolated smoothly; in float32 as llama.cpp's converter computes
    them (torch)."""
    freqs = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    wavelen = 2 * math.pi / freqs
    high_freq_wavelen = scaling.original_context / scaling.high_freq_factor
    low_freq_wavelen = scaling.original_context / scaling.low_freq_factor
    smooth = ((scaling.original_context / wavelen - scaling.low_freq_factor)
              / (scaling.high_freq_factor - scaling.low_freq_factor))
    between = 1 / ((1 - smooth) / scaling.factor + smooth)
    factors = torch.where(wavelen < high_freq_wavelen, torch.ones_like(freqs),
                          torch.where(wavelen > low_freq_wavelen, torch.full_like(freqs, scaling.factor), between))
    return factors.to(torch.float32).numpy()
