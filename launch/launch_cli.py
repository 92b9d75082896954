"""``recscale launch`` / ``status`` / ``logs`` / ``cancel``: a training job through TorchX, here or on Slurm.

    recscale launch CONFIG [--scheduler local_cwd|slurm] [-j NODESxPROCS] [--set key=value ...]
                           [--max-restarts N] [--run-dir DIR] [--dry-run] [--wait]
    recscale status HANDLE
    recscale logs HANDLE [--stream stderr|stdout] [--node K]
    recscale cancel HANDLE [--wait-s S]

``launch`` checks everything it can before it creates or submits anything (scheduler, ``-j``, the
config, what the scheduler can give, data paths, the run root), creates the run directory and its
``config.yaml``, builds the job with :func:`recscale.launch.components.trainer` and submits it with
TorchX's runner. It prints the TorchX app handle on stdout. ``local_cwd`` jobs live in this process,
so ``launch`` waits for them (streaming node 0's output); Slurm jobs are left running unless ``--wait``.
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from recscale.configs import dump_config
from recscale.launch import schedulers
from recscale.launch.launch_prep import build_app, format_dryrun, prepare_launch
from recscale.trainer.run_dir import CONFIG, LOGS, SUMMARY, new_run_dir

log = logging.getLogger("recscale")

LAUNCH_RECORD = "launch.json"


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``launch``, ``status``, ``logs`` and ``cancel`` to a ``recscale`` argument parser."""
    p = subparsers.add_parser("launch", help="run a training job through TorchX (local_cwd or Slurm)")
    p.add_argument("config", help="preset name or path to a YAML config")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="override")
    p.add_argument("--scheduler", "-s", default="", help="local_cwd or slurm (default: launch.scheduler)")
    p.add_argument("-j", dest="job", default="", metavar="NODESxPROCS", help="nodes x ranks per node, e.g. 2x4")
    p.add_argument("--max-restarts", type=int, default=None, help="elastic restarts (default: launch.max_restarts)")
    p.add_argument("--run-dir", default="", help="write into this (new or empty) directory")
    p.add_argument("--dry-run", action="store_true", help="print the sbatch script / command lines, submit nothing")
    p.add_argument("--wait", action="store_true", help="wait for a Slurm job to finish (local_cwd always waits)")
    p.set_defaults(func=launch)

    p = subparsers.add_parser("status", help="state of a launched job (TorchX app handle)")
    p.add_argument("handle", help="e.g. slurm://torchx/42")
    p.set_defaults(func=status)

    p = subparsers.add_parser("logs", help="per-node output of a launched job")
    p.add_argument("handle", help="e.g. slurm://torchx/42")
    p.add_argument("--stream", choices=["stderr", "stdout"], default="stderr")
    p.add_argument("--node", type=int, default=None, help="only this node (default: every node)")
    p.set_defaults(func=logs)

    p = subparsers.add_parser("cancel", help="stop a launched job and wait until it has ended")
    p.add_argument("handle", help="e.g. slurm://torchx/42")
    p.add_argument("--wait-s", type=float, default=120.0, help="how long to wait for the job to end (default 120)")
    p.set_defaults(func=cancel)


# ------------------------------------------------------------------------------------------ launch


def _quiet_torchx(args: argparse.Namespace) -> None:
    """TorchX logs every config file and directory it uses at INFO; keep those for ``-v``."""
    if not getattr(args, "verbose", False):
        logging.getLogger("torchx").setLevel(logging.WARNING)


def launch(args: argparse.Namespace) -> int:
    """Check, create the run directory, submit through TorchX, print the handle (and wait for local jobs)."""
    from recscale.launch.torchx_runner import get_runner

    _quiet_torchx(args)
    cfg, scheduler, run_dir, torchx_cfg = prepare_launch(args)
    app = build_app(cfg, run_dir)
    if args.dry_run:
        with schedulers.in_state_dir(scheduler), get_runner() as runner:
            print(format_dryrun(runner.dryrun(app, scheduler, cfg=torchx_cfg), scheduler))
        return 0

    if args.run_dir:
        run_dir.mkdir(parents=True, exist_ok=True)
    else:
        run_dir = new_run_dir(run_dir.parent, cfg.name)
        app = build_app(cfg, run_dir)  # the directory's final name (a suffix if the stamp was taken)
        for key, value in schedulers.scheduler_cfg(scheduler, cfg.launch, run_dir).items():
            if key in ("log_dir", "job_dir"):
                torchx_cfg[key] = value
    from recscale.data.prepare import prepare_data

    prepare_data(cfg.data, cfg.embeddings)  # synthetic data once, here; real data checked against the schema
    dump_config(cfg, run_dir / CONFIG)
    (run_dir / LOGS).mkdir(exist_ok=True)
    log.info("run directory: %s", run_dir)
    started = time.time()  # failure records older than this are an earlier launch's
    with schedulers.in_state_dir(scheduler), get_runner() as runner:
        try:
            handle = runner.run(app, scheduler, cfg=torchx_cfg)
        except subprocess.CalledProcessError as err:
            print(
                f"recscale launch: error: {shlex.join(map(str, err.cmd))} failed (exit {err.returncode})",
                file=sys.stderr,
            )
            return 1
        role = app.roles[0]
        record = {"run_dir": str(run_dir), "scheduler": scheduler, "role": role.name, "nnodes": role.num_replicas}
        if scheduler == "local_cwd":  # the job lives in this process: `recscale cancel` interrupts it
            record["launcher_pid"] = os.getpid()
        record["log_dir"] = str(torchx_cfg.get("log_dir") or torchx_cfg.get("job_dir"))
        schedulers.record_launch(handle, record)
        schedulers.write_json(
            run_dir / LAUNCH_RECORD,
            {**record, "handle": handle, "torchx_cfg": torchx_cfg, "entrypoint": role.entrypoint, "args": role.args},
        )
        print(handle, flush=True)
        if scheduler == "local_cwd" or args.wait:
            return _wait(runner, handle, scheduler, role.name, run_dir, started)
    print(f"recscale launch: submitted; `recscale status {handle}`, `recscale logs {handle}`", file=sys.stderr)
    return 0


