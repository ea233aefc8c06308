"""The GPU side's RMSNorm as one Triton kernel per token (torch's form is six), alone or after the residual add
that precedes it; `norm_reference.py` is the torch twin (same functions, same results).

    _add_rms_norm_kernel   program t (a token): x[t] += scale * a[t] if HAS_ADD; out[t] = x[t] / rms * w
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .norm_reference import add  # noqa: F401  (the residual add alone is one torch kernel already)


@triton.jit
def _add_rms_norm_kernel(x_ptr, a_ptr, w_ptr, out_ptr, n, scale, eps, HAS_ADD: tl.constexpr, BLOCK: tl.constexpr):
    t = tl.program_id(0).to(tl.int64)
    c = tl.arange(0, BLOCK)
    live = c < n
    x = tl.load(x_ptr + t * n + c, mask=live, other=0.0)
    if HAS_ADD:
        x += scale * tl.load(a_ptr + t * n + c, mask=live, other=0.0)
        tl.store(x_ptr + t * n + c, x, mask=live)
    inverse = 1.0 / tl.sqrt(tl.sum(x * x, axis=0) / n + eps)
    tl.store(out_ptr + t * n + c, x * inverse * tl.load(w_ptr + c, mask=live, other=0.0), mask=live)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """x (T, n) float32 contiguous -> (T, n) float32."""
    out = torch.empty_like(x)
    _add_rms_norm_kernel[(x.shape[0],)](x, x, weight, out, x.shape[1], 0.0, eps, HAS_ADD=False,
                                        BLOCK=triton.next_power_of_2(x.shape[1]))
    return out


def add_rms_norm(x: torch.Tensor, a: torch.Tensor, scale: float, weight: torch.Tensor,
                 eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """x (T, n) += scale * a (T, n) in place; (x, RMSNorm(x))."""
    out = torch.empty_like(x)
    _add_rms_norm_kernel[(x.shape[0],)](x, a.contiguous(), weight, out, x.shape[1], float(scale), eps, HAS_ADD=True,
                                        BLOCK=triton.next_power_of_2(x.shape[1]))
    return x, out
