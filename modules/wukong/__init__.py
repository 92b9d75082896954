"""Wukong (Zhang et al. 2024): stacked Factorization Machine + Linear Compress interaction layers.

``WukongLayer`` (tokens ``[B, N, D] -> [B, n_F + n_L, D]``) is the reusable block; ``WukongDense``
is the whole dense arch. See ``docs/models/wukong.md``.
"""

from recscale.modules.wukong.block import FactorizationMachineBlock, LinearCompressBlock, WukongLayer
from recscale.modules.wukong.dense import WukongDense, WukongEmbedding

__all__ = ["FactorizationMachineBlock", "LinearCompressBlock", "WukongDense", "WukongEmbedding", "WukongLayer"]
