"""A model file: the GGUF reader, hyper-parameters, the tensor table, fingerprints, dequantization."""
