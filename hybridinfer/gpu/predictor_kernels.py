"""The predictor's threshold for one token as one Triton kernel (torch's form is a comparison and a gather);
`predictor_reference.py` is the torch twin (same function, same results) and serves several tokens at once.

    _masks_kernel   programs 0..: blocks of BLOCK neurons, mask[i] = scores[i] >= threshold; the programs after
                    them: blocks of hot neurons, hot_mask[j] = scores[hot_index[j]] >= threshold
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import predictor_reference

BLOCK = 1024


@triton.jit
def _masks_kernel(scores_ptr, hot_index_ptr, mask_ptr, hot_mask_ptr, n_ff, n_hot, threshold, BLOCK: tl.constexpr):
    p = tl.program_id(0)
    mask_programs = tl.cdiv(n_ff, BLOCK)
    if p < mask_programs:
        i = p * BLOCK + tl.arange(0, BLOCK)
        live = i < n_ff
        tl.store(mask_ptr + i, (tl.load(scores_ptr + i, mask=live, other=0.0) >= threshold).to(tl.int8), mask=live)
    else:
        j = (p - mask_programs) * BLOCK + tl.arange(0, BLOCK)
        live = j < n_hot
        neuron = tl.load(hot_index_ptr + j, mask=live, other=0)
        fired = tl.load(scores_ptr + neuron, mask=live, other=0.0) >= threshold
        tl.store(hot_mask_ptr + j, fired.to(tl.int8), mask=live)


def masks(scores: torch.Tensor, threshold: float, hot_index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`predictor_reference.masks`; one token (T == 1) by the kernel, several by the twin."""
    if scores.shape[0] != 1:
        return predictor_reference.masks(scores, threshold, hot_index)
    n_ff, n_hot = scores.shape[1], hot_index.shape[0]
    mask = torch.empty((1, n_ff), dtype=torch.bool, device=scores.device)
    hot_mask = torch.empty((1, n_hot), dtype=torch.bool, device=scores.device)
    grid = (triton.cdiv(n_ff, BLOCK) + triton.cdiv(n_hot, BLOCK),)
    _masks_kernel[grid](scores.contiguous(), hot_index, mask.view(torch.int8), hot_mask.view(torch.int8), n_ff, n_hot,
                        float(threshold), BLOCK=BLOCK, enable_fp_fusion=True)
    return mask, hot_mask
