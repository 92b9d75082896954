"""Multi-layer perceptrons, the building block of every dense arch."""

from __future__ import annotations

from torch import nn

ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU}


class MLP(nn.Sequential):
    """``Linear -> activation (-> dropout)`` for each width; ``[B, in_dim] -> [B, widths[-1]]``.

    Args:
        in_dim: input width.
        widths: output width of each layer.
        activation: ``relu``, ``gelu`` or ``silu``.
        dropout: dropout probability after each activation (0 = none).
        last_activation: apply the activation after the last layer too (False for logits).
    """

    def __init__(
        self,
        in_dim: int,
        widths: list[int],
        activation: str = "relu",
        dropout: float = 0.0,
        last_activation: bool = True,
    ) -> None:
        layers: list[nn.Module] = []
        dims = [in_dim, *widths]
        for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
            layers.append(nn.Linear(a, b))
            if i < len(widths) - 1 or last_activation:
                layers.append(ACTIVATIONS[activation]())
                if dropout > 0:
                    layers.append(nn.Dropout(dropout))
        super().__init__(*layers)
        self.in_dim = in_dim
        self.out_dim = dims[-1]
