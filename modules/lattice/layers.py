"""Lattice's building layers: the SwishRMSNorm family, its MLP, and parameter untying by domain.

- ``SwishNorm``: the norm-activation after each hidden MLP layer. ``rms_gate_norm`` (default):
  ``Y = RMSNorm(X) ⊙ σ(RMSNorm(X)) = SiLU(RMSNorm(X))``; ``x_gate_norm``: ``Y = X ⊙ σ(LayerNorm(X))``,
  TorchRec's ``SwishLayerNorm``. Both normalise, so the MLPs need no separate norm and stay stable
  in bf16 at depth.
- ``LatticeMLP``: ``Linear -> SwishNorm`` per hidden width, then a Linear (no norm after it); every
  Linear bias-less by default.
- ``UntiedByDomain``: G copies of a module; row b gets ``Σ_g 1[domain_b = g] · f_g(x_b)``. It is a
  masked sum that runs **every** copy on every row (fixed shapes: no host sync, no data-dependent
  indexing), so its FLOPs are G times one copy's, and ``flops()`` counts them that way (what runs,
  and what ``FlopCounterMode`` sees). G = 1 is the tied module itself, called without masks.

Legend: B batch, G domain groups, D width.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from recscale.modules.flops import FlopCount, linears

SWISH_NORMS = ("rms_gate_norm", "x_gate_norm")
RMS_EPS = 1e-6
"""Epsilon of every RMSNorm in Lattice (fixed, so bf16 and fp32 runs normalise alike)."""


class SwishNorm(nn.Module):
    """``[..., D] -> [..., D]``: ``SiLU(RMSNorm(x))`` (``rms_gate_norm``) or ``x * σ(LayerNorm(x))`` (``x_gate_norm``).

    Args:
        dim: D.
        kind: ``rms_gate_norm`` or ``x_gate_norm``.
        bias: the LayerNorm of ``x_gate_norm`` has a bias (RMSNorm never has one).
    """

    def __init__(self, dim: int, kind: str = "rms_gate_norm", bias: bool = False) -> None:
        super().__init__()
        if kind not in SWISH_NORMS:
            raise ValueError(f"model.lattice.swish_norm: expected one of {', '.join(SWISH_NORMS)}, got {kind!r}")
        self.kind = kind
        self.norm: nn.Module = nn.RMSNorm(dim, eps=RMS_EPS) if kind == "rms_gate_norm" else nn.LayerNorm(dim, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The gated norm of ``x``."""
        if self.kind == "rms_gate_norm":
            return F.silu(self.norm(x))
        return x * torch.sigmoid(self.norm(x))


class LatticeMLP(nn.Sequential):
    """``[..., in_dim] -> [..., widths[-1]]``: ``Linear -> SwishNorm`` per hidden width, then a Linear.

    Args:
        in_dim: input width.
        widths: output width of each Linear (the last one is the output).
        norm: ``SwishNorm`` kind.
        bias: Linear (and LayerNorm) biases.
    """

    def __init__(self, in_dim: int, widths: list[int], norm: str = "rms_gate_norm", bias: bool = False) -> None:
        layers: list[nn.Module] = []
        dims = [in_dim, *widths]
        for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
            layers.append(nn.Linear(a, b, bias=bias))
            if i < len(widths) - 1:
                layers.append(SwishNorm(b, norm, bias))
        super().__init__(*layers)
        self.in_dim = in_dim
        self.out_dim = dims[-1]

    def flops(self, input_grad: bool = True, tokens: int = 1) -> FlopCount:
        """FLOPs of ``tokens`` input vectors (forward and exact backward)."""
        return linears(self, input_grad, tokens)


class UntiedByDomain(nn.Module):
    """G copies of a module, mixed per row by its domain: ``out_b = Σ_g mask_bg · f_g(x)_b``.

    Args:
        make: builds one copy.
        groups: G (1 = tied: one module, masks ignored).
    """

    def __init__(self, make: Callable[[], nn.Module], groups: int = 1) -> None:
        super().__init__()
        if groups < 1:
            raise ValueError(f"model.lattice.untie_domains: expected >= 0, got {groups}")
        self.groups = nn.ModuleList(make() for _ in range(groups))

    @property
    def num_groups(self) -> int:
        """G."""
        return len(self.groups)

    def forward(self, x: torch.Tensor, domain_BG: torch.Tensor | None = None) -> torch.Tensor:
        """``x [B, ...]``; ``domain_BG`` one-hot bool ``[B, G]`` (unused and may be None when G = 1)."""
        if len(self.groups) == 1:
            only: torch.Tensor = self.groups[0](x)
            return only
        assert domain_BG is not None, "untied layers need the domain masks"
        out: torch.Tensor | None = None
        for g, module in enumerate(self.groups):
            y = module(x)
            term = y * domain_BG[:, g].to(y.dtype).view(-1, *([1] * (y.dim() - 1)))
            out = term if out is None else out + term
        assert out is not None
        return out

    def flops(self, input_grad: bool = True, tokens: int = 1) -> FlopCount:
        """G copies' FLOPs: every copy runs on every row (the masks zero the others' rows afterwards)."""
        one = self.groups[0].flops(input_grad, tokens)  # type: ignore[operator]
        return one.scaled(len(self.groups))


def group_lookup(domain_groups: Sequence[Sequence[int]]) -> torch.Tensor:
    """``group_of [K]`` int64: the group of each domain id 0..K-1 (``model.lattice.domain_groups``).

    Empty without groups (each domain its own).
    """
    out = torch.zeros(sum(len(g) for g in domain_groups), dtype=torch.int64)
    for g, members in enumerate(domain_groups):
        out[list(members)] = g
    return out


def domain_masks(
    domain_B: torch.Tensor | None, groups: int, group_of: torch.Tensor | None = None
) -> torch.Tensor | None:
    """One-hot ``[B, G]`` bool of each row's domain group; None when G = 1.

    Without ``group_of`` (or with it empty) the group is the domain id clamped to 0..G-1; with it, the id is
    clamped to 0..K-1 and looked up in ``group_of [K]``. A comparison with ``arange(G)`` rather than
    ``F.one_hot``: no range check on the host, fixed shapes.
    """
    if groups <= 1:
        return None
    if domain_B is None:
        raise ValueError(
            "model.lattice.untie_domains: untied layers need the batch's domain ids (data.features.domain), got None"
        )
    if group_of is not None and group_of.numel():
        ids_B = group_of[domain_B.long().clamp(0, group_of.numel() - 1)]
    else:
        ids_B = domain_B.long().clamp(0, groups - 1)
    return ids_B.unsqueeze(1) == torch.arange(groups, device=ids_B.device)
