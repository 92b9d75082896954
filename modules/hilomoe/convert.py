"""Turn the Linear layers of a dense arch's MLP towers into HiLoMoE blocks, and collect their losses.

``convert_towers`` is the drop-in: it replaces chosen ``nn.Linear`` layers of chosen towers (found
by dotted path, ``*`` matching any child) with ``HiLoMoELinear`` blocks whose base layer *is* the
original Linear, so a converted model starts exactly as the model it came from (U = 0).
``MoEDense`` wraps the converted dense arch: same ``forward(dense, pooled) -> DenseOutput`` contract,
with the blocks' weighted auxiliary losses and their diagnostics added.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from recscale.configs.schema import HiLoMoEConfig
from recscale.modules.flops import FlopCount, flop_counter
from recscale.modules.hilomoe.layer import AuxWeights, HiLoMoEBase, HiLoMoELinear
from recscale.modules.outputs import DenseOutput


def block_kwargs(cfg: HiLoMoEConfig) -> dict[str, Any]:
    """``HiLoMoELinear`` keyword arguments from the ``model.hilomoe`` section."""
    return {
        "num_experts": cfg.num_experts,
        "num_layers": cfg.num_layers,
        "routing": cfg.routing,
        "top_k": cfg.top_k,
        "router_keys": cfg.router_keys,
        "query": cfg.query,
        "logit_scale": cfg.logit_scale,
        "route_dropout": cfg.route_dropout,
        "aux_weights": AuxWeights(cfg.load_balance_weight, cfg.z_loss_weight, cfg.diversity_weight),
        "diversity_normalize": cfg.diversity_normalize,
        "expert_init_std": cfg.expert_init_std,
        "expert_compute": cfg.expert_compute,
    }


def find_towers(root: nn.Module, pattern: str) -> list[tuple[str, nn.Module]]:
    """Modules of ``root`` at the dotted ``pattern`` (``*`` matches every child); may be empty."""
    found: list[tuple[str, nn.Module]] = [("", root)]
    for part in pattern.split("."):
        nxt: list[tuple[str, nn.Module]] = []
        for prefix, module in found:
            children = module.named_children() if part == "*" else [(part, getattr(module, part, None))]
            for name, child in children:
                if isinstance(child, nn.Module):
                    nxt.append((f"{prefix}.{name}" if prefix else name, child))
        found = nxt
    return found


def convert_towers(root: nn.Module, towers: list[str], layers: list[int], **kwargs: Any) -> list[str]:
    """Replace Linear layers of the towers at ``towers`` with HiLoMoE blocks; return their paths.

    Args:
        root: the dense arch (modified in place).
        towers: dotted paths (``*`` matches any child) of ``nn.Sequential`` towers, or of single
            ``nn.Linear`` layers (e.g. DCN-V2's cross layers: ``cross.*.full``).
        layers: positions among each tower's Linear layers (negative from the end); empty = all. Single
            Linear targets are always converted.
        **kwargs: ``HiLoMoELinear`` arguments (see ``block_kwargs``).

    Raises:
        ValueError: a path matches nothing, is neither a Sequential nor a Linear, or a layer position is
            out of range.
    """
    converted: list[str] = []
    for pattern in towers:
        matches = find_towers(root, pattern)
        if not matches:
            raise ValueError(f"model.hilomoe.towers: {pattern!r} matches no module of {type(root).__name__}")
        for path, tower in matches:
            if isinstance(tower, nn.Linear):
                parent_path, _, name = path.rpartition(".")
                setattr(root.get_submodule(parent_path), name, HiLoMoELinear.from_linear(tower, **kwargs))
                converted.append(path)
                continue
            if not isinstance(tower, nn.Sequential):
                raise ValueError(
                    f"model.hilomoe.towers: {path!r} is a {type(tower).__name__}, not an MLP tower or a Linear"
                )
            positions = [i for i, m in enumerate(tower) if isinstance(m, nn.Linear)]
            chosen = layers or list(range(len(positions)))
            for j in chosen:
                if not -len(positions) <= j < len(positions):
                    raise ValueError(
                        f"model.hilomoe.layers: {j} is out of range for {path!r}, which has {len(positions)} "
                        "Linear layers"
                    )
                index = positions[j]
                tower[index] = HiLoMoELinear.from_linear(tower[index], **kwargs)
                converted.append(f"{path}.{index}")
    return converted


def moe_blocks(module: nn.Module) -> list[tuple[str, HiLoMoEBase]]:
    """Every HiLoMoE block (any backend) inside ``module``, with its path."""
    return [(name, m) for name, m in module.named_modules() if isinstance(m, HiLoMoEBase)]


def collect_aux(module: nn.Module, like: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Sum of the blocks' weighted auxiliary losses from their latest forward, and diagnostics.

    Diagnostics (detached): ``moe/aux_loss`` (the sum), ``moe/load_balance``, ``moe/z_loss``,
    ``moe/diversity`` (means over blocks), ``moe/load_max`` (largest expert share x K; 1 = uniform)
    and ``moe/expert_load`` (every block's ``[L, K]`` route shares, flattened: a histogram).
    Each block's record is cleared once read.
    """
    records = []
    for _, block in moe_blocks(module):
        if block.last_aux is not None:
            records.append((block.num_experts, block.last_aux))
            block.last_aux = None
    total = like.new_zeros((), dtype=torch.float32)
    if not records:
        return total, {}
    for _, aux in records:
        total = total + aux.total.float()
    n = float(len(records))
    diagnostics = {
        "moe/aux_loss": total.detach(),
        "moe/load_balance": sum(a.load_balance.detach() for _, a in records) / n,
        "moe/z_loss": sum(a.z_loss.detach() for _, a in records) / n,
        "moe/diversity": sum(a.diversity.detach() for _, a in records) / n,
        "moe/load_max": torch.stack([a.load_LK.max() * k for k, a in records]).max(),
        "moe/expert_load": torch.cat([a.load_LK.flatten() for _, a in records]),
    }
    return total, diagnostics


class MoEDense(nn.Module):
    """A dense arch whose towers hold HiLoMoE blocks: adds their auxiliary losses to its output.

    Args:
        inner: the converted dense arch (``forward(dense, pooled) -> DenseOutput``, ``flops()``).
    """

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, dense: torch.Tensor, pooled: torch.Tensor) -> DenseOutput:
        """``dense [B, N]``, ``pooled [B, sum D]`` -> logits ``[B, T]``, aux loss, diagnostics."""
        logits, aux, diagnostics = self.inner(dense, pooled)
        moe_aux, moe_diag = collect_aux(self.inner, logits)
        return logits, aux + moe_aux, {**diagnostics, **moe_diag}

    def flops(self) -> dict[str, FlopCount]:
        """The inner arch's breakdown (its MLP counts include the blocks, active experts only)."""
        return flop_counter(self.inner).flops()


def build_moe_dense(inner: nn.Module, cfg: HiLoMoEConfig, default_towers: list[str]) -> MoEDense:
    """Convert ``inner``'s towers (``cfg.towers``, or ``default_towers``) and wrap it."""
    convert_towers(inner, cfg.towers or default_towers, cfg.layers, **block_kwargs(cfg))
    return MoEDense(inner)
