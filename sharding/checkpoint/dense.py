"""The dense part of a checkpoint: weights and optimizer state in the reference layout, flattened.

Entries (``dense.`` + ...)::

    model.<name>               every weight of the single-device reference model, fp32, flattened to 1-D
                               (a HiLoMoE block's experts as the whole stacks ``experts_v [L, K, I]`` /
                               ``experts_u [L, K, O]``); persistent buffers in their own dtype
    optim.<name>.<key>         the elementwise optimizer state of that weight, same layout
                               (Adam's ``exp_avg`` / ``exp_avg_sq``, Adagrad's ``sum``, SGD's momentum)
    optim.<name>.step          its step count (0-d)

and JSON: ``layout`` (who wrote it: backend, world size, ``ep_size``, ZeRO stage, dispatch),
``schedule.last_epoch`` (the learning-rate schedule's step) and ``shapes`` (each reference tensor's
shape). Each rank writes the ranges it owns, where they lie: under ZeRO 1/2 its partition's fragment
of each parameter, under EP its experts' rows, under DDP / ZeRO 0 whole parameters (replicated, so
DCP has one rank write each). Loading asks each range back from the ranges saved, so any layout
(world size, ``ep_size``, ZeRO stage, DDP / DeepSpeed) loads any other, and the writer's own layout
loads bit-exactly. Nothing is gathered: a rank holds at no point more than its own state, plus one
fp32 copy of the weights it keeps anyway (ZeRO 1/2 keep full weights on every rank).

Tensor legend: L MoE layers, K experts per layer, I input width, O output width.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

import torch
import torch.distributed as dist
from torch import nn

from recscale.sharding.checkpoint.chunks import Chunks
from recscale.sharding.checkpoint.experts import Placement, placements
from recscale.sharding.checkpoint.param_access import ParamAccess
from recscale.sharding.checkpoint.protocol import Saved

log = logging.getLogger("recscale")


@dataclass(frozen=True)
class DenseLayout:
    """How a dense checkpoint's writer held its parameters."""

    backend: str
    """``ddp`` (reference layout, replicated) or ``deepspeed``."""
    world_size: int
    ep_size: int = 1
    zero_stage: int = 0
    dispatch: str = ""
    """HiLoMoE dispatch under DeepSpeed (``one_round`` / ``per_layer``); empty without MoE blocks."""


@dataclass
class _Pending:
    """One parameter's load: the value read, and where its state went."""

    param: nn.Parameter
    value: torch.Tensor
    reference: str
    state: bool
    """Its optimizer state was read (else it starts fresh, or has none to keep)."""
    fresh: bool


