"""Compute kernels: `cpu_sparse` (numba, the fast CPU path) and `reference` (plain numpy twins)."""
