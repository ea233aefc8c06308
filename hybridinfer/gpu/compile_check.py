"""Compile the Triton kernels ahead of time for an NVIDIA architecture, without a GPU, and count each kernel's
inner-loop instructions per weight: what TRITON_INTERPRET=1 (the tests' mode) cannot check, such as globals a
compiled kernel may not read, and what bounds a GEMV below HBM speed.

    python -m hybridinfer.gpu.compile_check [--arch 90] [--kernels gemv,s2,s3,gate_up] [FORMAT ...]
    (with TRITON_INTERPRET unset)

Per kernel and weight format it prints one line: the format, the kernel, what was read (sass or ptx), the registers
per thread, and for each weight loop its instructions per weight, its instructions, the weights a thread takes per
iteration and its FFMAs per weight (figures for sm_90 in docs/hybrid.md):

    FORMAT KERNEL sass regs R loop I/w (N instr, W w/thread/iter, ffma F/w) [| loop ...]

Method. Each kernel is compiled as its launch compiles it (its launch's tile sizes, num_warps, LAUNCH;
pointers, `cols` and `cols_per_split` marked 16-divisible, as Triton's launcher specializes them) with Triton's own
compiler for sm_ARCH; Triton's bundled cuobjdump disassembles the cubin to SASS (without it: the PTX, counted the
same way, a less faithful figure). A loop is a backward branch (`BRA` to a lower address, PTX: `bra` to an earlier
label); its body is every instruction from the target to the branch. The inner loops are the loops containing no
other loop; the weight loops among them have at least one FFMA per two weights: the GEMV's column loop, S2's and
gate_up's gate and up column loops, S3's row loop (not Q4_1's sums of x, the compactions, the split-K shares' sum,
or ptxas' retry loops around warp shuffles in divergent code). Each one's static instruction count is divided by
the weights a thread takes per iteration, known from the tile: tile rows x tile columns / (32 x num_warps) (S3: its
step's rows x its column tile / threads). As a check the FFMAs per weight are printed: one multiply-add per weight,
so about 1 unless the compiler unrolled the loop. Instructions issued per weight bound a GEMV: an SM issues 4
warp-instructions a cycle, so at HBM speed a Q4_0 weight (0.5625 bytes) allows only a few (docs/hybrid.md).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass

import numpy as np
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from ..model_file.weight_formats import GPU_NATIVE_FORMATS, WeightFormat
from . import gemv_kernels as dense
from . import hot_ffn_kernels as sparse
from . import kernel_common as common
from . import s3_kernels
from .weights import WORD_FORMATS, block_fields

_POINTER = {"float32": "*fp32", "float16": "*fp16", "bfloat16": "*bf16", "int8": "*i8", "uint8": "*u8",
            "int32": "*i32"}
FIELDS = ("quants", "scales", "mins", "highs", "sub_scales")  # `kernel_common._fields`' order: q, d, m, h, s
KERNELS = ("gemv", "s2", "s3", "gate_up", "norm_gemv", "norm_gate_up", "stage_gemv")


@dataclass
class Kernel:
    source: ASTSource
    weights_per_iteration: int  # weights a thread takes per inner-loop iteration
    warps: int  # as launched


@dataclass
class Loop:
    instructions: int
    weights: int  # per thread per iteration
    counts: Counter  # opcode -> instructions

    @property
    def per_weight(self) -> float:
        return self.instructions / self.weights


def field_pointers(fmt: WeightFormat) -> list[str]:
    """The Triton pointer types of `kernel_common._fields(m)` for a matrix of `fmt`."""
    if not fmt.quantized:
        return [_POINTER[fmt.value_type]] * 5
    stored = {name: _POINTER[np.dtype(kind).name] for name, (_, _, kind) in block_fields(fmt).items()}
    if fmt.type in WORD_FORMATS:
        stored["quants"] = "*i32"
    return [stored.get(name, stored["quants"]) for name in FIELDS]


def aligned_source(fn, signature: dict[str, str], constants: dict) -> ASTSource:
    """ASTSource with the pointers, `cols` and `cols_per_split` 16-divisible, as Triton's launcher specializes them
    (torch's allocations, model widths, and split-K shares of whole tiles)."""
    names = list(signature)
    aligned = {(names.index(k),): [["tt.divisibility", 16]] for k, v in signature.items()
               if v.startswith("*") or k in ("cols", "cols_per_split")}
    return ASTSource(fn, signature, constants, attrs=aligned)


def sources(fmt: WeightFormat) -> dict[str, Kernel]:
    """The GEMV, S2 (gate and up of `fmt`, with a mask), S3 and gate_up (the dense FFN's gate, up and SiLU) kernels
    for `fmt`, as Triton compiles them; the GEMV, S3 and gate_up with split-K's one-pass sum; the GEMV and gate_up
    with the RMSNorm prologue, and the GEMV as a split FFN's fc2 launches it (threshold, RMS-normed staging copy)."""
    p = field_pointers(fmt)
    warps = common.NUM_WARPS
    step = common.BLOCK_R * common.tile_columns(fmt.type) // (32 * warps)  # weights a thread takes per GEMV/S2 step
    tiles = {"BLOCK_R": common.BLOCK_R, "BLOCK_C": common.BLOCK_C}
    const = {name: "constexpr" for name in tiles}

    def named(*names: str) -> dict[str, str]:  # the five field pointers under a kernel's own argument names
        return dict(zip(names, p))

    # split-K with the residual add (the dense FFN's down projection), the costliest epilogue
    split = {"SPLIT": True}
    gemv = {**named("q_ptr", "d_ptr", "m_ptr", "h_ptr", "s_ptr"), "x_ptr": "*fp32", "sums_ptr": "*fp32",
            "partial_ptr": "*fp32", "counter_ptr": "*i32", "out_ptr": "*fp32", "rows": "i32", "cols": "i32",
            "cols_per_split": "i32", "low_bits": "i32", "scale": "fp32", "copy_from": "*fp32", "copy_to": "*fp32",
            "copy_n": "i32", "norm_ptr": "*fp32", "eps": "fp32", "FMT": "constexpr", "EPILOGUE": "constexpr",
            "SPLIT": "constexpr", "COPY": "constexpr", "NORM": "constexpr", "COPY_NORM": "constexpr", **const}
    gate_up_fields = {**named("gq_ptr", "gd_ptr", "gm_ptr", "gh_ptr", "gs_ptr"),
                      **named("uq_ptr", "ud_ptr", "um_ptr", "uh_ptr", "us_ptr")}
    gate_up = {**gate_up_fields, "x_ptr": "*fp32", "sums_ptr": "*fp32", "partial_ptr": "*fp32", "counter_ptr": "*i32",
               "out_ptr": "*fp32", "rows": "i32", "cols": "i32", "cols_per_split": "i32", "gate_bits": "i32",
               "up_bits": "i32", "threshold": "fp32", "norm_ptr": "*fp32", "eps": "fp32", "ACT": "constexpr",
               "SPLIT": "constexpr", "GATE_FMT": "constexpr", "UP_FMT": "constexpr", "NORM": "constexpr", **const}
    s2 = {**gate_up_fields, "x_ptr": "*fp32", "sums_ptr": "*fp32", "mask_ptr": "*u8", "index_ptr": "*i64",
          "list_ptr": "*i32", "out_ptr": "*fp32", "fired_ptr": "*i64",
          "n": "i32", "cols": "i32", "threshold": "fp32", "gate_bits": "i32", "up_bits": "i32",
          "HAS_MASK": "constexpr", "HAS_INDEX": "constexpr", "GATE_FMT": "constexpr", "UP_FMT": "constexpr", **const,
          "CHUNK": "constexpr"}
    s3_common = {"h_ptr": "*fp32", "slots_ptr": "*i32", "partial_ptr": "*fp32", "counter_ptr": "*i32",
                 "out_ptr": "*fp32", "n": "i32", "cols": "i32", "rows_per_share": "i32"}
    s3_epilogue = {"EPILOGUE": int(common._ADD), **split}
    gemv_constants = {"FMT": fmt.code, "EPILOGUE": int(common._ADD), **split, "COPY": False, "NORM": False,
                      "COPY_NORM": False, **tiles}
    kernels = {"gemv": Kernel(aligned_source(dense._gemv_kernel, gemv, gemv_constants), step, warps),
               "s2": Kernel(aligned_source(sparse._s2_kernel, s2, {"HAS_MASK": True, "HAS_INDEX": True,
                                                            "GATE_FMT": fmt.code, "UP_FMT": fmt.code, **tiles,
                                                            "CHUNK": sparse.CHUNK}), step, warps)}
    if fmt.type in WORD_FORMATS:
        s3 = {**named("q_ptr", "d_ptr", "m_ptr", "hi_ptr"), **s3_common, "low_bits": "i32", "scale": "fp32",
              "FMT": "constexpr", "EPILOGUE": "constexpr", "SPLIT": "constexpr", "S3_ROWS": "constexpr",
              "S3_UNITS": "constexpr", "CHUNK": "constexpr"}
        s3_step = sparse.S3_ROWS * sparse.s3_columns(fmt.type) // (32 * sparse.S3_WARPS)
        constants = {"FMT": fmt.code, **s3_epilogue, "S3_ROWS": sparse.S3_ROWS,
                     "S3_UNITS": sparse.s3_units(fmt.type), "CHUNK": sparse.CHUNK}
        kernels["s3"] = Kernel(aligned_source(s3_kernels._s3_words_kernel, s3, constants), s3_step, sparse.S3_WARPS)
    else:
        s3 = {**named("q_ptr", "d_ptr", "m_ptr", "hi_ptr", "s_ptr"), **s3_common, "scale": "fp32",
              "FMT": "constexpr", "EPILOGUE": "constexpr", "SPLIT": "constexpr", **const, "CHUNK": "constexpr"}
        s3_step = common.BLOCK_R * common.BLOCK_C // (32 * common.NUM_WARPS)
        kernels["s3"] = Kernel(aligned_source(s3_kernels._s3_kernel, s3, {"FMT": fmt.code, **s3_epilogue, **tiles,
                                                                  "CHUNK": sparse.CHUNK}), s3_step, common.NUM_WARPS)
    gate_up_constants = {"ACT": common.ACTIVATIONS["silu"], **split, "GATE_FMT": fmt.code, "UP_FMT": fmt.code,
                         "NORM": False, **tiles}
    kernels["gate_up"] = Kernel(aligned_source(dense._gate_up_kernel, gate_up, gate_up_constants), step, warps)
    # with the RMSNorm prologue (x times the norm weight as loaded): the attention's Q/K/V, the dense FFN's gate/up
    norm_gemv = {**gemv_constants, "EPILOGUE": int(common._STORE), "NORM": True}
    kernels["norm_gemv"] = Kernel(aligned_source(dense._gemv_kernel, gemv, norm_gemv), step, warps)
    norm_gate_up = {**gate_up_constants, "NORM": True}
    kernels["norm_gate_up"] = Kernel(aligned_source(dense._gate_up_kernel, gate_up, norm_gate_up), step, warps)
    # a split FFN's fc2: the threshold into a byte mask, the FFN input RMS-normed into the staging buffer beside it
    stage = {**gemv_constants, "EPILOGUE": int(common._AT_LEAST), "COPY": True, "COPY_NORM": True}
    kernels["stage_gemv"] = Kernel(aligned_source(dense._gemv_kernel, {**gemv, "out_ptr": "*i8"}, stage), step, warps)
    return kernels


def nvidia_tool(name: str) -> str | None:
    path = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", name)
    return path if os.path.exists(path) else None


def sass_instructions(listing: str) -> list[tuple[int, str]]:
    """[(address, instruction text)] of a cuobjdump SASS listing."""
    found = re.findall(r"/\*([0-9a-f]{4,})\*/\s+([^;]*);", listing)
    return [(int(address, 16), line.strip()) for address, line in found]


def cuobjdump(cubin: bytes) -> tuple[int, int, str]:
    """(registers per thread, stack bytes per thread, SASS listing) of a cubin, from the bundled cuobjdump."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        usage, text = (subprocess.run([nvidia_tool("cuobjdump"), flag, f.name], capture_output=True, text=True,
                                      check=True).stdout for flag in ("--dump-resource-usage", "-sass"))
    return int(re.search(r"REG:(\d+)", usage).group(1)), int(re.search(r"STACK:(\d+)", usage).group(1)), text


def ptx_instructions(ptx: str) -> list[tuple[int, str]]:
    """(index, instruction text) of the PTX's instructions, labels kept as ("LABEL:", index) markers."""
    out = []
    for line in ptx.splitlines():
        line = line.strip()
        if re.match(r"^\$?[\w$]+:$", line):
            out.append((len(out), line))
        elif re.match(r"^@?!?%?\w", line) and line.endswith(";") and not line.startswith((".", "//")):
            out.append((len(out), line.rstrip(";")))
    return out


def _opcode(text: str) -> str:
    """The opcode without predicate and modifiers: '@!P0 LDG.E.128 R4, ...' -> 'LDG'."""
    return re.sub(r"^@!?U?P\w+\s+", "", text).split()[0].split(".")[0].upper()


def inner_loops(instructions: list[tuple[int, str]], weights: int) -> list[Loop]:
    """The loops (backward branches) that contain no other loop, in address order: SASS `BRA 0x...` or PTX
    `bra $L...` to an earlier label."""
    labels = {text[:-1]: where for where, text in instructions if text.endswith(":")}
    spans = []
    for where, text in instructions:
        target = re.search(r"\bBRA\s+(0x[0-9a-f]+)", text)
        start = int(target.group(1), 16) if target else None
        if start is None:
            target = re.search(r"\bbra(?:\.uni)?\s+([\w$]+)", text)
            start = labels.get(target.group(1)) if target else None
        if start is not None and start < where:
            spans.append((start, where))
    innermost = [(a, b) for a, b in spans if not any(a <= c and d <= b and (c, d) != (a, b) for c, d in spans)]
    loops = []
    for a, b in innermost:
        body = [text for where, text in instructions if a <= where <= b and not text.endswith(":")]
        loops.append(Loop(len(body), weights, Counter(_opcode(text) for text in body)))
    return loops


def weight_loops(loops: list[Loop]) -> list[Loop]:
    """The inner loops over weights: those with at least one FFMA (PTX: fma) per two weights. The others (Q4_1's
    sums of x, the compactions, ptxas' retry loops around warp shuffles in divergent code) touch no weight."""
    return [loop for loop in loops if 2 * (loop.counts["FFMA"] + loop.counts["FMA"]) >= loop.weights]


def compile_for(kernel: Kernel, arch: int, options: dict):
    """`kernel` compiled by Triton for sm_`arch` with its warps and `options` (a launch's, e.g. num_stages); (the
    compiled kernel, its PTX)."""
    compiled = triton.compile(kernel.source, target=GPUTarget("cuda", arch, 32),
                              options={"num_warps": kernel.warps, **options})
    ptx = compiled.asm["ptx"]
    if f".target sm_{arch}" not in ptx:
        raise RuntimeError(f"the PTX does not target sm_{arch}")
    return compiled, ptx


def compile_stats(kernel: Kernel, arch: int) -> dict:
    """Compile for sm_`arch` as the launches do: registers and stack bytes per thread (from cuobjdump; None without
    it: a spill shows as stack), the inner loops (SASS, or PTX without cuobjdump) and which one was read."""
    compiled, ptx = compile_for(kernel, arch, common.LAUNCH)
    if nvidia_tool("cuobjdump") and "cubin" in compiled.asm:
        registers, stack, listing = cuobjdump(compiled.asm["cubin"])
        loops = weight_loops(inner_loops(sass_instructions(listing), kernel.weights_per_iteration))
        return {"registers": registers, "stack": stack, "loops": loops, "asm": "sass"}
    return {"registers": None, "stack": None, "asm": "ptx",
            "loops": weight_loops(inner_loops(ptx_instructions(ptx), kernel.weights_per_iteration))}


def describe(fmt: WeightFormat, name: str, stats: dict, opcodes: bool = False) -> str:
    """One line per kernel; with `opcodes`, each loop's instruction mix follows on its own line."""
    loops = " | ".join(f"loop {loop.per_weight:.2f}/w ({loop.instructions} instr, {loop.weights} w/thread/iter, "
                       f"ffma {(loop.counts['FFMA'] + loop.counts['FMA']) / loop.weights:.2f}/w)"
                       for loop in stats["loops"])
    line = f"{fmt.name:5s} {name:4s} {stats['asm']} regs {stats['registers']} stack {stats['stack']} {loops}"
    if opcodes:
        line += "".join("\n    " + " ".join(f"{op} {n}" for op, n in loop.counts.most_common())
                        for loop in stats["loops"])
    return line


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, default=90, help="compute capability, e.g. 90 for H100/H200")
    parser.add_argument("--kernels", default=",".join(KERNELS), help=f"comma-separated: {', '.join(KERNELS)}")
    parser.add_argument("--opcodes", action="store_true", help="print each inner loop's instruction mix")
    parser.add_argument("formats", nargs="*", help="weight formats (default: every one the GPU kernels read)")
    args = parser.parse_args()
    if os.environ.get("TRITON_INTERPRET") == "1":
        parser.error("unset TRITON_INTERPRET: the interpreter compiles nothing")
    known = {f.name: f for f in GPU_NATIVE_FORMATS}
    unknown = [name for name in args.formats if name not in known] + [
        k for k in args.kernels.split(",") if k not in KERNELS]
    if unknown:
        parser.error(f"unknown format or kernel {', '.join(unknown)}: formats {', '.join(known)}; kernels "
                     f"{', '.join(KERNELS)}")
    chosen = [f for f in GPU_NATIVE_FORMATS if not args.formats or f.name in args.formats]
    for fmt in chosen:
        for name, kernel in sources(fmt).items():
            if name in args.kernels.split(","):
                print(describe(fmt, name, compile_stats(kernel, args.arch), args.opcodes), flush=True)


if __name__ == "__main__":
    sys.exit(main())
