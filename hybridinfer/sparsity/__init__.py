"""Training-free activation sparsity for SiLU (SwiGLU) models: calibrated per-layer thresholds (CATS)."""
