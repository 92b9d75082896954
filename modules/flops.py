"""Analytic FLOPs per example, the way ``torch.utils.flop_counter.FlopCounterMode`` counts them.

Only matrix products count (``mm``, ``addmm``, ``bmm``, attention): 2 FLOPs per multiply-add.
Bias adds, activations, norms and embedding lookups count 0 — embedding work is memory traffic
and is reported as bytes (docs/measuring.md). Backward is counted exactly rather than as "2 x forward":
a matmul whose input needs no gradient (the first layer over raw dense features) only computes
its weight gradient.

Sequence models count at real lengths (``Lengths``): the FLOPs of a batch are the sum over its
examples of what each example costs run alone with its sequences cut to their real length, so
padding (wasted work) is not model FLOPs (docs/measuring.md §"Sequence lengths").
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
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


@runtime_checkable
class CountsFlops(Protocol):
    """A dense arch that counts its own FLOPs: a per-example breakdown by part (every registry model).

    ``recscale flops``, MFU and the profiler read it; ``flop_counter`` gives a module this type.
    """

    def flops(self) -> dict[str, FlopCount]:
        """Per-example FLOPs by part, forward and exact backward."""
        ...


@runtime_checkable
class CountsSequenceFlops(Protocol):
    """A sequence model's count: per example at given lengths, or summed over a batch's real ``Lengths``.

    A sequence model is also ``CountsFlops`` (every argument has a default: ``max_length`` everywhere).
    """

    def flops(
        self, seq_lengths: Mapping[str, int | Lengths] | None = None, executed: bool = False
    ) -> dict[str, FlopCount]:
        """FLOPs by part; ``seq_lengths`` by event type / domain, ``executed``: what the kernels run."""
        ...


def flop_counter(module: object) -> CountsFlops:
    """``module`` as a ``CountsFlops``; a TypeError naming its class when it has no ``flops()``."""
    if not isinstance(module, CountsFlops):
        raise TypeError(f"{type(module).__name__} has no flops() breakdown (the CountsFlops protocol)")
    return module


def sequence_flop_counter(module: object) -> CountsSequenceFlops:
    """``module`` as a ``CountsSequenceFlops``: its ``flops`` must take ``seq_lengths`` and ``executed``."""
    if not isinstance(module, CountsSequenceFlops):
        raise TypeError(f"{type(module).__name__} has no flops() breakdown (the CountsSequenceFlops protocol)")
    params = inspect.signature(module.flops).parameters
    if not {"seq_lengths", "executed"} <= set(params):
        raise TypeError(
            f"{type(module).__name__}.flops() takes no seq_lengths / executed: it counts no sequence lengths "
            "(CountsSequenceFlops)"
        )
    return module


def linear_module(layer: nn.Module, input_grad: bool = True, tokens: int = 1) -> FlopCount:
    """``linear`` with the shapes and the weight's ``requires_grad`` read off the layer itself.

    A ``LinearLike`` stand-in (a HiLoMoE block in place of the Linear) counts itself.
    """
    if isinstance(layer, nn.Linear):
        return linear(layer.in_features, layer.out_features, input_grad, tokens, layer.weight.requires_grad)
    if isinstance(layer, LinearLike):
        return layer.linear_flops(input_grad).scaled(tokens)
    raise TypeError(f"linear_module: {type(layer).__name__} is neither an nn.Linear nor LinearLike")


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


class Lengths:
    """Real lengths of one event sequence over the examples of a batch, and the sums FLOPs need.

    Every length-aware count is linear in a few sums over the examples, so a batch costs O(1)
    tensor reductions whatever its size: ``examples`` (per-example work, e.g. seed projections),
    ``tokens`` = Σ L (per-event linear maps), ``band_pairs`` (self-attention pairs) and ``dot``
    (cross-attention pairs, Σ L_i * M_i). An int ``L`` stands for one example of length L.

    Args:
        lengths_B: real length of each example (after truncation to ``max_length``), ``[B]``.
    """

    def __init__(self, lengths_B: torch.Tensor | Sequence[int]) -> None:
        self.lengths_B = torch.as_tensor(lengths_B, dtype=torch.int64, device="cpu").flatten()
        if self.lengths_B.numel() and int(self.lengths_B.min()) < 0:
            raise ValueError(f"sequence lengths must be >= 0, got {self.lengths_B.tolist()}")
        self.examples = int(self.lengths_B.numel())
        self.tokens = int(self.lengths_B.sum())
        self._pairs: dict[tuple[int, bool], int] = {}

    @classmethod
    def of(cls, length: int | Lengths) -> Lengths:
        """``length`` itself, or one example of that length."""
        return length if isinstance(length, Lengths) else cls([length])

    @classmethod
    def full(cls, length: int, examples: int) -> Lengths:
        """``examples`` examples of the same length (e.g. all at ``max_length``)."""
        return cls(torch.full((examples,), length, dtype=torch.int64))

    def band_pairs(self, window: int = 0, causal: bool = False) -> int:
        """Σ over examples of its pairs (i, j) of tokens with ``|i - j| <= window`` (0: all), ``j <= i`` if causal.

        Closed form per example with m = min(window, L - 1): ``L (2m + 1) - m (m + 1)`` pairs, or
        ``L (m + 1) - m (m + 1) / 2`` when causal (``MaskSpec.num_pairs`` at q = k = L, by loop).
        """
        key = (max(window, 0), causal)
        if key not in self._pairs:
            n = self.lengths_B
            m = (n - 1).clamp(min=0) if window <= 0 else (n - 1).clamp(min=0, max=window)
            per_B = n * (m + 1) - m * (m + 1) // 2 if causal else n * (2 * m + 1) - m * (m + 1)
            self._pairs[key] = int(per_B.sum())
        return self._pairs[key]

    def dot(self, other: Lengths) -> int:
        """Σ over examples of ``L_i * M_i``: the pairs of cross-attention from these queries to ``other``'s keys."""
        if other.examples != self.examples:
            raise ValueError(f"lengths of {self.examples} and {other.examples} examples do not pair up")
        return int((self.lengths_B * other.lengths_B).sum())

    def sum_of(self, per_example: Callable[[int], int]) -> int:
        """Σ over examples of ``per_example(L)``, evaluated once per distinct length (for rare, irregular counts)."""
        values, counts = torch.unique(self.lengths_B, return_counts=True)
        return sum(per_example(int(v)) * int(c) for v, c in zip(values, counts))
