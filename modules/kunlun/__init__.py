"""Kunlun (arXiv 2602.10016): sequence blocks, the non-sequence side, the mixture of Wukong experts, the dense arch.

GDPA, hierarchical seed pooling, sliding-window attention, computation skip and event-level
personalization; see docs/models/kunlun.md.
"""
