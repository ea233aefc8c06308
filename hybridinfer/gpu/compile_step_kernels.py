"""Compile the decode step's own Triton kernels (attention, norm and predictor `*_kernels.py`) ahead of time for an
NVIDIA architecture without a GPU, as `compile_check.py` does for the weight kernels, and print their registers,
stack bytes and instruction counts: 13B-like shapes (40 query heads over 8 key/value heads of 128, n_embd 5120).

    python -m hybridinfer.gpu.compile_step_kernels [--arch 90]     (TRITON_INTERPRET unset)
"""

from __future__ import annotations

import argparse
import os
import re

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from . import attention_kernels as ak
from . import norm_kernels as nk
from . import predictor_kernels as pk
from .compile_check import nvidia_tool, cuobjdump, ptx_instructions


def sources() -> dict[str, ASTSource]:
    split = dict(N_HEAD_KV=8, GROUP=5, HEAD_DIM=128, ROPE_DIM=128, GROUP_P2=16, HEAD_DIM_P2=128, SPLITS=ak.SPLITS,
                 BLOCK_N=ak.BLOCK_N)
    found = {}
    # extras: Q/K/V biases, Q/K head norms and the position's advance compiled in
    for cache, extras in (("fp16", True), ("fp32", False)):
        constants = {**split, "HAS_BIAS": extras, "HAS_NORM": extras, "ADVANCE": extras}
        signature = {"qkv_ptr": "*fp32", "k_ptr": f"*{cache}", "v_ptr": f"*{cache}", "cos_ptr": "*fp32",
                     "sin_ptr": "*fp32", "pos_ptr": "*i32", "best_ptr": "*fp32", "total_ptr": "*fp32",
                     "acc_ptr": "*fp32", "counter_ptr": "*i32", "out_ptr": "*fp32", "bias_ptr": "*fp32",
                     "q_norm_ptr": "*fp32", "k_norm_ptr": "*fp32", "scale": "fp32", "eps": "fp32", "window": "i32",
                     **{name: "constexpr" for name in constants}}
        name = f"attention ({cache} cache{', biases, head norms, advance' if extras else ''})"
        found[name] = ASTSource(ak._attention_kernel, signature, constants)
    for has_add in (False, True):  # with the add: gemma3's post-norm of the block's output too
        norm = dict(HAS_ADD=has_add, HAS_B=False, HAS_POST=has_add, HAS_OUT=True, BLOCK=8192)
        signature = {"x_ptr": "*fp32", "a_ptr": "*fp32", "b_ptr": "*fp32", "p_ptr": "*fp32", "w_ptr": "*fp32",
                     "out_ptr": "*fp32", "n": "i32", "scale": "fp32", "eps": "fp32",
                     **{name: "constexpr" for name in norm}}
        found["add + post-norm + RMSNorm" if has_add else "RMSNorm"] = ASTSource(nk._add_rms_norm_kernel, signature,
                                                                                  norm)
    signature = {"scores_ptr": "*fp32", "hot_index_ptr": "*i64", "mask_ptr": "*i8", "hot_mask_ptr": "*i8",
                 "n_ff": "i32", "n_hot": "i32", "threshold": "fp32", "BLOCK": "constexpr"}
    found["predictor masks"] = ASTSource(pk._masks_kernel, signature, {"BLOCK": pk.BLOCK})
    return found


def compile_stats(source: ASTSource, arch: int) -> dict[str, int]:
    """Compile for sm_`arch`; the PTX's instruction and global load counts, and where cuobjdump is bundled the
    registers, stack bytes (a spill shows as stack) and SASS instructions."""
    compiled = triton.compile(source, target=GPUTarget("cuda", arch, 32))
    ptx = compiled.asm["ptx"]
    if f".target sm_{arch}" not in ptx:
        raise RuntimeError(f"the PTX does not target sm_{arch}")
    body = [text for _, text in ptx_instructions(ptx) if not text.endswith(":")]
    stats = {"ptx": len(body), "ld_global": sum("ld.global" in text for text in body)}
    if nvidia_tool("cuobjdump") and "cubin" in compiled.asm:
        stats["registers"], stats["stack"], listing = cuobjdump(compiled.asm["cubin"])
        stats["sass"] = len(re.findall(r"/\*[0-9a-f]{4}\*/", listing))
    return stats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, default=90, help="compute capability, e.g. 90 for H100/H200")
    args = parser.parse_args()
    if os.environ.get("TRITON_INTERPRET") == "1":
        parser.error("unset TRITON_INTERPRET: the interpreter compiles nothing")
    for name, source in sources().items():
        stats = compile_stats(source, args.arch)
        print(f"{name}: " + " ".join(f"{key} {value}" for key, value in stats.items()), flush=True)


if __name__ == "__main__":
    main()
