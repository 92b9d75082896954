"""Multi-layer perceptrons, the building block of every dense arch."""

from __future__ import annotations

from torch import nn

ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU}


class MLP(nn.Sequential):
    """``Linear (-> BatchNorm) -> activation (-> dropout)`` per width; ``[B, in_dim] -> [B, widths[-1]]``.

    Batch norm uses each rank's batch statistics under data parallelism (not synchronised), as a
    single-device model would with the per-rank batch.

    Args:
        in_dim: input width.
        widths: output width of each layer.
        activation: ``relu``, ``gelu`` or ``silu``.
        dropout: dropout probability after each activation (0 = none).
        last_activation: apply the activation after the last layer too (False for logits).
        batch_norm: batch norm between each Linear and its activation.
    """

    def __init__(
        self,
        in_dim: int,
        widths: list[int],
        activation: str = "relu",
        dropout: float = 0.0,
        last_activation: bool = True,
        batch_norm: bool = False,
    ) -> None:
        layers: list[nn.Module] = []
        dims = [in_dim, *widths]
        for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
            layers.append(nn.Linear(a, b))
            if i < len(widths) - 1 or last_activation:
                if batch_norm:
                    layers.append(nn.BatchNorm1d(b))
                layers.append(ACTIVATIONS[activation]())
                if dropout > 0:
                    layers.append(nn.Dropout(dropout))
        super().__init__(*layers)
        self.in_dim = in_dim
        self.out_dim = dims[-1]
