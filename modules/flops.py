"""Analytic FLOPs per example, the way ``torch.utils.flop_counter.FlopCounterMode`` counts them.

Only matrix products count (``mm``, ``addmm``, ``bmm``, attention): 2 FLOPs per multiply-add.
Bias adds, activations, norms and embedding lookups count 0 — embedding work is memory traffic
and is reported as bytes (DESIGN.md §5). Backward is counted exactly rather than as "2 x forward":
a matmul whose input needs no gradient (the first layer over raw dense features) only computes
its weight gradient.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from torch import nn


@dataclass(frozen=True)
class FlopCount:
    """FLOPs of one example through one module: forward and backward."""

    forward: int = 0
    backward: int = 0

    @property
    def train(self) -> int:
        """Forward + backward: what one training step spends per example."""
        return self.forward + self.backward

    def __add__(self, other: FlopCount) -> FlopCount:
        return FlopCount(self.forward + other.forward, self.backward + other.backward)

    def scaled(self, factor: float) -> FlopCount:
        """This count times ``factor`` (e.g. tokens per example, active fraction of experts)."""
        return FlopCount(round(self.forward * factor), round(self.backward * factor))


def matmul(m: int, k: int, n: int, grad_a: bool = True, grad_b: bool = True) -> FlopCount:
    """``[m, k] @ [k, n]`` per example; backward computes the gradient of each operand that needs one."""
    one = 2 * m * k * n
    return FlopCount(one, one * (int(grad_a) + int(grad_b)))


def linear(in_dim: int, out_dim: int, input_grad: bool = True, tokens: int = 1, weight_grad: bool = True) -> FlopCount:
    """A Linear layer applied to ``tokens`` vectors of one example (a frozen weight has no gradient)."""
    return matmul(tokens, in_dim, out_dim, grad_a=input_grad, grad_b=weight_grad)


@runtime_checkable
class LinearLike(Protocol):
    """A layer that stands in for an ``nn.Linear`` in an MLP (e.g. a HiLoMoE layer) and counts itself."""

    in_features: int
    out_features: int

    def linear_flops(self, input_grad: bool = True) -> FlopCount:
        """Per-example FLOPs of one input vector, forward and exact backward."""
        ...


def linear_module(layer: nn.Linear, input_grad: bool = True, tokens: int = 1) -> FlopCount:
    """``linear`` with the shapes and the weight's ``requires_grad`` read off the layer itself."""
    return linear(layer.in_features, layer.out_features, input_grad, tokens, layer.weight.requires_grad)


def linears(layers: Iterable[nn.Module], input_grad: bool = True, tokens: int = 1) -> FlopCount:
    """The Linear (or ``LinearLike``) layers of a stack in order; only the first may skip its input gradient."""
    total = FlopCount()
    first = True
    for layer in layers:
        if isinstance(layer, nn.Linear):
            total = total + linear_module(layer, input_grad or not first, tokens)
            first = False
        elif isinstance(layer, LinearLike):
            total = total + layer.linear_flops(input_grad or not first).scaled(tokens)
            first = False
    return total


def total(breakdown: dict[str, FlopCount]) -> FlopCount:
    """Sum of a per-module breakdown."""
    out = FlopCount()
    for count in breakdown.values():
        out = out + count
    return out
