"""Softmax attention with padding and window masks: one function, three kernels, one mask rule.

Every sequence block (Kunlun's sliding-window and seed attention, gated cross-attention) calls
``attention``; the backend is a config choice and each fast path has the plain reference as its
parity target (tests/modules/test_attention.py):

- ``REFERENCE``: ``softmax(Q Kᵀ * scale, masked) V`` as explicit matmuls. Runs everywhere.
- ``SDPA``: ``torch.nn.functional.scaled_dot_product_attention`` with the same boolean mask (the
  masked CPU flash kernel / the CUDA memory-efficient kernel). It still computes every (i, j) pair:
  a window mask saves no FLOPs, only the reference's L x L softmax memory.
- ``FLEX``: FlexAttention with a block mask built from the same rule; blocks with no allowed pair
  are skipped, so a sliding window really costs O(L * w). In torch 2.13 it has no backward on CPU:
  training needs CUDA (forward-only use on CPU works, eager and slow).

Mask rule (``MaskSpec``): key j is visible to query i when key j is a real event and (i, j) lies in
the band (``|i - j| <= window``, or ``0 <= i - j <= window`` when causal; window 0 = no band). For
self-attention the diagonal is always visible, so a padded query still sees one key (itself) and no
row is ever fully masked (a fully masked softmax row is NaN in some kernels). For cross-attention,
``nonempty_keys`` makes an example without any event attend one zero slot instead.

Legend: B batch, H heads, Q query length, K key length, L sequence length, d head dim.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from recscale.modules.flops import FlopCount, Lengths

FLEX_BLOCK = 128
"""FlexAttention's default block size (queries and keys) on CUDA in torch 2.13."""

_COMPILED_FLEX: dict[str, Callable[..., Any]] = {}


class AttentionBackend(str, enum.Enum):
    """Which kernel computes softmax attention."""

    REFERENCE = "reference"
    SDPA = "sdpa"
    FLEX = "flex"


@dataclass(frozen=True)
class MaskSpec:
    """Which (query, key) pairs may attend, besides key padding."""

    window: int = 0
    """Band half width w (0 = no band: every real key)."""
    causal: bool = False
    """Only keys at or before the query (older events, with right-aligned sequences)."""
    self_attention: bool = False
    """Queries and keys are the same tokens: the diagonal is always visible."""

    def band(self, q_len: int, k_len: int, device: torch.device) -> torch.Tensor | None:
        """``[Q, K]`` bool of the pairs inside the band, or None when every pair is."""
        if self.window <= 0 and not self.causal:
            return None
        i_Q1 = torch.arange(q_len, device=device).unsqueeze(1)
        j_1K = torch.arange(k_len, device=device).unsqueeze(0)
        gap_QK = i_Q1 - j_1K
        allowed = torch.ones(q_len, k_len, dtype=torch.bool, device=device)
        if self.causal:
            allowed = allowed & (gap_QK >= 0)
        if self.window > 0:
            allowed = allowed & (gap_QK.abs() <= self.window)
        return allowed

    def allowed(self, key_valid_BK: torch.Tensor, q_len: int) -> torch.Tensor:
        """``[B, 1, Q, K]`` bool: True where query i may attend key j."""
        k_len = key_valid_BK.shape[1]
        keys_B11K = key_valid_BK[:, None, None, :]
        if self.self_attention:
            eye_QK = torch.eye(q_len, k_len, dtype=torch.bool, device=key_valid_BK.device)
            keys_B1QK = keys_B11K | eye_QK
        else:
            keys_B1QK = keys_B11K.expand(-1, -1, q_len, -1)
        band_QK = self.band(q_len, k_len, key_valid_BK.device)
        return keys_B1QK if band_QK is None else keys_B1QK & band_QK

    def num_pairs(self, q_len: int, k_len: int) -> int:
        """Pairs (i, j) inside the band when every key is real: the model FLOPs' attention area."""
        total = 0
        for i in range(q_len):
            lo = 0 if self.window <= 0 else max(0, i - self.window)
            hi = k_len - 1 if self.window <= 0 else min(k_len - 1, i + self.window)
            if self.causal:
                hi = min(hi, i)
            total += max(0, hi - lo + 1)
        return total

    def num_block_pairs(self, q_len: int, k_len: int, block: int = FLEX_BLOCK) -> int:
        """Pairs a block-sparse kernel computes (FlexAttention's work, before its in-tile masking).

        Every pair of each (block x block) tile that holds at least one pair inside the band.
        """
        total = 0
        for q0 in range(0, q_len, block):
            q1 = min(q_len, q0 + block) - 1
            for k0 in range(0, k_len, block):
                k1 = min(k_len, k0 + block) - 1
                # the tile holds a band pair when the gap range [q0 - k1, q1 - k0] meets the band
                lo_gap, hi_gap = q0 - k1, q1 - k0
                band_lo = 0 if self.causal else (-self.window if self.window > 0 else -(k_len + q_len))
                band_hi = self.window if self.window > 0 else k_len + q_len
                if hi_gap >= band_lo and lo_gap <= band_hi:
                    total += (q1 - q0 + 1) * (k1 - k0 + 1)
        return total