def _stream(runner: Any, handle: str, role: str, run_dir: Path) -> None:
    """Copy node 0's ranks' lines to stderr while a local job runs.

    Through ``ConsoleFilter``: no tracebacks; the node runner's and torchrun's own lines go to
    ``<run_dir>/logs/torchrun.log`` only.
    """
    from torchx.schedulers.api import Stream

    from recscale.launch.console import TORCHRUN_LOG, ConsoleFilter

    try:
        with open(run_dir / LOGS / TORCHRUN_LOG, "a", encoding="utf-8") as side_log:
            keep = ConsoleFilter(log.isEnabledFor(logging.DEBUG), side_log)
            for line in runner.log_lines(handle, role, 0, should_tail=True, streams=Stream.COMBINED):
                shown = keep(line if line.endswith("\n") else line + "\n")
                if shown is not None:
                    keep.show(shown, sys.stderr)
    except Exception as err:  # noqa: BLE001 - output is a convenience; the job's state is what counts
        log.debug("log streaming stopped: %s", err)


def _wait(runner: Any, handle: str, scheduler: str, role: str, run_dir: Path, started: float) -> int:
    """Wait for the job, record its final state, print the result or why it failed."""
    streamer = None
    if scheduler == "local_cwd":
        streamer = threading.Thread(target=_stream, args=(runner, handle, role, run_dir), daemon=True)
        streamer.start()
    from torchx.schedulers.local_scheduler import SignalException

    try:
        final = runner.wait(handle, wait_interval=1)
    except (KeyboardInterrupt, SignalException) as err:  # Ctrl-C or `recscale cancel` (SIGINT), SIGTERM
        # TorchX's local scheduler turns SIGINT/SIGTERM into its SignalException while it owns the job
        runner.cancel(handle)
        schedulers.record_launch(handle, {"state": "CANCELLED"})
        print(f"{handle}: CANCELLED", file=sys.stderr)
        raise KeyboardInterrupt from err
    if streamer is not None:
        streamer.join(timeout=5)
    state = final.state.name if final is not None else "UNKNOWN"
    schedulers.record_launch(handle, {"state": state})
    print(f"{handle}: {state}", file=sys.stderr)
    if state == "SUCCEEDED" and (run_dir / SUMMARY).exists():
        from recscale.launch.commands import _print_result

        _print_result(run_dir)
        return 0
    from recscale.launch.failures import failure_line, read_failures

    if read_failures(run_dir / LOGS, since=started):  # the first failing rank's reason and log
        print(failure_line("launch", run_dir / LOGS, 1, since=started), file=sys.stderr)
    else:
        print(f"recscale launch: error: the job ended {state}; per-rank logs in {run_dir / LOGS}", file=sys.stderr)
    return 1


# ----------------------------------------------------------------------------------- status, logs


def _parse_handle(handle: str) -> tuple[str, str, str]:
    from torchx.specs.api import parse_app_handle

    try:
        parsed = parse_app_handle(handle)
    except Exception:  # noqa: BLE001 - TorchX raises its own type for a malformed handle
        raise ValueError(f"{handle}: not a TorchX app handle (expected SCHEDULER://SESSION/APP_ID)") from None
    return parsed.scheduler_backend, parsed.session_name, parsed.app_id


def status(args: argparse.Namespace) -> int:
    """Print the job's state (TorchX's ``status``), its nodes and its run directory."""
    from recscale.launch.torchx_runner import get_runner

    _quiet_torchx(args)
    scheduler, _, _ = _parse_handle(args.handle)
    known = schedulers.find_launch(args.handle)
    with schedulers.in_state_dir(scheduler), get_runner() as runner:
        found = runner.status(args.handle)
    if found is not None:
        print(f"{args.handle}: {found.state.name}")
        for role in found.roles:
            for replica in role.replicas:
                print(f"  {role.role}/{replica.id}: {replica.state.name} {replica.hostname}".rstrip())
        if found.msg and found.msg != "<NONE>":
            print(f"  {found.msg}")
    elif known.get("state"):
        print(f"{args.handle}: {known['state']} (recorded by the recscale launch that ran it)")
    elif scheduler == "local_cwd" and known:
        print(f"{args.handle}: UNKNOWN (local_cwd jobs live in the recscale launch process that started them)")
    else:
        raise ValueError(f"{args.handle}: unknown to the {scheduler} scheduler")
    if known.get("run_dir"):
        print(f"run directory: {known['run_dir']}")
    return 0


