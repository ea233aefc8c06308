"""The GPU side's RMSNorm as one Triton kernel per token (torch's form is six), alone or after the residual add
that precedes it; `norm_reference.py` is the torch twin (same functions, same results).

    _add_rms_norm_kernel   program t (a token): x[t] += scale * a[t] if HAS_ADD (a[t] + b[t] if HAS_B, RMS-normed
                           with the weight p first if HAS_POST: gemma3's post-block norms); out[t] = x[t] / rms * w
                           if HAS_OUT
    _add_kernel            x += scale * (a + b), in tiles of BLOCK elements (the residual alone is torch's add_)
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl



@triton.jit
def _add_rms_norm_kernel(x_ptr, a_ptr, b_ptr, p_ptr, w_ptr, out_ptr, n, scale, eps, HAS_ADD: tl.constexpr,
                         HAS_B: tl.constexpr, HAS_POST: tl.constexpr, HAS_OUT: tl.constexpr, BLOCK: tl.constexpr):
    t = tl.program_id(0).to(tl.int64)
    c = tl.arange(0, BLOCK)
    live = c < n
    x = tl.load(x_ptr + t * n + c, mask=live, other=0.0)
    if HAS_ADD:
        a = tl.load(a_ptr + t * n + c, mask=live, other=0.0)
        if HAS_B:
            a += tl.load(b_ptr + t * n + c, mask=live, other=0.0)
        if HAS_POST:
            a = a / tl.sqrt(tl.sum(a * a, axis=0) / n + eps) * tl.load(p_ptr + c, mask=live, other=0.0)
        x += scale * a
        tl.store(x_ptr + t * n + c, x, mask=live)
    if HAS_OUT:
        inverse = 1.0 / tl.sqrt(tl.sum(x * x, axis=0) / n + eps)
        tl.store(out_ptr + t * n + c, x * inverse * tl.load(w_ptr + c, mask=live, other=0.0), mask=live)


@triton.jit
def _add_kernel(x_ptr, a_ptr, b_ptr, n, scale, BLOCK: tl.constexpr):
    i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    live = i < n
    total = tl.load(a_ptr + i, mask=live, other=0.0) + tl.load(b_ptr + i, mask=live, other=0.0)
    tl.store(x_ptr + i, tl.load(x_ptr + i, mask=live, other=0.0) + scale * total, mask=live)


ADD_BLOCK = 1024


def add(x: torch.Tensor, a: torch.Tensor, scale: float, b: torch.Tensor | None = None,
        post_norm: torch.Tensor | None = None, eps: float = 0.0) -> torch.Tensor:
    """x += scale * (a + b) in place (x, a, b with x's number of elements, contiguous), a + b RMS-normed with the
    weight `post_norm` first if given (x, a, b (T, n) then); b None: torch's add_."""
    if post_norm is not None:
        _add_rms_norm_kernel[(x.shape[0],)](x, a.contiguous(), a if b is None else b.contiguous(), post_norm, x, x,
                                            x.shape[1], float(scale), eps, HAS_ADD=True, HAS_B=b is not None,
                                            HAS_POST=True, HAS_OUT=False, BLOCK=triton.next_power_of_2(x.shape[1]),
                                            enable_fp_fusion=True)
        return x
    if b is None:
        return x.add_(a, alpha=scale)
    n = x.numel()
    _add_kernel[(triton.cdiv(n, ADD_BLOCK),)](x, a.contiguous(), b.contiguous(), n, float(scale), BLOCK=ADD_BLOCK,
                                              enable_fp_fusion=True)
    return x


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """x (T, n) float32 contiguous -> (T, n) float32."""
    out = torch.empty_like(x)
    _add_rms_norm_kernel[(x.shape[0],)](x, x, x, weight, weight, out, x.shape[1], 0.0, eps, HAS_ADD=False,
                                        HAS_B=False, HAS_POST=False, HAS_OUT=True,
                                        BLOCK=triton.next_power_of_2(x.shape[1]), enable_fp_fusion=True)
    return out


def add_rms_norm(x: torch.Tensor, a: torch.Tensor, scale: float, weight: torch.Tensor, eps: float,
                 post_norm: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """x (T, n) += scale * a (T, n) in place (a RMS-normed with the weight `post_norm` first if given); (x,
    RMSNorm(x))."""
    out = torch.empty_like(x)
    _add_rms_norm_kernel[(x.shape[0],)](x, a.contiguous(), x, weight if post_norm is None else post_norm, weight,
                                        out, x.shape[1], float(scale), eps, HAS_ADD=True, HAS_B=False,
                                        HAS_POST=post_norm is not None, HAS_OUT=True,
                                        BLOCK=triton.next_power_of_2(x.shape[1]), enable_fp_fusion=True)
    return x, out
