"""Count host reads of tensors the training step made: the reads that would stall a GPU.

A read of a value computed on the device (``.item()``, ``float(t)``, ``bool(t)``, ``.tolist()``,
``.cpu()``, ``.numpy()``, formatting) makes the host wait for every kernel queued before it; so do
operations whose output shape depends on values (``nonzero``, boolean-mask indexing,
``masked_select``, ``unique``, ``repeat_interleave`` without an output size). On a CPU every read is
free, so this counts them by provenance instead:

- ``HostReadCounter.tag_model(model)`` marks the model's state (parameters, buffers, any tensor
  attribute of a submodule, e.g. fused embedding weights) as *made in the step*;
- a ``TorchDispatchMode`` marks the outputs of every operation that had a marked input (forward,
  backward and optimizer operations alike; the autograd engine's operations pass through it too);
- a ``TorchFunctionMode`` and the dispatch mode record each host read of a marked tensor, with the
  first caller outside torch. A ``Tensor.to`` a CPU device counts only when recscale's own code calls
  it: on a CPU run, libraries' moves to "the accelerator" name the CPU too.

Data the reader produced (ids, lengths, labels) and what is derived from it alone stay unmarked:
reading it is the data pipeline's business (TorchRec's input all-to-all needs split sizes on the
host), not a stall of the step.
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

TAG = "_recscale_made_in_step"
REPO = str(Path(__file__).resolve().parents[1])
"""The repository: ``Tensor.to(cpu)`` counts only when recscale calls it (libraries such as DeepSpeed
move tensors to their accelerator's device name, which is ``cpu`` in a CPU run)."""

HOST_READ_METHODS = frozenset(
    {"item", "tolist", "numpy", "cpu", "__float__", "__int__", "__bool__", "__index__", "__format__", "__repr__"}
)
"""Tensor methods that copy a value to the host."""

VALUE_SHAPED_OPS = frozenset(
    {
        "aten.nonzero.default",
        "aten.masked_select.default",
        "aten._unique2.default",
        "aten.unique_consecutive.default",
        "aten.unique_dim.default",
        "aten.repeat_interleave.Tensor",
        "aten._local_scalar_dense.default",
    }
)
"""Operations whose output shape (or value on the host) needs the input's values."""


def _caller() -> str:
    """``file:line`` of the first frame outside torch and this module."""
    frame = sys._getframe(2)
    while frame is not None:
        name = frame.f_code.co_filename
        if "/torch/" not in name and not name.endswith("host_reads.py"):  # this module, and read_sizes' own
            return f"{name}:{frame.f_lineno}"
        frame = frame.f_back  # type: ignore[assignment]
    return "?"


def _inside_read_sizes() -> bool:
    """Whether ``recscale.modules.host_reads.read_sizes`` is on the stack."""
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code.co_name == "read_sizes" and frame.f_code.co_filename.endswith("modules/host_reads.py"):
            return True
        frame = frame.f_back  # type: ignore[assignment]
    return False


def _marked(value: Any) -> bool:
    return isinstance(value, torch.Tensor) and bool(getattr(value, TAG, False))


class _Provenance(TorchDispatchMode):
    def __init__(self, counter: HostReadCounter) -> None:
        super().__init__()
        self.counter = counter

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        inputs = tree_leaves((args, kwargs))
        if any(_marked(t) for t in inputs):
            name = str(func)
            bool_index = name == "aten.index.Tensor" and any(
                isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in tree_leaves(args[1:])
            )
            if (name in VALUE_SHAPED_OPS or bool_index) and not self.counter.in_method_read:
                self.counter.record(name if not bool_index else "boolean-mask indexing")
            for t in tree_leaves(out):
                if isinstance(t, torch.Tensor):
                    setattr(t, TAG, True)
        return out


class _Reads(TorchFunctionMode):
    def __init__(self, counter: HostReadCounter) -> None:
        super().__init__()
        self.counter = counter

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        read = name in HOST_READ_METHODS or (name == "to" and _to_host(args, kwargs) and _from_recscale())
        if read and args and _marked(args[0]):
            self.counter.record(f"Tensor.{name}")
            self.counter.in_method_read = True
            try:
                return func(*args, **kwargs)
            finally:
                self.counter.in_method_read = False
        return func(*args, **kwargs)


def _from_recscale() -> bool:
    """Whether the caller is recscale's own code (not an installed library)."""
    where = _caller()
    return where.startswith(REPO) and "/site-packages/" not in where


def _to_host(args: Any, kwargs: Any) -> bool:
    """Whether a ``Tensor.to`` call targets the CPU."""
    targets = [*args[1:], kwargs.get("device")]
    return any(
        (isinstance(a, str) and a.startswith("cpu")) or (isinstance(a, torch.device) and a.type == "cpu")
        for a in targets
    )


class HostReadCounter:
    """Records host reads of marked tensors while ``start()``-ed (see the module docstring)."""

    def __init__(self) -> None:
        self.reads: Counter[str] = Counter()
        self.in_method_read = False
        self._modes: list[Any] = []

    @staticmethod
    def tag_model(model: nn.Module) -> int:
        """Mark every tensor the model holds; returns how many."""
        seen = 0
        for module in model.modules():
            tensors = [*module.parameters(recurse=False), *module.buffers(recurse=False)]
            tensors += [v for v in vars(module).values() if isinstance(v, torch.Tensor)]
            for t in tensors:
                setattr(t, TAG, True)
                seen += 1
        return seen

    def record(self, what: str) -> None:
        """One read, by what it was and where it came from; ``declared`` when it is a counted read.

        Declared reads are the ones an algorithm needs and makes through
        ``recscale.modules.host_reads.read_sizes`` (a dropless expert dispatch's split sizes).
        """
        prefix = "declared " if _inside_read_sizes() else ""
        self.reads[f"{prefix}{what} at {_caller()}"] += 1

    def undeclared(self) -> dict[str, int]:
        """The reads not made through ``read_sizes``."""
        return {k: v for k, v in self.reads.items() if not k.startswith("declared ")}

    def declared(self) -> int:
        """How many reads went through ``read_sizes``."""
        return sum(v for k, v in self.reads.items() if k.startswith("declared "))

    def start(self) -> None:
        """Begin counting (push the two modes)."""
        self._modes = [_Provenance(self), _Reads(self)]
        for mode in self._modes:
            mode.__enter__()

    def stop(self) -> None:
        """Stop counting (pop the modes)."""
        for mode in reversed(self._modes):
            mode.__exit__(None, None, None)
        self._modes = []

    def total(self) -> int:
        """Reads recorded so far."""
        return sum(self.reads.values())