def logs(args: argparse.Namespace) -> int:
    """Print every node's stderr (or stdout) through TorchX's ``log_lines``."""
    from torchx.schedulers.api import Stream

    from recscale.launch.torchx_runner import get_runner

    _quiet_torchx(args)
    scheduler, session, app_id = _parse_handle(args.handle)
    known = schedulers.find_launch(args.handle)
    stream = Stream.STDOUT if args.stream == "stdout" else Stream.STDERR
    with schedulers.in_state_dir(scheduler), get_runner() as runner:
        role, nnodes = known.get("role"), known.get("nnodes")
        if not role:
            app = runner.describe(args.handle)
            if app is None or not app.roles:
                raise ValueError(f"{args.handle}: unknown to the {scheduler} scheduler")
            role, nnodes = app.roles[0].name, app.roles[0].num_replicas
        nodes = [args.node] if args.node is not None else list(range(int(nnodes or 1)))
        for k in nodes:
            for line in _node_lines(runner, args.handle, str(role), k, stream, known, session, app_id):
                sys.stdout.write(f"{role}/{k} {line}" if line.endswith("\n") else f"{role}/{k} {line}\n")
    return 0


def cancel(args: argparse.Namespace) -> int:
    """Stop a launched job, wait for its end, record and print its final state.

    Slurm: ``scancel`` through TorchX. local_cwd: the job lives in the ``recscale launch`` process that
    started it, so that process is interrupted (SIGINT, as Ctrl-C would), and it stops the ranks.
    """
    _quiet_torchx(args)
    scheduler, _, _ = _parse_handle(args.handle)
    known = schedulers.find_launch(args.handle)
    if known.get("state"):
        print(f"{args.handle}: already ended {known['state']}")
        return 0
    if scheduler == "local_cwd":
        state = _cancel_local(args.handle, known, args.wait_s)
    else:
        state = _cancel_scheduled(args.handle, scheduler, args.wait_s)
    schedulers.record_launch(args.handle, {"state": state})
    print(f"{args.handle}: {state}")
    return 0


def _cancel_scheduled(handle: str, scheduler: str, wait_s: float) -> str:
    """Cancel through the scheduler; the state the job ended in."""
    from recscale.launch.torchx_runner import get_runner

    with schedulers.in_state_dir(scheduler), get_runner() as runner:
        found = runner.status(handle)
        if found is None:
            raise ValueError(f"{handle}: unknown to the {scheduler} scheduler")
        if not found.is_terminal():
            runner.cancel(handle)
            deadline = time.monotonic() + wait_s
            while found is not None and not found.is_terminal():
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{handle}: still {found.state.name} {wait_s:g} s after the cancel")
                time.sleep(1)
                found = runner.status(handle)
    return found.state.name if found is not None else "CANCELLED"


def _cancel_local(handle: str, known: dict[str, Any], wait_s: float) -> str:
    """Interrupt the ``recscale launch`` process that runs a local_cwd job (it stops its ranks)."""
    pid = int(known.get("launcher_pid") or 0)
    if not pid:
        raise ValueError(f"{handle}: no recscale launch process is recorded for this job")
    if not _is_recscale_launch(pid):
        return "UNKNOWN"  # the launch process is gone without recording an end state
    os.kill(pid, signal.SIGINT)
    deadline = time.monotonic() + wait_s
    while _is_recscale_launch(pid):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{handle}: its launch process {pid} is still running {wait_s:g} s after SIGINT")
        time.sleep(0.5)
    return str(schedulers.find_launch(handle).get("state") or "CANCELLED")


def _is_recscale_launch(pid: int) -> bool:
    """Whether ``pid`` is alive and still a ``recscale launch`` (not a process that reused the number)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return any(b"recscale" in part for part in cmdline) and b"launch" in cmdline


def _node_lines(
    runner: Any, handle: str, role: str, k: int, stream: Any, known: dict[str, Any], session: str, app_id: str
) -> Any:
    """TorchX's log lines of node ``k``; for a local_cwd job that ended in another process, its files."""
    try:
        return list(runner.log_lines(handle, role, k, streams=stream))
    except Exception:  # noqa: BLE001 - local_cwd apps are known only to the process that ran them
        if known.get("scheduler") != "local_cwd" or not known.get("log_dir"):
            raise
    path = Path(known["log_dir"]) / session / app_id / role / str(k) / f"{stream.value}.log"
    if not path.exists():
        raise ValueError(f"{handle}: no {stream.value} log of node {k} at {path}")
    return path.read_text(errors="replace").splitlines(keepends=True)
