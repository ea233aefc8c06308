"""Compile the decode step's own Triton kernels (attention, norm and predictor `*_kernels.py`) ahead of time for an
NVIDIA architecture without a GPU, as `compile_check.py` does for the weight kernels (pointers 16-divisible, the
launch's warps), and print their registers, stack bytes and instruction counts: 13B-like shapes (40 query heads
over 8 key/value heads of 128, n_embd 5120). For the attention also its position loop's SASS instructions per
cached element a thread reads (keys and values: 2 x BLOCK_N x head_dim over the program's threads).

    python -m hybridinfer.gpu.compile_step_kernels [--arch 90]     (TRITON_INTERPRET unset)
"""

from __future__ import annotations

import argparse
import os
import re

import torch

from . import attention_kernels as ak
from . import norm_kernels as nk
from . import predictor_kernels as pk
from .compile_check import (Kernel, aligned_source, compile_for, cuobjdump, inner_loops, nvidia_tool, ptx_instructions,
                            sass_instructions)

HEAD_DIM = 128


def sources() -> dict[str, Kernel]:
    """name -> the kernel as launched; `weights_per_iteration`: the cached elements a thread reads per position loop
    step (attention), else 0."""
    split = dict(N_HEAD_KV=8, GROUP=5, HEAD_DIM=HEAD_DIM, ROPE_DIM=128, GROUP_P2=16, HEAD_DIM_P2=HEAD_DIM,
                 SPLITS=ak.splits_for(8))
    found = {}
    # extras: Q/K/V biases, Q/K head norms and the position's advance compiled in
    for cache, extras in (("fp16", True), ("fp32", False)):
        block_n, warps = ak.TILES[torch.float16 if cache == "fp16" else torch.float32]
        constants = {**split, "BLOCK_N": block_n, "HAS_BIAS": extras, "HAS_NORM": extras, "ADVANCE": extras}
        signature = {"qkv_ptr": "*fp32", "k_ptr": f"*{cache}", "v_ptr": f"*{cache}", "cos_ptr": "*fp32",
                     "sin_ptr": "*fp32", "pos_ptr": "*i32", "best_ptr": "*fp32", "total_ptr": "*fp32",
                     "acc_ptr": "*fp32", "counter_ptr": "*i32", "out_ptr": "*fp32", "bias_ptr": "*fp32",
                     "q_norm_ptr": "*fp32", "k_norm_ptr": "*fp32", "scale": "fp32", "eps": "fp32", "window": "i32",
                     **{name: "constexpr" for name in constants}}
        name = f"attention ({cache} cache{', biases, head norms, advance' if extras else ''})"
        per_thread = 2 * block_n * HEAD_DIM // (32 * warps)  # keys and values a thread reads per loop step
        found[name] = Kernel(aligned_source(ak._attention_kernel, signature, constants), per_thread, warps)
    for has_add in (False, True):  # with the add: gemma3's post-norm of the block's output too
        norm = dict(HAS_ADD=has_add, HAS_B=False, HAS_POST=has_add, HAS_OUT=True, BLOCK=8192)
        signature = {"x_ptr": "*fp32", "a_ptr": "*fp32", "b_ptr": "*fp32", "p_ptr": "*fp32", "w_ptr": "*fp32",
                     "out_ptr": "*fp32", "n": "i32", "scale": "fp32", "eps": "fp32",
                     **{name: "constexpr" for name in norm}}
        found["add + post-norm + RMSNorm" if has_add else "RMSNorm"] = Kernel(
            aligned_source(nk._add_rms_norm_kernel, signature, norm), 0, 4)
    signature = {"scores_ptr": "*fp32", "hot_index_ptr": "*i64", "mask_ptr": "*i8", "hot_mask_ptr": "*i8",
                 "n_ff": "i32", "n_hot": "i32", "threshold": "fp32", "BLOCK": "constexpr"}
    found["predictor masks"] = Kernel(aligned_source(pk._masks_kernel, signature, {"BLOCK": pk.BLOCK}), 0, 4)
    return found


def compile_stats(kernel: Kernel, arch: int) -> dict[str, int | float]:
    """Compile for sm_`arch`; the PTX's instruction and global load counts, and where cuobjdump is bundled the
    registers, stack bytes (a spill shows as stack), SASS instructions and (attention) the position loop's
    instructions per cached element."""
    compiled, ptx = compile_for(kernel, arch, {"enable_fp_fusion": True})
    body = [text for _, text in ptx_instructions(ptx) if not text.endswith(":")]
    stats = {"ptx": len(body), "ld_global": sum("ld.global" in text for text in body)}
    if nvidia_tool("cuobjdump") and "cubin" in compiled.asm:
        stats["registers"], stats["stack"], listing = cuobjdump(compiled.asm["cubin"])
        stats["sass"] = len(re.findall(r"/\*[0-9a-f]{4}\*/", listing))
        if kernel.weights_per_iteration:  # the position loop: the largest inner loop
            loop = max(inner_loops(sass_instructions(listing), kernel.weights_per_iteration),
                       key=lambda found: found.instructions)
            stats["loop_per_element"] = round(loop.per_weight, 2)
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
