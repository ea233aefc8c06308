"""llama.cpp's own quantizer, `llama_model_quantize` through the optional llama-cpp-python, run on a GGUF file: the
oracle the K-quant tests compare our encoders and type choices with, byte for byte. Without llama-cpp-python the
calling test is skipped with the reason."""

import ctypes

import pytest

FTYPES = {"q4_k_m": "LLAMA_FTYPE_MOSTLY_Q4_K_M", "q5_k_m": "LLAMA_FTYPE_MOSTLY_Q5_K_M",
          "q6_k": "LLAMA_FTYPE_MOSTLY_Q6_K"}


def llama_quantize(source, destination, outtype: str, pure: bool = False) -> None:
    """Quantize the GGUF `source` into `destination` as llama-quantize would for `outtype` (q4_k_m, q5_k_m, q6_k);
    `pure`: every quantizable tensor gets the mix's base type (llama-quantize --pure)."""
    llama_cpp = pytest.importorskip(
        "llama_cpp", reason="llama-cpp-python is not installed (pip install 'hybridinfer[llama]'); the byte-for-byte "
                            "comparison with llama.cpp's quantizer needs it")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, FTYPES[outtype])
    params.nthread = 1
    params.pure = pure
    status = llama_cpp.llama_model_quantize(str(source).encode(), str(destination).encode(), ctypes.byref(params))
    assert status == 0, f"llama_model_quantize failed on {source}"
