"""How a failing rank reports itself, and how the launcher turns that into one console line.

A rank that fails writes its traceback to its own log (between two marker lines, which the console
filter of ``recscale.launch.console`` keeps off the console) and a small record,
``<log_dir>/failures/rank<N>.json``: when, which rank, the reason on one line and the path of that
rank's log. After the job ends the launcher prints the earliest record as the job's one error line:
the first rank to fail is the cause; the others usually fail because it left.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from recscale.trainer.run_dir import write_json

TRACEBACK_BEGIN = "--- traceback (in this log only) ---"
TRACEBACK_END = "--- end of traceback ---"
FAILURES = "failures"
"""Folder of the failure records, inside the job's log folder."""


def one_line(err: BaseException) -> str:
    """The error as one line: its first line, with how many more the full text has."""
    text = str(err).strip() or type(err).__name__
    if not isinstance(err, (ValueError, FileNotFoundError, TimeoutError, KeyError)):
        text = f"{type(err).__name__}: {text}"  # an unexpected type says what it is
    lines = text.splitlines()
    more = len(lines) - 1
    return lines[0] + (f" (and {more} more line{'s' * (more > 1)} in the log)" if more else "")


def rank_log_path() -> str:
    """This rank's stderr log when torchrun writes one (``.../attempt_<k>/<local_rank>/stderr.log``), else ''."""
    error_file = os.environ.get("TORCHELASTIC_ERROR_FILE", "")
    if not error_file or error_file == os.devnull:
        return ""
    return str(Path(error_file).parent / "stderr.log")


def report_failure(log_dir: Path | None, reason: str) -> None:
    """Log this rank's traceback (log only), its ``rank N failed`` line, and its failure record."""
    rank = int(os.environ.get("RANK", "0"))
    log_path = rank_log_path()
    print(f"{TRACEBACK_BEGIN}\n{traceback.format_exc().rstrip()}\n{TRACEBACK_END}", file=sys.stderr, flush=True)
    where = f" (traceback: {log_path})" if log_path else ""
    logging.getLogger("recscale").error("rank %d failed: %s%s", rank, reason, where)
    if log_dir is None:
        return
    try:
        (log_dir / FAILURES).mkdir(parents=True, exist_ok=True)
        record = {"time": time.time(), "rank": rank, "reason": reason, "log": log_path}
        write_json(log_dir / FAILURES / f"rank{rank}.json", record)
    except OSError:  # the console line above still names the failure
        pass


def read_failures(log_dir: Path, since: float = 0.0) -> list[dict[str, Any]]:
    """The failure records written at or after ``since`` (seconds since the epoch), earliest first."""
    records = []
    for path in sorted((log_dir / FAILURES).glob("rank*.json")):
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if float(record.get("time", 0.0)) >= since:
            records.append(record)
    return sorted(records, key=lambda r: float(r["time"]))


def failure_line(command: str, log_dir: Path, code: int, since: float = 0.0) -> str:
    """The one console line of a failed job: its first rank's reason and log, or where the logs are."""
    records = read_failures(log_dir, since)
    if not records:
        return (
            f"recscale {command}: error: the job failed (exit code {code}) and no rank recorded why; logs in {log_dir}"
        )
    first = records[0]
    where = first["log"] or str(log_dir)
    return f"recscale {command}: error: rank {first['rank']} failed: {first['reason']} (traceback: {where})"


def save_traceback(command: str) -> str:
    """Write the exception being handled to ``~/.cache/recscale/errors/<command>-<time>.log``; returns its path."""
    folder = Path(os.environ.get("RECSCALE_ERROR_DIR", "~/.cache/recscale/errors")).expanduser()
    path = folder / f"{command}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        path.write_text(traceback.format_exc())
    except OSError:
        return "not saved: " + str(folder) + " is not writable; run with --verbose to see it"
    return str(path)
