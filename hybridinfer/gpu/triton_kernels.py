"""Triton kernels for the GPU side, reading DeviceMatrix fields as stored (`weights.py`); same functions,
signatures and results as `reference.py` (`kernels_for` picks one of the two). Modelled on PowerInfer's /
ProSparse's sparse GPU operators. This module is the kernel set's public face; the kernels live in:

    gemv_kernels.py     matvec (GEMV, split-K over the columns for narrow matrices), norm_matvec (RMSNorm in its
                        prologue), matvec_relu, matvec_at_least, add_matvec (other epilogues), gate_up (the dense
                        FFN's first half)
    hot_ffn_kernels.py  hot_ffn: S2 (gate, FATReLU, then up of the rows that fired) and the launch of S3
    s3_kernels.py       S3: the down_t rows of the neurons that fired, summed
    kernel_common.py    what they share: tile sizes and launch options, split-K in one pass, epilogues, activations
    tile_decoders.py    how a tile of each format is decoded

Batches (matvec with T > 1, hidden_dense, down_t_product) dequantize in row chunks and use the BLAS / cuBLAS
matmul, as llama.cpp does for prompts: they are `reference`'s functions.

The kernels' settings (BLOCK_R, CHUNK, TARGET_PROGRAMS, ...) are read where they are defined or imported, never
here: a test changes one in the module whose function reads it.

Under TRITON_INTERPRET=1 the kernels run on CPU tensors (the tests); compiled, on CUDA tensors.
`compile_check.py` compiles them for sm_90 and counts their inner loops' instructions per weight.
"""

from __future__ import annotations

from .gemv_kernels import add_matvec, gate_up, matvec, matvec_at_least, matvec_relu, norm_matvec
from .hot_ffn_kernels import hot_ffn
from .reference import down_t_product, hidden_dense

__all__ = ["matvec", "norm_matvec", "matvec_relu", "matvec_at_least", "add_matvec", "gate_up", "hot_ffn",
           "hidden_dense", "down_t_product"]
