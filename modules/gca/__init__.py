"""Gated cross-attention for cross-domain sequences (arXiv 2510.09435): the block and the ``gca_seq`` model.

See docs/models/gca.md.
"""

from recscale.modules.gca.block import EncoderLayer, GatedCrossAttention, masked_abs_cos
from recscale.modules.gca.model import GCASequenceDense

__all__ = ["EncoderLayer", "GCASequenceDense", "GatedCrossAttention", "masked_abs_cos"]
