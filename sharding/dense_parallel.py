"""Owners of the dense part: plain PyTorch DDP, or a DeepSpeed engine (ZeRO 0/1/2, MoE experts).

Both backends expose the same small interface to the trainer (``DenseBackend``): the module the
model calls, ``backward``, ``step``, ``zero_grad``, the learning rate, and checkpoint state. The
embedding tables are not here: TorchRec updates them inside backward.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_optimizer_state_dict,
    set_optimizer_state_dict,
)
from torch.nn.parallel import DistributedDataParallel

from recscale.configs.schema import DenseOptimizerConfig
from recscale.modules.hilomoe import moe_blocks, role_param_groups
from recscale.sharding.dense_checkpoint import (
    DenseLayout,
    check_shapes,
    has_reference_state,
    load_reference,
    save_reference,
    warn_fresh,
)
from recscale.sharding.process_group import deepspeed_environment

log = logging.getLogger("recscale")


class DenseBackend(Protocol):
    """What the trainer needs from whoever owns the dense parameters."""

    module: nn.Module
    """What ``RecModel`` calls: DDP, a DeepSpeed engine, or the plain module."""
    inner: nn.Module
    """The unwrapped dense arch (for state dicts, FLOPs, diagnostics)."""

    def backward(self, loss: torch.Tensor) -> None:
        """Backpropagate ``loss`` (also runs TorchRec's fused sparse update)."""

    def step(self) -> None:
        """Clip, optimizer step, learning-rate schedule step."""

    def zero_grad(self) -> None:
        """Clear dense gradients."""

    def lr(self) -> float:
        """Current learning rate of the first parameter group."""

    def set_lr_scales(self, scales: list[float]) -> None:
        """Multiply each optimizer group's scheduled learning rate by ``scales[i]`` from now on."""

    def param_groups(self) -> list[dict[str, Any]]:
        """The optimizer's parameter groups (tagged with a ``role``)."""

    def refresh(self) -> None:
        """Re-wrap after ``requires_grad`` changed (a training stage froze or unfroze parameters)."""

    def save(self, directory: Path, backend_files: bool = True) -> None:
        """Write dense weights and optimizer state under ``directory`` (collective).

        Always the layout-free form (``dense_checkpoint.py``); ``backend_files``: also the backend's own
        files where they differ from it (DeepSpeed's), for tools that read those.
        """

    def load(self, directory: Path) -> None:
        """Read what ``save`` wrote (collective)."""


def lr_lambda(cfg: DenseOptimizerConfig, total_steps: int) -> Any:
    """Multiplier of the peak learning rate at a step: linear warm-up, then constant/cosine/linear."""
    warmup = cfg.warmup_steps

    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        if cfg.schedule == "constant" or total_steps <= warmup:
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        if cfg.schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        return 1.0 - progress

    return factor


def scale_scheduled_lrs(
    scheduler: torch.optim.lr_scheduler.LambdaLR, base_lrs: list[float], scales: list[float]
) -> None:
    """Make ``scheduler`` schedule ``base_lrs[i] * scales[i]`` and apply it to the current step now."""
    scheduler.base_lrs = [b * s for b, s in zip(base_lrs, scales)]
    step = max(scheduler.last_epoch, 0)
    for group, base, fn in zip(scheduler.optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas):
        group["lr"] = base * fn(step)


def build_dense_optimizer(params: Any, cfg: DenseOptimizerConfig) -> torch.optim.Optimizer:
    """The dense optimizer named by ``cfg`` over ``params`` (tensors or parameter groups)."""
    if cfg.name == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, weight_decay=cfg.weight_decay)  # type: ignore[arg-type]
    if cfg.name == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, weight_decay=cfg.weight_decay)  # type: ignore[arg-type]
    if cfg.name == "adagrad":
        return torch.optim.Adagrad(params, lr=cfg.lr, eps=cfg.eps, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


class TorchParamAccess:
    """Parameters and state of a plain torch optimizer, one state entry per parameter (``ParamAccess``).

    Args:
        optimizer: the torch optimizer.
        masters: the optimizer's own tensor for a module parameter where it steps a copy (DeepSpeed's
            fp32 masters of bf16 weights under ZeRO 0), by ``id`` of the module parameter.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, masters: dict[int, torch.Tensor] | None = None) -> None:
        self.optimizer = optimizer
        self.masters = masters or {}

    def _stepped(self, p: nn.Parameter) -> torch.Tensor:
        return self.masters.get(id(p), p)

    def value(self, p: nn.Parameter) -> torch.Tensor:
        """The (master) value, in fp32."""
        return self._stepped(p).detach().float()

    def set_value(self, p: nn.Parameter, value: torch.Tensor) -> None:
        """Copy into the parameter and its master copy."""
        p.data.copy_(value)
        self._stepped(p).data.copy_(value)

    def state(self, p: nn.Parameter) -> dict[str, torch.Tensor]:
        """The optimizer's tensors for ``p`` (``step`` as an fp32 scalar tensor)."""
        state = self.optimizer.state.get(self._stepped(p), {})
        return {k: v if torch.is_tensor(v) else torch.tensor(float(v)) for k, v in state.items()}

    def prepare_state(self) -> None:
        """Nothing: torch optimizers take a state dict as it is."""

    def set_state(self, p: nn.Parameter, state: dict[str, torch.Tensor]) -> None:
        """Replace ``p``'s state (none at all when ``state`` is empty, as for a never-stepped parameter)."""
        stepped = self._stepped(p)
        if state:
            self.optimizer.state[stepped] = {k: v.clone().to(p.device) for k, v in state.items()}
        else:
            self.optimizer.state.pop(stepped, None)


class DDPDense:
    """Dense part under PyTorch DDP (or plain, on one rank) with a torch optimizer.

    Args:
        dense: the dense arch, already on its device.
        cfg: dense optimizer settings.
        total_steps: steps of the run (for the learning-rate schedule).
    """

    def __init__(self, dense: nn.Module, cfg: DenseOptimizerConfig, total_steps: int) -> None:
        self.inner = dense
        self.cfg = cfg
        self.module: nn.Module = dense
        self.refresh()
        # one group per parameter role (all parameters, frozen ones too): stages rescale them
        self.optimizer = build_dense_optimizer(role_param_groups(dense), cfg)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_lambda(cfg, total_steps))
        self._base_lrs = [float(lr) for lr in self.scheduler.base_lrs]

    def refresh(self) -> None:
        """Wrap the dense arch in a new DDP (after a stage changed which parameters train).

        DDP fixes its parameter set when it is built: a kept DDP would silently skip reducing the
        gradients of parameters unfrozen later.
        """
        if dist.is_initialized() and dist.get_world_size() > 1:
            if any(p.requires_grad for p in self.inner.parameters()):
                self.module = DistributedDataParallel(self.inner)

    def param_groups(self) -> list[dict[str, Any]]:
        """The optimizer's groups (one per role)."""
        groups: list[dict[str, Any]] = self.optimizer.param_groups
        return groups

    def set_lr_scales(self, scales: list[float]) -> None:
        """Scale each group's scheduled learning rate (a stage's per-role rates)."""
        scale_scheduled_lrs(self.scheduler, self._base_lrs, scales)

    def backward(self, loss: torch.Tensor) -> None:
        """``loss.backward()``: DDP averages dense gradients over ranks."""
        loss.backward()

    def step(self) -> None:
        """Clip (optional), step, advance the schedule."""
        if self.cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.inner.parameters(), self.cfg.grad_clip)
        self.optimizer.step()
        self.scheduler.step()

    def zero_grad(self) -> None:
        """Clear gradients (set to None)."""
        self.optimizer.zero_grad(set_to_none=True)

    def lr(self) -> float:
        """Current learning rate."""
        return float(self.optimizer.param_groups[0]["lr"])

    def state_dict(self) -> dict[str, Any]:
        """Weights, optimizer and schedule state, as DCP saves and loads them.

        The optimizer's state comes from ``get_optimizer_state_dict``, which materialises Adam's
        moments even before the first step: DCP loads *into* the tensors it is given, so a fresh
        optimizer's empty state would silently load nothing.
        """
        return {
            "model": self.inner.state_dict(),
            "optim": get_optimizer_state_dict(self.inner, self.optimizer),
            "scheduler": self.scheduler.state_dict(),
        }

    def save(self, directory: Path, backend_files: bool = True) -> None:
        """Dense state with DCP (replicated tensors are written once): the layout-free form itself.

        DDP has no files of its own besides it, so ``backend_files`` changes nothing.
        """
        dcp.save(self.state_dict(), checkpoint_id=str(directory))
        world = dist.get_world_size() if dist.is_initialized() else 1
        DenseLayout(backend="ddp", world_size=world).save(directory)

    def load(self, directory: Path) -> None:
        """Read a dense checkpoint into the current layout (any world size), also one DeepSpeed wrote.

        Parameters without optimizer state in the checkpoint (frozen when it was written, e.g. experts
        in a training stage that trained only the backbone) keep fresh state.
        """
        if not has_reference_state(directory):
            raise ValueError(f"{directory}: no layout-free dense checkpoint (.metadata); {_NATIVE_ONLY}")
        check_shapes(directory, self.inner)
        layout = DenseLayout.read(directory)
        if layout is not None and layout.backend != "ddp":
            self._load_other_layout(directory, layout)
            return
        state = self.state_dict()
        saved = set(dcp.FileSystemReader(str(directory)).read_metadata().state_dict_metadata)
        optim_state = state["optim"]["state"]
        missing = [
            name
            for name, entries in optim_state.items()
            if any(f"optim.state.{name}.{k}" not in saved for k in entries)
        ]
        to_load = {
            **state,
            "optim": {**state["optim"], "state": {k: v for k, v in optim_state.items() if k not in missing}},
        }
        dcp.load(to_load, checkpoint_id=str(directory))
        self.inner.load_state_dict(to_load["model"])
        state["optim"]["state"].update(to_load["optim"]["state"])
        state["optim"]["param_groups"] = to_load["optim"]["param_groups"]
        # parameters without state (``missing``, or frozen and never stepped in this process) are allowed
        set_optimizer_state_dict(self.inner, self.optimizer, state["optim"], options=StateDictOptions(strict=False))
        # truly fresh: no state at all, as in the run that wrote the checkpoint (the state materialised
        # above for them has taken a zero step, which would shift Adam's bias correction by one)
        params = dict(self.inner.named_parameters())
        for name in missing:
            self.optimizer.state.pop(params[name], None)
        self.scheduler.load_state_dict(to_load["scheduler"])
        if missing:
            log.warning(
                "no optimizer state in %s for %d parameters (e.g. %s): they start fresh",
                directory,
                len(missing),
                missing[0],
            )

    def _load_other_layout(self, directory: Path, layout: DenseLayout) -> None:
        """A DeepSpeed checkpoint (experts possibly spread over ranks): its layout-free form."""
        scheduler: dict[str, Any] = {"last_epoch": 0}
        fresh = load_reference(directory, self.inner, TorchParamAccess(self.optimizer), scheduler)
        restart_schedule(self.scheduler, self._base_lrs, int(scheduler["last_epoch"]))
        warn_fresh(directory, fresh, f"written by {layout.backend} at world size {layout.world_size}")


