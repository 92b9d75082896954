"""Embedding tables for inference: plain torch lookups over fp32, fp16 or row-wise int8 / int4 rows.

Row-wise quantization (the scheme of TorchRec's quantized inference tables): each row ``w [D]`` is
stored as unsigned codes ``q`` with a per-row ``scale`` and ``bias`` (``w ≈ q * scale + bias``,
``bias = min(w)``, ``scale = (max(w) - min(w)) / (2^bits - 1)``); int4 packs two codes per byte (low
nibble first), so ``D`` must be even. Scale and bias are kept in fp32 (fbgemm keeps fp16): 8 bytes
per row, so an int8 row costs ``D + 8`` bytes instead of ``4 D``. Rows are dequantised after the
gather, so a lookup touches only the rows it reads, with ordinary torch ops (no fbgemm at load time).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

QUANTIZE = ("none", "fp16", "int8", "int4")
"""``--quantize`` choices: how table rows are stored in the artifact."""

_LEVELS = {"int8": 255, "int4": 15}


def quantize_rows(weight: torch.Tensor, kind: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Row-wise ``weight [R, D]`` fp32 -> ``(codes uint8 [R, D] or [R, D/2], scale [R], bias [R])``.

    Example::

        codes, scale, bias = quantize_rows(torch.tensor([[0.0, 1.0, 0.25]]), "int8")
        # codes [[0, 255, 64]], scale [1/255], bias [0.]
    """
    levels = _LEVELS[kind]
    low = weight.min(dim=1).values
    span = weight.max(dim=1).values - low
    scale = torch.where(span > 0, span / levels, torch.ones_like(span))
    codes = torch.round((weight - low[:, None]) / scale[:, None]).clamp_(0, levels).to(torch.uint8)
    if kind == "int4":
        if weight.shape[1] % 2:
            raise ValueError(f"--quantize int4 needs an even embedding dim, a table has dim {weight.shape[1]}")
        codes = codes[:, 0::2] | (codes[:, 1::2] << 4)
    return codes.contiguous(), scale.float(), low.float()


class InferenceTable(nn.Module):
    """One table's pooled lookup: ``(ids [nnz], offsets [B]) -> [B, D]`` (sum or mean per bag; empty bag -> 0).

    Args:
        weight: the trained rows ``[R, D]`` (fp32).
        quantize: one of ``QUANTIZE``.
        mode: ``sum`` or ``mean`` (the table's pooling).
    """

    def __init__(self, weight: torch.Tensor, quantize: str, mode: str) -> None:
        super().__init__()
        self.quantize, self.mode, self.dim = quantize, mode, int(weight.shape[1])
        if quantize == "none":
            self.register_buffer("weight", weight.float().contiguous())
        elif quantize == "fp16":
            self.register_buffer("weight", weight.half().contiguous())
        else:
            codes, scale, bias = quantize_rows(weight.float(), quantize)
            self.register_buffer("weight", codes)
            self.register_buffer("scale", scale)
            self.register_buffer("bias", bias)

    def rows(self, ids: torch.Tensor) -> torch.Tensor:
        """The rows of ``ids [nnz]``, dequantised: ``[nnz, D]`` fp32."""
        if self.quantize == "fp16":
            return self.weight[ids].float()
        codes = self.weight[ids]
        if self.quantize == "int4":
            codes = torch.stack((codes & 15, codes >> 4), dim=2).reshape(ids.shape[0], self.dim)
        return codes.float() * self.scale[ids][:, None] + self.bias[ids][:, None]

    def forward(self, ids: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        """Pooled rows ``[B, D]`` of the bags ``ids [nnz]`` starting at ``offsets [B]``.

        Quantized rows are gathered and dequantised first; pooling them is then a bag over positions
        ``0..nnz-1`` of the gathered ``[nnz, D]`` rows.
        """
        if self.quantize == "none":
            return F.embedding_bag(ids, self.weight, offsets, mode=self.mode)
        rows = self.rows(ids)
        positions = torch.arange(ids.shape[0], device=ids.device)
        return F.embedding_bag(positions, rows, offsets, mode=self.mode)

    def nbytes(self) -> int:
        """Bytes the table's buffers hold."""
        return sum(b.numel() * b.element_size() for b in self.buffers())


__all__ = ["QUANTIZE", "InferenceTable", "quantize_rows"]
