"""Triton kernel of :class:`~robustcompress.attacks.seeds.SampleNoise`'s per-sample streams on CUDA.

On a GPU, one ``torch.Generator`` per sample costs one launch per sample and draw (1,024 launches
for a PGD random start at batch 1,024). Here every sample's stream is counter-based instead, and
a whole batch is one launch: element ``j`` of draw ``k`` of a sample with 64-bit key ``s`` and
stream number ``t`` is a function of ``(s, t, k, j)`` alone, Philox-4x32-10 (Salmon et al.,
SC'11; Triton's ``tl.philox``) keyed by ``s`` at counter ``(j, k, t_lo, t_hi)``. The caller keeps
``k`` per sample on the device (and picks ``s``, ``t``: :func:`robustcompress.attacks.seeds._philox_rows`).

* uniform: the top ``BITS`` bits of the first word times ``2**-BITS``, ``BITS`` the output's
  significand (float32 24, float16 11, bfloat16 8: exactly representable, so ``[0, 1)`` as
  ``torch.rand``); float64: 53 bits from two words.
* normal: Box-Muller, ``sqrt(-2 ln(1 - u1)) cos(2 pi u2)`` on two uniforms (float32; float64 for
  float64 outputs), cast to the output's dtype.

Deviation from ``torch.rand``/``randn``: another generator, so the same seed gives other numbers
than the CPU streams (torch's CPU and CUDA generators differ from each other too).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

# elements per program: on a GPU, and under the interpreter on CPU tensors (fewer, larger steps)
BLOCKS = {"cuda": 1024, "cpu": 65536}
#: significand bits of a uniform in each output dtype (float64 takes two 32-bit words)
BITS = {torch.float32: 24, torch.float16: 11, torch.bfloat16: 8, torch.float64: 53}


@triton.jit
def _uniform(w0, w1, BITS: tl.constexpr):
    """``[0, 1)`` on the grid ``2**-BITS`` from one (``BITS <= 32``, float32) or two words."""
    if BITS > 32:
        hi = (w0.to(tl.uint32, bitcast=True) >> 5).to(tl.float64)  # 27 bits
        lo = (w1.to(tl.uint32, bitcast=True) >> 6).to(tl.float64)  # 26 bits
        return (hi * 67108864.0 + lo) * 2.0 ** -53
    else:
        return (w0.to(tl.uint32, bitcast=True) >> (32 - BITS)).to(tl.float32) * (1.0 / (1 << BITS))


@triton.jit
def _noise_kernel(key_ptr, stream_ptr, draw_ptr, out_ptr, total, D, NORMAL: tl.constexpr,
                  BITS: tl.constexpr, BLOCK: tl.constexpr):
    n = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    ok = n < total
    row = tl.where(ok, n // D, 0)
    col = (n - row * D).to(tl.uint32)
    key = tl.load(key_ptr + row)
    stream = tl.load(stream_ptr + row)
    k = tl.load(draw_ptr + row).to(tl.uint32)
    t_lo = (stream & 0xFFFFFFFF).to(tl.uint32)
    t_hi = ((stream >> 32) & 0xFFFFFFFF).to(tl.uint32)
    w0, w1, w2, w3 = tl.philox(key, col, k, t_lo, t_hi)
    u = _uniform(w0, w1, BITS)
    if NORMAL:
        v = _uniform(w2, w3, BITS)
        u = tl.sqrt(-2.0 * tl.log(1.0 - u)) * tl.cos(6.283185307179586 * v)
    tl.store(out_ptr + n, u.to(out_ptr.dtype.element_ty), mask=ok)


def fill(out: torch.Tensor, keys: torch.Tensor, streams: torch.Tensor, draws: torch.Tensor,
         normal: bool) -> torch.Tensor:
    """Write draw ``draws[i]`` of stream ``streams[i]`` keyed ``keys[i]`` (int64 each) into row
    ``i`` of ``out`` (contiguous, float64/32/16 or bfloat16; uniform or, with ``normal``, standard
    normal)."""
    if out.dtype not in BITS:
        raise TypeError(f"per-sample noise in {out.dtype} is not supported; use a float dtype")
    total = out.numel()
    if total == 0:
        return out
    bits = BITS[out.dtype] if out.dtype == torch.float64 or not normal else 24
    block = BLOCKS["cuda" if out.device.type == "cuda" else "cpu"]
    grid = (triton.cdiv(total, block),)
    _noise_kernel[grid](keys, streams, draws, out, total, total // out.shape[0], NORMAL=normal, BITS=bits,
                        BLOCK=block)
    return out