class DenseState:
    """A dense backend's part of a checkpoint (``Checkpointable``).

    Args:
        module: the dense arch (its parameter names, expert slots).
        access: the backend's parameters and optimizer state.
        layout: the backend's layout (recorded; a load at another layout says it mapped).
        schedule_step: the learning-rate schedule's step now.
        restart_schedule: put the schedule at a step (the loop re-applies stage and plateau scales).
    """

    per_rank: ClassVar[bool] = False

    def __init__(
        self,
        module: nn.Module,
        access: ParamAccess,
        layout: DenseLayout,
        schedule_step: Callable[[], int],
        restart_schedule: Callable[[int], None],
    ) -> None:
        self.module = module
        self.access = access
        self.layout = layout
        self.schedule_step = schedule_step
        self.restart_schedule = restart_schedule
        self.weights_only = False
        """Load only the weights (fine-tuning): optimizer state and schedule stay as they are."""
        self._pending: list[_Pending] = []
        self._buffers: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._saved: Saved | None = None
        self._optim_targets: dict[str, dict[str, Any]] = {}

    def _params(self) -> list[tuple[str, nn.Parameter, Placement]]:
        where = placements(self.module)
        return [(name, p, where[name]) for name, p in self.module.named_parameters()]

    def _buffer_entries(self) -> list[tuple[str, torch.Tensor]]:
        params = dict(self.module.named_parameters())
        return [(n, t) for n, t in self.module.state_dict(keep_vars=True).items() if n not in params]

    # ------------------------------------------------------------------------------------------ save

    def state_dict(self) -> dict[str, Any]:
        """This rank's ranges of every weight and its optimizer state, plus layout, schedule and shapes."""
        model: dict[str, Chunks] = {}
        optim: dict[str, dict[str, Any]] = {}
        shapes: dict[str, list[int]] = {}
        for _, p, place in self._params():
            shapes[place.reference] = list(place.shape)
            held = self.access.held(p)
            if held is None:
                continue
            size = (math.prod(place.shape),)
            offset = (place.start + held.start,)
            model.setdefault(place.reference, Chunks(size)).add(offset, held.value)
            for key, tensor in held.state.items():
                optim.setdefault(place.reference, {}).setdefault(key, Chunks(size)).add(offset, tensor)
            if held.state and held.step is not None:
                optim[place.reference]["step"] = held.step
        first = not dist.is_initialized() or dist.get_rank() == 0
        for name, buffer in self._buffer_entries():  # rank 0's, as DDP broadcasts at the next forward
            shapes[name] = list(buffer.shape)
            model[name] = Chunks.flat(buffer.numel(), 0, buffer.detach()) if first else Chunks((buffer.numel(),))
        return {
            "model": model,
            "optim": optim,
            "layout": asdict(self.layout),
            "schedule": {"last_epoch": int(self.schedule_step())},
            "shapes": shapes,
        }

    # ------------------------------------------------------------------------------------------ load

    def _check_shapes(self, saved: Saved, needed: dict[str, tuple[int, ...]]) -> None:
        """Every reference tensor this model has, with its shape, and no other (one line per problem).

        Under expert parallelism a rank needs only its experts' reference tensors, so the ranks'
        needs (and any problem one rank found) are gathered before looking for tensors the checkpoint
        has and the model lacks; every rank then raises the same error.
        """
        shapes = {k: tuple(v) for k, v in saved.json.get("shapes", {}).items()}
        where = f"{saved.path}: the dense checkpoint"
        problem = ""
        missing = sorted(set(needed) - set(shapes))
        if missing:
            problem = f"{where} lacks {', '.join(missing[:4])} (a different model config?)"
        for name, shape in needed.items():  # in the model's order: its first differing tensor
            if not problem and shapes[name] != shape:
                problem = (
                    f"{saved.path}: dense parameter {name}: the checkpoint has shape {list(shapes[name])}, this model "
                    f"{list(shape)} (model.hilomoe num_experts / num_layers or a layer width changed?)"
                )
        names, problems = set(needed), [problem]
        if dist.is_initialized() and dist.get_world_size(saved.group) > 1:
            everyone: list[tuple[str, set[str]] | None] = [None] * dist.get_world_size(saved.group)
            dist.all_gather_object(everyone, (problem, names), group=saved.group)
            problems = [p for p, _ in filter(None, everyone)]
            names = set().union(*(n for _, n in filter(None, everyone)))
        problems = [p for p in problems if p]
        if problems:
            raise ValueError(problems[0])
        extra = sorted(set(shapes) - names)
        if extra:
            raise ValueError(
                f"{where} has parameters this model lacks: {', '.join(extra[:4])} (a different model config?)"
            )

    def load_targets(self, saved: Saved) -> dict[str, Any]:
        """Where each range this rank needs is read to: whole weights (fp32), its own optimizer state (views)."""
        params = self._params()
        needed = {place.reference: place.shape for _, _, place in params}
        needed.update({name: tuple(b.shape) for name, b in self._buffer_entries()})
        self._check_shapes(saved, needed)
        if not self.weights_only:
            self.access.prepare_state()
        model: dict[str, Chunks] = {}
        optim: dict[str, dict[str, Any]] = {}
        self._pending, self._saved = [], saved
        for _, p, place in params:
            size = (math.prod(place.shape),)
            value = torch.empty(p.numel(), dtype=torch.float32)
            model.setdefault(place.reference, Chunks(size)).add((place.start,), value)
            held = None if self.weights_only else self.access.held(p)
            keys = saved.children(f"optim.{place.reference}")
            state = held is not None and bool(held.state) and set(held.state) <= keys
            if held is not None and state:
                targets = optim.setdefault(place.reference, {})
                for key, tensor in held.state.items():
                    targets.setdefault(key, Chunks(size)).add((place.start + held.start,), tensor)
                if "step" in keys and "step" not in targets:
                    targets["step"] = torch.zeros(())
            fresh = held is not None and bool(held.state) and not state
            self._pending.append(_Pending(p, value, place.reference, state, fresh))
        self._buffers = []
        for name, buffer in self._buffer_entries():
            target = torch.empty(buffer.numel(), dtype=buffer.dtype)
            model[name] = Chunks.flat(buffer.numel(), 0, target)
            self._buffers.append((buffer, target))
        self._optim_targets = optim
        return {"model": model, "optim": optim}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Set weights, step counts and the schedule; state not in the checkpoint starts fresh (a warning names it)."""
        assert self._saved is not None, "load_targets comes first"
        fresh: dict[str, None] = {}
        with torch.no_grad():
            for item in self._pending:
                self.access.set_value(item.param, item.value)
                step = self._optim_targets.get(item.reference, {}).get("step")
                if item.state and step is not None:
                    self.access.set_step(item.param, float(step))
                if item.fresh:
                    self.access.set_fresh(item.param)
                    fresh[item.reference] = None
            for buffer, value in self._buffers:
                buffer.copy_(value.view(buffer.shape))
        if self.weights_only:
            self._pending, self._buffers, self._saved, self._optim_targets = [], [], None, {}
            return
        self.restart_schedule(int(state["schedule"]["last_epoch"]))
        saved_layout = DenseLayout(**state["layout"])
        if saved_layout != self.layout:
            log.info(
                "dense checkpoint %s (%s) mapped onto this run's layout (%s)",
                self._saved.path,
                saved_layout,
                self.layout,
            )
        if fresh:
            names = list(fresh)
            shown = ", ".join(names[:6]) + (f" and {len(names) - 6} more" if len(names) > 6 else "")
            log.warning(
                "no optimizer state in %s for %d dense parameters (written by %s, world size %d, ep_size %d): "
                "%s start fresh",
                self._saved.path,
                len(names),
                saved_layout.backend,
                saved_layout.world_size,
                saved_layout.ep_size,
                shown,
            )
        self._pending, self._buffers, self._saved, self._optim_targets = [], [], None, {}


__all__ = ["DenseLayout", "DenseState"]
