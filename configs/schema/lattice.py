"""The ``model.lattice`` section: the Lattice dense arch (arch ``lattice``).

Lattice (Meta, arXiv 2512.09200) as reconstructed in ``docs/models/lattice.md``: the paper's method
section could not be read, so every choice that the available descriptions leave open is a key here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


@dataclass(kw_only=True)
class LatticeConfig:
    """Lattice: feature tokens, per-layer Transformer blocks over the event sequences, Wukong fusion blocks.

    Each layer runs a pre-norm Transformer block per event type (RoPE, QK-norm), compresses each
    sequence to ``seq_tokens`` tokens, and fuses them with the non-sequence tokens in a Wukong layer
    (the DWFB); Extended Context Storage feeds every earlier layer's output to later layers. One
    bias-less MLP head per task reads the last layer's tokens. The dense features go through
    ``model.dense_arch`` (hidden widths) to ``dense_tokens`` tokens. See ``docs/models/lattice.md``.
    """

    dim: int = 64
    """Token width d of every token (features of another width are projected to it)."""
    num_layers: int = 2
    """Lattice layers (each: Transformer block per event type, compression, fusion block)."""
    dense_tokens: int = 1
    """Tokens made from the dense features."""
    seq_tokens: int = 4
    """Tokens each event sequence is compressed to in every layer (a learned map over the sequence axis)."""
    num_heads: int = 2
    """Attention heads of the Transformer blocks (must divide ``dim``)."""
    ffn_dim: int = 0
    """Hidden width of each Transformer block's feed-forward MLP (0 = 4 * dim)."""
    rope: Literal["position", "time", "none"] = "position"
    """Rotary encoding of queries and keys: by event slot (``position``), by log time gap to the newest
    event (``time``, needs sequence timestamps), or none."""
    rope_base: float = 10_000.0
    """Rotary base (frequencies base^(-2i/d_head))."""
    rote_time_scale: float = 60.0
    """``rope: time`` position of event i: log(1 + (t_newest - t_i) / rote_time_scale), seconds."""
    qk_norm: bool = True
    """RMSNorm on every head's queries and keys before the rotary encoding."""
    attention_backend: Literal["reference", "sdpa"] = "sdpa"
    """Attention kernel: plain matmuls or ``scaled_dot_product_attention``."""
    ecs: bool = True
    """Extended Context Storage: layer l's input also gets P_{l,j}(output of layer j) for every j < l - 1
    (zero-initialised bias-less maps, so the network starts as the plain residual stack)."""
    ecs_map: Literal["flat", "tokens"] = "flat"
    """ECS maps: a Linear over the flattened tokens (n_j * d -> n * d) or a map over the token axis only
    (n_j -> n tokens, shared over the d channels; much smaller)."""
    swish_norm: Literal["rms_gate_norm", "x_gate_norm"] = "rms_gate_norm"
    """Norm-activation after each hidden MLP layer: ``rms_gate_norm`` = SiLU(RMSNorm(x)); ``x_gate_norm``
    = x * sigmoid(LayerNorm(x)) (TorchRec's SwishLayerNorm)."""
    bias: bool = False
    """Biases in the Linear layers and LayerNorms (false: bias-less everywhere)."""
    untie_domains: int = 0
    """Domain groups G whose Transformer FFNs and fusion-block MLPs have their own weights (0 = tied).
    Every row runs all G copies and keeps its domain's (``data.features.domain``; ids clamped to 0..G-1)."""
    domain_groups: list[list[int]] = field(default_factory=list)
    """Untie by groups of domains instead of one copy per domain: ``[[0, 1], [2, 3]]`` gives domains 0 and 1
    one copy and 2 and 3 another (the groups ``recscale data partition`` prints). A partition of the domain
    ids 0..K-1 (ids above K-1 read K-1's group); ``untie_domains`` must then be 0 or the number of groups."""
    num_fmb_tokens: int = 8
    """Tokens each fusion block's Factorization Machine Block emits."""
    num_lcb_tokens: int = 8
    """Tokens each fusion block's Linear Compress Block emits (0 = no LCB)."""
    fm_rank: int = 16
    """Columns k of each fusion block's FM projection (optimized FM ``X (Xᵀ Y)``)."""
    fmb_mlp: list[int] = field(default_factory=lambda: [256])
    """Hidden widths of each FMB MLP (a Linear to ``num_fmb_tokens * dim`` follows)."""
    task_mlp: list[int] = field(default_factory=lambda: [128])
    """Hidden widths of each task's head MLP (a Linear to the task's logit follows)."""
