"""llama.cpp's own quantizer, `llama_model_quantize` through the optional llama-cpp-python, run on a GGUF file: the
oracle the K-quant tests compare our encoders and type choices with, byte for byte. Without llama-cpp-python the
calling test is skipped with the reason."""

import pytest


def llama_quantize(source, destination, outtype: str, pure: bool = False) -> None:
    """Quantize the GGUF `source` into `destination` as llama-quantize would for `outtype` (q4_k_m, q5_k_m, q6_k);
    `pure`: every quantizable tensor gets the mix's base type (llama-quantize --pure)."""
    pytest.importorskip(
        "llama_cpp", reason="llama-cpp-python is not installed (pip install 'hybridinfer[llama]'); the byte-for-byte "
                            "comparison with llama.cpp's quantizer needs it")
    from hybridinfer.eval.llamacpp_reference import quantize
    quantize(source, destination, outtype, n_threads=1, pure=pure)
