"""The GPU side's weights and kernels, in the GGUF file's own formats (F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0,
Q5_1, Q4_K, Q5_K, Q6_K).

    weights.py          DeviceMatrix: a (rows, cols) weight on a torch device as the file's bytes, split by field
    reference.py        plain torch twins of the kernels (what each must compute; they also run on the CPU device)
    triton_kernels.py   the same functions as Triton kernels, gathered from the modules below
    gemv_kernels.py     the GEMV per format, with its epilogues and RMSNorm prologue, and the dense FFN's gate_up
    hot_ffn_kernels.py  the sparse FFN on the hot neurons: the fused S2 (gate, FATReLU, up), then S3's launch
    s3_kernels.py       S3: the down_t rows of the neurons that fired, summed
    kernel_common.py    what they share: tile sizes, launch options, split-K in one pass, epilogues, activations
    tile_decoders.py    their device functions that decode a tile of each format and dot it with x

Both kernel modules (reference.py, triton_kernels.py) offer matvec, hot_ffn, hidden_dense and down_t_product
with the same signatures and results; `kernels_for` says which one a device uses.
Importing this package never imports triton.

The decode step's own kernels, each a Triton module and its torch twin (`hybrid/gpu_side.step_kernels_for`):

    attention_kernels.py / attention_reference.py   RoPE, K/V write and attention over the KV cache in place
    norm_kernels.py / norm_reference.py             RMSNorm, with the residual add before it; residual adds
    predictor_kernels.py / predictor_reference.py   the predictor's threshold, at every neuron and the hot ones
    compile_step_kernels.py                         compiles them for an NVIDIA architecture without a GPU
    launches.py                                     counts the kernels a piece of GPU-side work launches
    graphs.py                                       device work captured once and replayed: a CUDA graph, or its
                                                    recorded twin on the CPU device
"""

from __future__ import annotations

import os
from types import ModuleType

import torch

from ..errors import HybridInferError

KERNELS = ("triton", "torch")
ENV_VAR = "HYBRIDINFER_GPU_KERNELS"


def kernels_for(device: torch.device | str, name: str | None = None) -> ModuleType:
    """The kernel module for `device`: `name` "triton" (triton_kernels) or "torch" (reference); None -> the
    environment variable HYBRIDINFER_GPU_KERNELS if set, else "triton" on cuda and "torch" elsewhere."""
    if name is None:
        name = os.environ.get(ENV_VAR) or ("triton" if torch.device(device).type == "cuda" else "torch")
    if name == "triton":
        try:
            from . import triton_kernels
        except ModuleNotFoundError as missing:
            if missing.name != "triton":
                raise
            hint = "pip install triton (or pip install -e '.[gpu]'), or run its torch twins with --gpu-kernels torch"
            raise HybridInferError(f"the GPU side's Triton kernels need triton: {hint}") from None
        return triton_kernels
    if name == "torch":
        from . import reference

        return reference
    raise HybridInferError(f"unknown GPU kernels {name!r} (from the argument or ${ENV_VAR}); "
                           f"choose {' or '.join(KERNELS)}")
