"""Training-free activation sparsity for SiLU and GELU gated models (SwiGLU, GeGLU): calibrated magnitude
thresholds, per layer on the FFN activation (CATS) or per layer and projection input (TEAL, WINA)."""
