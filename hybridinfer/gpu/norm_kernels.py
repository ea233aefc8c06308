"""The GPU side's RMSNorm as one Triton kernel per token (torch's form is six), alone or after the residual add
that precedes it; `norm_reference.py` is the torch twin (same functions, same results).

    _add_rms_norm_kernel   program t (a token): x[t] += scale * a[t] if HAS_ADD; out[t] = x[t] / rms * w
    _add_kernel            x += scale * (a + b), in tiles of BLOCK elements (the residual alone is torch's add_)
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl



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


@triton.jit
def _add_kernel(x_ptr, a_ptr, b_ptr, n, scale, BLOCK: tl.constexpr):
    i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    live = i < n
    total = tl.load(a_ptr + i, mask=live, other=0.0) + tl.load(b_ptr + i, mask=live, other=0.0)
    tl.store(x_ptr + i, tl.load(x_ptr + i, mask=live, other=0.0) + scale * total, mask=live)


ADD_BLOCK = 1024


def add(x: torch.Tensor, a: torch.Tensor, scale: float, b: torch.Tensor | None = None) -> torch.Tensor:
    """x += scale * (a + b) in place (x, a, b with x's number of elements, contiguous); b None: torch's add_."""
    if b is None:
        return x.add_(a, alpha=scale)
    n = x.numel()
    _add_kernel[(triton.cdiv(n, ADD_BLOCK),)](x, a.contiguous(), b.contiguous(), n, float(scale), BLOCK=ADD_BLOCK)
    return x


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