def nonempty_keys(key_valid_BK: torch.Tensor) -> torch.Tensor:
    """Key mask where an example with no real key sees its last (zero padding) slot.

    Cross-attention over an empty sequence then reads zeros instead of a NaN softmax row.
    """
    none_B1 = ~key_valid_BK.any(dim=1, keepdim=True)
    last_1K = torch.zeros_like(key_valid_BK[:1])
    last_1K[:, -1] = True
    return key_valid_BK | (none_B1 & last_1K)


def split_heads(x_BLD: torch.Tensor, num_heads: int) -> torch.Tensor:
    """``[B, L, H*d] -> [B, H, L, d]``."""
    b, length, width = x_BLD.shape
    return x_BLD.view(b, length, num_heads, width // num_heads).transpose(1, 2)


def merge_heads(x_BHLd: torch.Tensor) -> torch.Tensor:
    """``[B, H, L, d] -> [B, L, H*d]``."""
    b, h, length, d = x_BHLd.shape
    return x_BHLd.transpose(1, 2).reshape(b, length, h * d)


def attention(
    q_BHQd: torch.Tensor,
    k_BHKd: torch.Tensor,
    v_BHKd: torch.Tensor,
    key_valid_BK: torch.Tensor,
    spec: MaskSpec,
    backend: AttentionBackend = AttentionBackend.SDPA,
    scale: float | None = None,
) -> torch.Tensor:
    """Masked softmax attention ``[B, H, Q, d]`` (see the module docstring for the mask rule).

    Args:
        q_BHQd: queries.
        k_BHKd: keys.
        v_BHKd: values.
        key_valid_BK: True where key j of example b is a real token.
        spec: band / causality / self-attention.
        backend: kernel.
        scale: logit scale (default ``1 / sqrt(d)``).
    """
    scale = 1.0 / math.sqrt(q_BHQd.shape[-1]) if scale is None else scale
    if backend == AttentionBackend.FLEX:
        return _flex(q_BHQd, k_BHKd, v_BHKd, key_valid_BK, spec, scale)
    allowed_B1QK = spec.allowed(key_valid_BK, q_BHQd.shape[2])
    if backend == AttentionBackend.SDPA:
        return F.scaled_dot_product_attention(q_BHQd, k_BHKd, v_BHKd, attn_mask=allowed_B1QK, scale=scale)
    scores_BHQK = torch.matmul(q_BHQd, k_BHKd.transpose(-1, -2)) * scale
    scores_BHQK = scores_BHQK.masked_fill(~allowed_B1QK, float("-inf"))
    return torch.matmul(torch.softmax(scores_BHQK.float(), dim=-1).to(v_BHKd.dtype), v_BHKd)


def _flex(
    q_BHQd: torch.Tensor,
    k_BHKd: torch.Tensor,
    v_BHKd: torch.Tensor,
    key_valid_BK: torch.Tensor,
    spec: MaskSpec,
    scale: float,
) -> torch.Tensor:
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    on_cuda = q_BHQd.device.type == "cuda"
    if not on_cuda and torch.is_grad_enabled() and q_BHQd.requires_grad:
        raise ValueError(
            "attention_backend: 'flex' has no backward on CPU in this torch; train with 'sdpa' or 'reference' "
            "(model.kunlun.attention_backend), or run FlexAttention on CUDA"
        )
    window, causal, diagonal = spec.window, spec.causal, spec.self_attention

    def mask_mod(b: torch.Tensor, h: torch.Tensor, i: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
        ok = key_valid_BK[b, j]
        if diagonal:
            ok = ok | (i == j)
        if causal:
            ok = ok & (i >= j)
        if window > 0:
            ok = ok & ((i - j).abs() <= window)
        return ok

    b, _, q_len, _ = q_BHQd.shape
    block_mask = create_block_mask(
        mask_mod, b, None, q_len, k_BHKd.shape[2], device=str(q_BHQd.device), BLOCK_SIZE=FLEX_BLOCK, _compile=on_cuda
    )
    kernel = flex_attention
    if on_cuda:  # eager FlexAttention materialises the scores; the compiled one is the fused kernel
        if "cuda" not in _COMPILED_FLEX:
            _COMPILED_FLEX["cuda"] = torch.compile(flex_attention, dynamic=False)
        kernel = _COMPILED_FLEX["cuda"]
    out = kernel(q_BHQd, k_BHKd, v_BHKd, block_mask=block_mask, scale=scale)
    assert isinstance(out, torch.Tensor)
    return out


def attention_flops(
    q_len: int,
    k_len: int,
    dim: int,
    spec: MaskSpec,
    grad_q: bool = True,
    grad_kv: bool = True,
) -> FlopCount:
    """Model FLOPs of softmax attention per example: ``Q Kᵀ`` and ``P V`` over the pairs inside the band.

    ``dim`` is the total width over heads (H * d). Backward is exact without recompute: ``dV = Pᵀ dO``
    and ``dP = dO Vᵀ`` (needed whenever anything upstream needs a gradient), ``dQ = dS K`` and
    ``dK = dSᵀ Q``.
    """
    return _model_pair_flops(spec.num_pairs(q_len, k_len), dim, grad_q, grad_kv)


def executed_attention_flops(
    q_len: int, k_len: int, dim: int, spec: MaskSpec, backend: AttentionBackend, grad: bool = True
) -> FlopCount:
    """FLOPs a backend actually executes per example (what ``FlopCounterMode`` sees for it).

    REFERENCE and SDPA compute every (i, j) pair whatever the mask; SDPA's backward also recomputes
    ``Q Kᵀ`` (flash-style kernels keep no P). FLEX computes every pair of each tile that the band
    touches and recomputes ``Q Kᵀ`` in backward, like SDPA.
    """
    pairs = spec.num_block_pairs(q_len, k_len) if backend == AttentionBackend.FLEX else q_len * k_len
    return _executed_pair_flops(pairs, dim, backend, grad)


def self_attention_flops(
    lengths: Lengths, dim: int, spec: MaskSpec, backend: AttentionBackend | None = None
) -> FlopCount:
    """Self-attention of every example over its own real tokens, summed over the examples.

    ``backend=None``: model FLOPs (the band's pairs among the L real tokens, ``attention_flops`` at
    L); a backend: what that kernel would execute on the unpadded example
    (``executed_attention_flops`` at L).
    """
    if backend is None:
        return _model_pair_flops(lengths.band_pairs(spec.window, spec.causal), dim)
    if backend == AttentionBackend.FLEX:
        pairs = lengths.sum_of(lambda n: spec.num_block_pairs(n, n))
    else:
        pairs = lengths.band_pairs()
    return _executed_pair_flops(pairs, dim, backend)


def cross_attention_flops(
    queries: int | Lengths, keys: Lengths, dim: int, backend: AttentionBackend | None = None
) -> FlopCount:
    """Attention without a band from ``queries`` to each example's real keys, summed over the examples.

    ``queries``: an int is that many queries in every example (learned seeds, a target query);
    ``Lengths`` are real query tokens (cross-attention between two sequences). An example without
    keys attends nothing (the padded kernels' one zero slot is padding). ``backend`` as in
    ``self_attention_flops``.
    """
    full = MaskSpec()
    if isinstance(queries, int):
        pairs = queries * keys.tokens
        if backend == AttentionBackend.FLEX:
            pairs = keys.sum_of(lambda n: full.num_block_pairs(queries, n))
    else:
        pairs = queries.dot(keys)
        if backend == AttentionBackend.FLEX:
            pairs = sum(full.num_block_pairs(int(q), int(k)) for q, k in zip(queries.lengths_B, keys.lengths_B))
    if backend is None:
        return _model_pair_flops(pairs, dim)
    return _executed_pair_flops(pairs, dim, backend)


def _model_pair_flops(pairs: int, dim: int, grad_q: bool = True, grad_kv: bool = True) -> FlopCount:
    """``Q Kᵀ`` and ``P V`` over ``pairs`` (query, key) pairs of width ``dim``; exact backward, no recompute."""
    one = 2 * pairs * dim
    backward = 0
    if grad_q or grad_kv:
        backward += one  # dP = dO Vᵀ
    if grad_kv:
        backward += 2 * one  # dV, dK
    if grad_q:
        backward += one  # dQ
    return FlopCount(2 * one, backward)


def _executed_pair_flops(pairs: int, dim: int, backend: AttentionBackend, grad: bool = True) -> FlopCount:
    """What a kernel runs over ``pairs`` computed pairs: the reference keeps P, SDPA / FLEX recompute ``Q Kᵀ``."""
    one = 2 * pairs * dim
    if not grad:
        return FlopCount(2 * one, 0)
    if backend == AttentionBackend.REFERENCE:
        return FlopCount(2 * one, 4 * one)
    return FlopCount(2 * one, 5 * one)


def rotary(x_BHLd: torch.Tensor, positions_BL: torch.Tensor, base: float) -> torch.Tensor:
    """Rotary position encoding with real-valued positions (RoPE; ROTE when positions are times).

    Channel pairs (c, c + d/2) are rotated by ``positions * base^(-2c/d)``, so ``q_i · k_j`` depends on
    ``positions_i - positions_j`` only.
    """
    d = x_BHLd.shape[-1]
    half = d // 2
    freq_C = base ** (-torch.arange(half, device=x_BHLd.device, dtype=torch.float32) * 2.0 / d)
    angle_B1LC = (positions_BL.float().unsqueeze(-1) * freq_C).unsqueeze(1)
    cos, sin = torch.cos(angle_B1LC).to(x_BHLd.dtype), torch.sin(angle_B1LC).to(x_BHLd.dtype)
    x1, x2 = x_BHLd[..., :half], x_BHLd[..., half : 2 * half]
    rotated = torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)
    if 2 * half < d:  # odd head dim: the last channel is left as is
        rotated = torch.cat([rotated, x_BHLd[..., 2 * half :]], dim=-1)
    return rotated


def time_positions(times_BL: torch.Tensor, time_scale: float) -> torch.Tensor:
    """ROTE positions ``log(1 + (t_newest - t_i) / time_scale)`` for right-aligned timestamps ``[B, L]``.

    The gap is taken in int64 first: epoch seconds (~1.7e9) would lose ~100 s of resolution in fp32.
    Padding slots (timestamp 0) get large positions, but they are masked out anyway.
    """
    gap_BL = (times_BL[:, -1:] - times_BL).clamp(min=0)
    return torch.log1p(gap_BL.float() / time_scale)
