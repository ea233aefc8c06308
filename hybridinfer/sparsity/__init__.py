"""Training-free activation sparsity for SiLU (SwiGLU) models: calibrated magnitude thresholds, per layer on the
FFN activation (CATS) or per layer and projection input (TEAL)."""
