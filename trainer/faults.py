"""Surviving faults: restarts resume, a hung collective fails with the missing rank's name, tests inject faults.

Elastic restarts. torchrun restarts every worker with the same command line after one dies
(``launch.max_restarts``); a restarted worker sees ``TORCHELASTIC_RESTART_COUNT > 0`` (a requeued
Slurm job ``SLURM_RESTART_COUNT > 0``) and resumes from the newest complete checkpoint. The decision
is collective (:func:`any_rank`): torchrun does not count a restart caused by another node leaving
the rendezvous, so a healthy node's workers can see a restart count of 0 while the failed node's see 1.

metrics.jsonl after a resume. The abandoned attempt wrote records past the checkpoint it resumes
from; :func:`rewind_metrics` moves those to ``metrics.dropped.jsonl`` and writes a ``restart``
record, so ``metrics.jsonl`` holds one record per step of the trajectory that finished, equal to an
uninterrupted run's (plus ``restart`` records saying where it resumed).

Hung collectives. :func:`arm` sets the default process group's timeout to
``trainer.collective_timeout_s`` and every rank reports each finished step to the job's c10d store.
When a collective fails (gloo's timeout, or a peer's closed connection), :func:`explain` reads the
board and names the ranks that never arrived: a timed-out rank marks itself as waiting, and the
ranks that are not waiting after a short grace period are the ones stuck elsewhere (or dead). This
works wherever the hang is (a step's gradient all-reduce, the embedding all-to-all, an evaluation
gather, a checkpoint barrier), unlike a monitored barrier placed at one point, and costs one small
store write per step.

Fault injection (tests, drills). ``RECSCALE_FAULT_RANK=r RECSCALE_FAULT_STEP=s`` makes rank ``r``
fail right after training step ``s``: ``RECSCALE_FAULT_KIND=kill`` (default) SIGKILLs the process,
``hang`` sleeps forever without reporting step ``s``. A fault fires once per run directory (a
marker file under ``<run_dir>/faults/`` is written first), so the restarted job does not die again.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from recscale.sharding.process_group import host_group
from recscale.trainer.run_dir import METRICS

log = logging.getLogger("recscale")

FAULT_RANK = "RECSCALE_FAULT_RANK"
FAULT_STEP = "RECSCALE_FAULT_STEP"
FAULT_KIND = "RECSCALE_FAULT_KIND"
FAULT_KINDS = ("kill", "hang")
DROPPED = "metrics.dropped.jsonl"
"""Records of abandoned attempts, moved out of ``metrics.jsonl`` on resume."""
_PROGRESS = "recscale/progress/{}"
_WAITING = "recscale/waiting/{}"


# -------------------------------------------------------------------------------------- restarts


def restart_attempt(env: dict[str, str] | None = None) -> int:
    """How many times this job was restarted (torchrun's elastic restarts plus Slurm requeues)."""
    env = dict(os.environ) if env is None else env
    return sum(int(env.get(key, "0") or "0") for key in ("TORCHELASTIC_RESTART_COUNT", "SLURM_RESTART_COUNT"))


def any_rank(flag: bool) -> bool:
    """True on every rank when ``flag`` is true on at least one (a MAX all-reduce)."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return flag
    t = torch.tensor([1 if flag else 0], dtype=torch.int64)
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=host_group())
    return bool(t.item())


def _keep_on_resume(record: dict[str, Any], step: int) -> bool:
    """Whether a record of an earlier attempt belongs to the trajectory resumed at ``step``.

    Within a step the loop writes train, then periodic eval, then checkpoint, then stage; the
    checkpoint of ``step`` completed, so the records before it did too. The stage record and a
    final evaluation at ``step`` are written again by the resumed run.
    """
    at = int(record.get("step", 0))
    if at < step:
        return True
    if at > step:
        return False
    return record.get("kind") in ("train", "checkpoint", "restart") or (
        record.get("kind") == "eval" and not record.get("final", False)
    )


def rewind_metrics(run_dir: Path, step: int, checkpoint: Path | None, attempt: int) -> int:
    """Cut ``metrics.jsonl`` back to a resume at ``step`` (rank 0 only); returns the records moved out.

    Moved records go to ``metrics.dropped.jsonl`` (with the attempt that reads them out); a
    ``restart`` record marks the resume. Written to a temporary name, then renamed.
    """
    path = run_dir / METRICS
    if not path.exists():
        return 0
    kept, dropped = [], []
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:  # a line cut by the crash
            dropped.append(json.dumps({"kind": "unreadable", "line": line}))
            continue
        (kept if _keep_on_resume(record, step) else dropped).append(line)
    restart = {
        "kind": "restart",
        "step": step,
        "time": round(time.time(), 3),
        "attempt": attempt,
        "checkpoint": str(checkpoint) if checkpoint else None,
        "dropped_records": len(dropped),
    }
    kept.append(json.dumps(restart))
    if dropped:
        with open(run_dir / DROPPED, "a") as f:
            f.writelines(json.dumps({"dropped_by_attempt": attempt, "record": line}) + "\n" for line in dropped)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text("\n".join(kept) + "\n")
    tmp.replace(path)
    if dropped:
        log.warning(
            "resumed at step %d: moved %d metrics records of the interrupted attempt to %s",
            step,
            len(dropped),
            run_dir / DROPPED,
        )
    return len(dropped)


# ------------------------------------------------------------------------------- fault injection


@dataclass(frozen=True)
class Fault:
    """A fault to inject: rank ``rank`` fails right after training step ``step``."""

    rank: int
    step: int
    kind: str = "kill"


def fault_from_env(env: dict[str, str] | None = None) -> Fault | None:
    """The fault asked for by ``RECSCALE_FAULT_*`` (None when unset); ValueError names a bad variable."""
    env = dict(os.environ) if env is None else env
    if not env.get(FAULT_RANK) and not env.get(FAULT_STEP):
        return None
    values = {}
    for key in (FAULT_RANK, FAULT_STEP):
        try:
            values[key] = int(env.get(key, ""))
        except ValueError:
            raise ValueError(f"{key}: expected an integer, got {env.get(key, '')!r}") from None
    kind = env.get(FAULT_KIND, "kill") or "kill"
    if kind not in FAULT_KINDS:
        raise ValueError(f"{FAULT_KIND}: expected one of {', '.join(FAULT_KINDS)}, got {kind!r}")
    if values[FAULT_STEP] < 1:
        raise ValueError(f"{FAULT_STEP}: expected a step >= 1, got {values[FAULT_STEP]}")
    return Fault(values[FAULT_RANK], values[FAULT_STEP], kind)


def _fire(fault: Fault, marker: Path) -> None:
    """Record that the fault fired (so no later attempt repeats it), then kill or hang this process."""
    marker.parent.mkdir(parents=True, exist_ok=True)
    tmp = marker.with_name(marker.name + ".tmp")
    with open(tmp, "w") as f:
        f.write(json.dumps({"rank": fault.rank, "step": fault.step, "kind": fault.kind, "pid": os.getpid()}))
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(marker)
    log.error("fault injection: rank %d %s after step %d", fault.rank, fault.kind, fault.step)
    for handler in logging.getLogger().handlers:
        handler.flush()
    if fault.kind == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    while True:  # hang: never report the step, never join the next collective
        time.sleep(3600)


# ---------------------------------------------------------------------------- progress and stalls


class _Watch:
    """This rank's progress board: finished steps in the c10d store, the fault to inject."""

    def __init__(self, run_dir: Path, rank: int, world_size: int, timeout_s: float, fault: Fault | None) -> None:
        self.rank = rank
        self.world_size = world_size
        self.timeout_s = timeout_s
        self.fault = fault
        self.marker = run_dir / "faults" / f"rank{fault.rank}-step{fault.step}-{fault.kind}" if fault else None
        self.store: Any = None
        if dist.is_initialized() and world_size > 1:
            from torch.distributed.distributed_c10d import _get_default_store

            self.store = _get_default_store()
        self.step = 0

    def report(self, step: int) -> None:
        self.step = step
        if self.store is not None:
            self.store.set(_PROGRESS.format(self.rank), json.dumps({"step": step, "time": time.time()}))

    def after_step(self, step: int) -> None:
        fault = self.fault
        if fault is not None and fault.step == step and self.marker is not None and not self.marker.exists():
            _fire(fault, self.marker)
        self.report(step)

    def _read(self, key: str) -> dict[str, Any] | None:
        try:
            if not self.store.check([key]):
                return None
            value: dict[str, Any] = json.loads(self.store.get(key))
            return value
        except Exception:  # noqa: BLE001 - the store may be gone with the job; then nothing is known
            return None

    def explain(self, grace_s: float) -> str:
        """Name the ranks that did not arrive (see the module docstring)."""
        if self.store is None:
            return ""
        try:
            self.store.set(_WAITING.format(self.rank), json.dumps({"step": self.step, "time": time.time()}))
        except Exception:  # noqa: BLE001
            return ""
        deadline = time.monotonic() + grace_s
        others = [r for r in range(self.world_size) if r != self.rank]
        while time.monotonic() < deadline:
            if all(self._read(_WAITING.format(r)) is not None for r in others):
                break
            time.sleep(0.2)
        now = time.time()
        missing = []
        for r in others:
            if self._read(_WAITING.format(r)) is not None:
                continue
            progress = self._read(_PROGRESS.format(r))
            if progress is None:
                missing.append(f"rank {r} (never reported a step)")
            else:
                ago = now - float(progress["time"])
                missing.append(f"rank {r} (last finished step {progress['step']}, {ago:.0f} s ago)")
        head = f"a collective did not complete within {self.timeout_s:g} s (trainer.collective_timeout_s)"
        if missing:
            return f"{head}: {', '.join(missing)} did not arrive; rank {self.rank} had finished step {self.step}"
        return f"{head}: every rank was waiting (rank {self.rank} had finished step {self.step})"


_WATCH: _Watch | None = None


def arm(run_dir: Path, rank: int, world_size: int, collective_timeout_s: float, start_step: int = 0) -> None:
    """Start watching this rank: collective timeout, progress board, injected fault (collective; after set-up).

    Args:
        run_dir: the run directory (fault markers live under it).
        rank: this rank.
        world_size: ranks in the job.
        collective_timeout_s: ``trainer.collective_timeout_s``.
        start_step: the step the loop starts from (after a resume).
    """
    global _WATCH
    fault = fault_from_env()
    mine = fault if fault is not None and fault.rank == rank else None
    if mine is not None:
        log.warning("fault injection armed: rank %d will %s after step %d", rank, mine.kind, mine.step)
    _WATCH = _Watch(run_dir, rank, world_size, collective_timeout_s, mine)
    if _WATCH.store is not None:
        _WATCH.store.delete_key(_WAITING.format(rank))  # a restarted job shares the store with its first attempt
    _WATCH.report(start_step)
    if dist.is_initialized():
        from torch.distributed.distributed_c10d import _set_pg_timeout

        dist.barrier()  # every rank's stale marks are gone before anyone can read them
        _set_pg_timeout(timedelta(seconds=collective_timeout_s))
        if host_group() is not None:  # GPU runs: the gloo side group waits no longer than the default one
            _set_pg_timeout(timedelta(seconds=collective_timeout_s), host_group())


def after_step(step: int) -> None:
    """Report a finished step (and inject the armed fault at its step)."""
    if _WATCH is not None:
        _WATCH.after_step(step)


def explain(err: BaseException) -> str:
    """One line naming the ranks that did not arrive, when ``err`` is a failed collective; else ``""``."""
    text = str(err).lower()
    if _WATCH is None or not any(s in text for s in ("timed out", "timeout", "connection closed", "reset by peer")):
        return ""
    return _WATCH.explain(grace_s=min(5.0, max(1.0, _WATCH.timeout_s / 4)))


__all__ = [
    "Fault",
    "after_step",
    "any_rank",
    "arm",
    "explain",
    "fault_from_env",
    "restart_attempt",
    "rewind_metrics",
]
