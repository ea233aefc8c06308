"""Compile the Triton kernels ahead of time for an NVIDIA architecture, without a GPU: what TRITON_INTERPRET=1 (the
tests' mode) cannot check, such as globals a compiled kernel may not read. Per kernel and weight format: the
registers, stack bytes and SASS instruction count from the bundled cuobjdump (where the triton install has it), and
the PTX instruction and global load counts.

    python -m hybridinfer.gpu.compile_check [--arch 90] [FORMAT ...]     (TRITON_INTERPRET unset)
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import tempfile

import numpy as np
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from ..model_file.weight_formats import GPU_NATIVE_FORMATS, WeightFormat
from . import triton_kernels as tk
from .weights import block_fields

_POINTER = {"float32": "*fp32", "float16": "*fp16", "bfloat16": "*bf16", "int8": "*i8", "uint8": "*u8",
            "int32": "*i32"}
FIELDS = ("quants", "scales", "mins", "highs", "sub_scales")  # `triton_kernels._fields`' order: q, d, m, h, s


def field_pointers(fmt: WeightFormat) -> list[str]:
    """The Triton pointer types of `triton_kernels._fields(m)` for a matrix of `fmt`."""
    if not fmt.quantized:
        return [_POINTER[fmt.value_type]] * 5
    stored = {name: _POINTER[np.dtype(kind).name] for name, (_, _, kind) in block_fields(fmt).items()}
    return [stored.get(name, stored["quants"]) for name in FIELDS]


def sources(fmt: WeightFormat) -> dict[str, ASTSource]:
    """The GEMV, S2 (gate and up of `fmt`, with a mask) and S3 kernels for `fmt`, as Triton compiles them."""
    p = field_pointers(fmt)
    tiles = {"BLOCK_R": tk.BLOCK_R, "BLOCK_C": tk.BLOCK_C}
    const = {name: "constexpr" for name in tiles}

    def named(*names: str) -> dict[str, str]:  # the five field pointers under a kernel's own argument names
        return dict(zip(names, p))

    gemv = {**named("q_ptr", "d_ptr", "m_ptr", "h_ptr", "s_ptr"), "x_ptr": "*fp32", "out_ptr": "*fp32",
            "rows": "i32", "cols": "i32", "FMT": "constexpr", **const}
    s2 = {**named("gq_ptr", "gd_ptr", "gm_ptr", "gh_ptr", "gs_ptr"), **named("uq_ptr", "ud_ptr", "um_ptr", "uh_ptr",
                                                                             "us_ptr"),
          "x_ptr": "*fp32", "mask_ptr": "*u8", "out_ptr": "*fp32", "count_ptr": "*i32", "n": "i32", "cols": "i32",
          "threshold": "fp32", "HAS_MASK": "constexpr", "GATE_FMT": "constexpr", "UP_FMT": "constexpr", **const}
    s3 = {**named("q_ptr", "d_ptr", "m_ptr", "hi_ptr", "s_ptr"), "h_ptr": "*fp32", "partial_ptr": "*fp32",
          "n": "i32", "cols": "i32", "rows_per_share": "i32", "FMT": "constexpr", **const}
    return {"gemv": ASTSource(tk._gemv_kernel, gemv, {"FMT": fmt.code, **tiles}),
            "s2": ASTSource(tk._s2_kernel, s2, {"HAS_MASK": True, "GATE_FMT": fmt.code, "UP_FMT": fmt.code, **tiles}),
            "s3": ASTSource(tk._s3_kernel, s3, {"FMT": fmt.code, **tiles})}


def compile_stats(source: ASTSource, arch: int) -> dict[str, int]:
    """Compile for sm_`arch`; the PTX's instruction and global load counts, and where cuobjdump is bundled the
    registers, stack bytes and SASS instructions."""
    kernel = triton.compile(source, target=GPUTarget("cuda", arch, 32))
    ptx = kernel.asm["ptx"]
    if f".target sm_{arch}" not in ptx:
        raise RuntimeError(f"the PTX does not target sm_{arch}")
    body = [line for line in ptx.splitlines() if re.match(r"\s+[a-z@]", line)]
    stats = {"ptx": len(body), "ld_global": sum("ld.global" in line for line in body)}
    cuobjdump = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    if os.path.exists(cuobjdump) and "cubin" in kernel.asm:
        with tempfile.NamedTemporaryFile(suffix=".cubin") as cubin:
            cubin.write(kernel.asm["cubin"])
            cubin.flush()
            usage = subprocess.run([cuobjdump, "--dump-resource-usage", cubin.name], capture_output=True,
                                   text=True).stdout
            sass = subprocess.run([cuobjdump, "-sass", cubin.name], capture_output=True, text=True).stdout
        stats["registers"] = int(re.search(r"REG:(\d+)", usage).group(1))
        stats["stack"] = int(re.search(r"STACK:(\d+)", usage).group(1))
        stats["sass"] = len(re.findall(r"/\*[0-9a-f]{4}\*/", sass))
    return stats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, default=90, help="compute capability, e.g. 90 for H100/H200")
    parser.add_argument("--kernels", default="gemv,s2,s3")
    parser.add_argument("formats", nargs="*", help="weight formats (default: every one the GPU kernels read)")
    args = parser.parse_args()
    if os.environ.get("TRITON_INTERPRET") == "1":
        parser.error("unset TRITON_INTERPRET: the interpreter compiles nothing")
    chosen = [f for f in GPU_NATIVE_FORMATS if not args.formats or f.name in args.formats]
    for fmt in chosen:
        for name, source in sources(fmt).items():
            if name in args.kernels.split(","):
                stats = compile_stats(source, args.arch)
                print(f"{fmt.name:5s} {name:4s} " + " ".join(f"{key} {value}" for key, value in stats.items()),
                      flush=True)


if __name__ == "__main__":
    main()
