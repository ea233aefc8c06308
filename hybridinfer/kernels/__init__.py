"""Compute kernels: `cpu_sparse` (numba, float32 sparse FFN), `packed` + `cpu_quant` (numba, every GGUF
weight format repacked for fast reading; `simd` holds the AVX-512 intrinsics they use) and `reference`
(plain numpy twins of all of them)."""
