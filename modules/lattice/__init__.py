"""Lattice (Meta, arXiv 2512.09200, reconstructed): Transformer blocks over event sequences, Wukong fusion blocks.

``LatticeDense`` is the dense arch; ``TransformerBlock``, ``fusion_block`` (a ``WukongLayer`` with
Lattice's MLPs), ``ExtendedContextStorage``, ``SwishNorm`` and ``UntiedByDomain`` are its parts.
See ``docs/models/lattice.md``.
"""

from recscale.modules.lattice.fusion import ExtendedContextStorage, fusion_block
from recscale.modules.lattice.layers import LatticeMLP, SwishNorm, UntiedByDomain, domain_masks
from recscale.modules.lattice.model import LatticeDense, LatticeOptions
from recscale.modules.lattice.processors import FeatureTokens, SequenceTokens
from recscale.modules.lattice.transformer import TransformerBlock

__all__ = [
    "ExtendedContextStorage",
    "FeatureTokens",
    "LatticeDense",
    "LatticeMLP",
    "LatticeOptions",
    "SequenceTokens",
    "SwishNorm",
    "TransformerBlock",
    "UntiedByDomain",
    "domain_masks",
    "fusion_block",
]