DEEPSPEED_TAG = "dense"
"""DeepSpeed's own files of a dense checkpoint: ``<checkpoint>/dense/dense/``."""

_NATIVE_ONLY = (
    "it loads only under sharding.dense: deepspeed at the world size, ep_size and ZeRO stage it was written with"
)


def restart_schedule(scheduler: torch.optim.lr_scheduler.LambdaLR, base_lrs: list[float], last_epoch: int) -> None:
    """Put ``scheduler`` at step ``last_epoch`` with the unscaled ``base_lrs`` (the loop re-applies stage scales).

    Used when the checkpoint's optimizer groups differ from this run's (another backend or ``ep_size``):
    only the schedule's position carries over.
    """
    scheduler.last_epoch = last_epoch
    scale_scheduled_lrs(scheduler, base_lrs, [1.0] * len(base_lrs))
    scheduler._last_lr = [g["lr"] for g in scheduler.optimizer.param_groups]  # type: ignore[attr-defined]


class ZeroParamAccess:
    """Parameters and state of a DeepSpeed optimizer with fp32 master partitions (ZeRO 1/2, bf16) (``ParamAccess``).

    Values and state go through DeepSpeed's fragment API (``safe_get_full_*``: an all-reduce over the
    parameter's data-parallel group, so every rank of it must ask for the same parameters in the same
    order; ``safe_set_full_*``: local). A partition's optimizer state is one flat tensor per key and one
    ``step`` per optimizer group.
    """

    def __init__(self, optimizer: Any) -> None:
        self.optimizer = optimizer
        lp_groups = optimizer.bit16_groups if hasattr(optimizer, "bit16_groups") else optimizer.bf16_groups
        self._group = {id(p): i for i, group in enumerate(lp_groups) for p in group}
        self._linked = False

    def _flat_state(self, p: nn.Parameter) -> dict[str, Any]:
        flat = self.optimizer.optimizer.param_groups[self._group[id(p)]]["params"][0]
        state: dict[str, Any] = self.optimizer.optimizer.state.get(flat, {})
        return state

    def _link(self) -> None:
        """Point every parameter's fragment at the optimizer's state.

        DeepSpeed links once, after its first step of the *first* group (it steps the MoE groups one by
        one), which leaves the other groups' fragments without state keys: relink when all have state.
        """
        flats = [g["params"][0] for g in self.optimizer.optimizer.param_groups]
        if all(self.optimizer.optimizer.state.get(f) for f in flats):
            self.optimizer._hp_optimizer_states_linked = False
            self.optimizer._lazy_init_hp_params_optimizer_state()
            self._linked = True

    def value(self, p: nn.Parameter) -> torch.Tensor:
        """The fp32 master value (collective)."""
        from deepspeed.utils import safe_get_full_fp32_param

        value: torch.Tensor = safe_get_full_fp32_param(p)
        return value

    def set_value(self, p: nn.Parameter, value: torch.Tensor) -> None:
        """The module's copy and this rank's fp32 master fragment."""
        from deepspeed.utils import safe_set_full_fp32_param

        p.data.copy_(value)
        safe_set_full_fp32_param(p, value.to(p.device, torch.float32))

    def state(self, p: nn.Parameter) -> dict[str, torch.Tensor]:
        """Full elementwise state (collective) and the group's step; empty before the first step."""
        from deepspeed.utils import safe_get_full_optimizer_state

        flat_state = self._flat_state(p)
        if not flat_state:
            return {}
        if not self._linked:
            self._link()
        flat = self.optimizer.optimizer.param_groups[self._group[id(p)]]["params"][0]
        out = {
            k: safe_get_full_optimizer_state(p, k)
            for k, v in sorted(flat_state.items())
            if torch.is_tensor(v) and v.shape == flat.shape
        }
        if "step" in flat_state:
            out["step"] = torch.tensor(float(flat_state["step"]))
        return out

    def prepare_state(self) -> None:
        """Create the state of never-stepped partitions with one zero-gradient step at learning rate 0."""
        inner = self.optimizer.optimizer
        empty = [g["params"][0] for g in inner.param_groups if not inner.state.get(g["params"][0])]
        if empty:
            lrs = [g["lr"] for g in inner.param_groups]
            for g in inner.param_groups:
                g["lr"] = 0.0
            for flat in empty:
                flat.grad = torch.zeros_like(flat)
            inner.step()
            for flat in empty:
                flat.grad = None
                step = inner.state[flat].get("step")
                if torch.is_tensor(step):  # that step does not count: a never-stepped group stays at 0
                    step.zero_()
                elif step is not None:
                    inner.state[flat]["step"] = 0
            for g, lr in zip(inner.param_groups, lrs):
                g["lr"] = lr
        self._link()

    def set_state(self, p: nn.Parameter, state: dict[str, torch.Tensor]) -> None:
        """This rank's fragment of each elementwise state (zeros when ``state`` is empty) and the step."""
        from deepspeed.utils import safe_set_full_optimizer_state

        flat_state = self._flat_state(p)
        flat = self.optimizer.optimizer.param_groups[self._group[id(p)]]["params"][0]
        for key, value in flat_state.items():
            if torch.is_tensor(value) and value.shape == flat.shape:
                full = state.get(key)
                full = torch.zeros(p.shape) if full is None else full
                safe_set_full_optimizer_state(p, full.to(flat.device, torch.float32), key)
        if "step" in state and "step" in flat_state:
            step = state["step"]
            if torch.is_tensor(flat_state["step"]):
                flat_state["step"].fill_(float(step))
            else:
                flat_state["step"] = int(step)


class DeepSpeedDense:
    """Dense part under a DeepSpeed engine: ZeRO 0/1/2 and expert-parallel MoE layers.

    Expert parameters (tagged by DeepSpeed) get their own optimizer groups, as DeepSpeed requires
    under ZeRO 1/2. Never fp16: loss scaling would reach TorchRec's fused sparse update unscaled
    (DESIGN.md §3).

    Args:
        dense: the dense arch (its MoE layers already swapped to DeepSpeed's).
        cfg: dense optimizer settings.
        total_steps: steps of the run.
        zero_stage: 0, 1 or 2.
        micro_batch_per_rank: examples per rank per step.
        bf16: keep the dense weights in bf16 (DeepSpeed keeps fp32 master weights).
    """

    def __init__(
        self,
        dense: nn.Module,
        cfg: DenseOptimizerConfig,
        total_steps: int,
        zero_stage: int,
        micro_batch_per_rank: int,
        bf16: bool,
    ) -> None:
        deepspeed_environment()
        import deepspeed
        from deepspeed.moe.utils import split_params_into_different_moe_groups_for_optimizer

        self.inner = dense
        self.cfg = cfg
        # one group per parameter role (stages rescale them), expert parameters split into their own
        # groups as DeepSpeed requires under ZeRO 1/2 (the split keeps the ``role`` tag)
        groups = split_params_into_different_moe_groups_for_optimizer(role_param_groups(dense))
        # the split can leave a role's group empty (all its parameters were experts); ZeRO drops empty
        # groups, which would shift every later group against the scheduler's per-group rates
        groups = [g for g in groups if g["params"]]
        optimizer = build_dense_optimizer(groups, cfg)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg, total_steps))
        bucket = int(min(5e8, max(1 << 20, sum(p.numel() for p in dense.parameters()))))
        config: dict[str, Any] = {
            "train_micro_batch_size_per_gpu": micro_batch_per_rank,
            "gradient_accumulation_steps": 1,  # >1 would desynchronise the fused sparse update
            "zero_optimization": {
                "stage": zero_stage,
                # DeepSpeed's default buckets hold 5e8 elements (2 GB of fp32, allocated and
                # page-faulted per step on CPU, ~1 s); a bucket never needs more than the model
                "reduce_bucket_size": bucket,
                "allgather_bucket_size": bucket,
            },
            "zero_allow_untested_optimizer": True,
            "steps_per_print": 1 << 62,
            "wall_clock_breakdown": False,
            "bf16": {"enabled": bf16},
        }
        if cfg.grad_clip > 0:
            config["gradient_clipping"] = cfg.grad_clip
        self._client_scheduler = scheduler
        self._base_lrs = [float(lr) for lr in scheduler.base_lrs]
        if dist.is_initialized():
            deepspeed.init_distributed(dist_backend=dist.get_backend())
        self.engine, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=dense, optimizer=optimizer, lr_scheduler=scheduler, config=config
        )
        self.module: nn.Module = self.engine

    def param_groups(self) -> list[dict[str, Any]]:
        """The client optimizer's groups (role-tagged; DeepSpeed's optimizer wraps them)."""
        groups: list[dict[str, Any]] = self._client_scheduler.optimizer.param_groups
        return groups

    def set_lr_scales(self, scales: list[float]) -> None:
        """Scale each group's scheduled learning rate (a stage's per-role rates)."""
        scale_scheduled_lrs(self._client_scheduler, self._base_lrs, scales)

    def refresh(self) -> None:
        """The engine was built with every parameter trainable and keeps them all; frozen ones get lr 0.

        Under ZeRO 1/2 a frozen group's Adam state still advances on the zero gradients DeepSpeed
        fills in (its weights do not move: lr 0); see docs/models/hilomoe.md.
        """

    def backward(self, loss: torch.Tensor) -> None:
        """The engine's backward (ZeRO gradient partitioning, expert all-reduce groups)."""
        self.engine.backward(loss)

    def step(self) -> None:
        """The engine's step: clip, optimizer, schedule, zero grads."""
        self.engine.step()

    def zero_grad(self) -> None:
        """The engine clears gradients itself in ``step``."""

    def lr(self) -> float:
        """Current learning rate."""
        rates: list[float] = self.engine.get_lr()
        return float(rates[0])

    def layout(self) -> DenseLayout:
        """This engine's layout: world size, ``ep_size``, ZeRO stage and HiLoMoE dispatch."""
        blocks = [b for _, b in moe_blocks(self.inner) if hasattr(b, "ep_size")]
        return DenseLayout(
            backend="deepspeed",
            world_size=dist.get_world_size() if dist.is_initialized() else 1,
            ep_size=int(getattr(blocks[0], "ep_size", 1)) if blocks else 1,
            zero_stage=int(self.engine.zero_optimization_stage()),
            dispatch=str(getattr(blocks[0], "dispatch", "")) if blocks else "",
        )

    def _access(self) -> TorchParamAccess | ZeroParamAccess:
        opt = self.engine.optimizer
        if hasattr(opt, "bit16_groups") or hasattr(opt, "bf16_groups"):
            return ZeroParamAccess(opt)
        masters = {}
        if hasattr(opt, "fp16_groups") and hasattr(opt, "fp32_groups"):  # bf16 at ZeRO 0: fp32 copies stepped
            for low, high in zip(opt.fp16_groups, opt.fp32_groups):
                masters.update({id(p): master for p, master in zip(low, high)})
        return TorchParamAccess(self._client_scheduler.optimizer, masters)

    def save(self, directory: Path, backend_files: bool = True) -> None:
        """The layout-free form and, with ``backend_files``, DeepSpeed's own checkpoint beside it (collective).

        DeepSpeed's files (``dense/dense/``: per-expert weights, ZeRO optimizer shards, ``zero_to_fp32.py``)
        reload only at this layout; the DCP form (``sharding/dense_checkpoint.py``) at any, and at this
        layout as exactly (``checkpoint.deepspeed_files``, docs/training.md). Without DeepSpeed's files
        the dense part of a checkpoint is about half the size.
        """
        if backend_files:
            self.engine.save_checkpoint(str(directory), tag=DEEPSPEED_TAG, save_latest=False)
        save_reference(directory, self.inner, self._access(), self._client_scheduler.state_dict(), self.layout())

    def load(self, directory: Path) -> None:
        """Read a dense checkpoint into this engine.

        DeepSpeed's own files when this run's layout is the writer's and they were written (bit-exact
        resume), else the layout-free form: another world size, ``ep_size`` or ZeRO stage, a DDP
        checkpoint, or one written with ``checkpoint.deepspeed_files: false`` (bit-exact at its layout).
        """
        if has_reference_state(directory):
            check_shapes(directory, self.inner)
        saved, mine = DenseLayout.read(directory), self.layout()
        native = (Path(directory) / DEEPSPEED_TAG).is_dir()
        if (saved == mine and native) or (saved is None and not has_reference_state(directory)):
            path, _ = self.engine.load_checkpoint(str(directory), tag=DEEPSPEED_TAG, load_lr_scheduler_states=True)
            if path is None:
                raise FileNotFoundError(f"no DeepSpeed dense checkpoint under {directory}")
            return
        if not has_reference_state(directory):
            raise ValueError(f"{directory}: a DeepSpeed dense checkpoint without the layout-free form; {_NATIVE_ONLY}")
        scheduler: dict[str, Any] = {"last_epoch": 0}
        fresh = load_reference(directory, self.inner, self._access(), scheduler)
        step = int(scheduler["last_epoch"])
        restart_schedule(self._client_scheduler, self._base_lrs, step)
        self.engine.global_steps = step
        self.engine.global_samples = step * self.engine.train_batch_size()
        was = f"{saved.backend}, world size {saved.world_size}, ep_size {saved.ep_size}" if saved else "ddp"
        how = "read from its layout-free form" if saved == mine else "mapped onto this run's layout"
        log.info("dense checkpoint %s (%s) %s (%s)", directory, was, how, mine)
        warn_fresh(directory, fresh, f"written by {was}")
