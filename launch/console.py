"""What a local job shows on the console: rank 0's own lines, without tracebacks or torchrun's reports.

torchrun (``--tee=3 --local-ranks-filter=0``) copies rank 0's output to its own, each line prefixed
``[rank0]:``, and adds its own lines (elastic agent logs, and on a failure a ``ChildFailedError``
traceback of about 40 lines). ``run_filtered`` pumps both of torchrun's streams through ``ConsoleFilter``:

* rank 0's lines are shown without the prefix, except a traceback between the markers of
  ``recscale.launch.failures`` and the ``rank N failed`` line (the launcher prints the job's one error
  line itself, from the failure records, once the job has ended);
* torchrun's own lines go to ``<log_dir>/torchrun.log`` only;
* with ``bar`` (the console is a terminal, ``metrics.progress_bar``), rank 0's ``step N/M | ...`` lines
  (``batch N/M | ...`` for ``recscale eval``) move one progress bar instead of scrolling, and the other
  lines print above it. The launcher draws the bar because it owns the terminal: a rank's output is a
  file that torchrun copies.

Under ``--verbose`` every line is shown as torchrun printed it. Every rank's whole output is in its
log file either way (torchrun writes those, not this filter).
"""

from __future__ import annotations

import re
import subprocess
import sys
import threading
from pathlib import Path
from typing import IO, Any

from recscale.launch.failures import TRACEBACK_BEGIN, TRACEBACK_END

RANK_PREFIX = re.compile(r"^\[(rank\d+|node\d+\.local\d+)\]:")
"""torchrun's prefix of a rank's line: ``[rank0]:`` (``recscale train``), ``[node0.local1]:`` (a launched node)."""
BAR_FORMAT = "{percentage:3.0f}%|{bar}| {desc} {n}/{total} [{elapsed}<{remaining}{postfix}]"
STEP_LINE = re.compile(r"^(step|batch) (\d+)/(\d+) \| (.*)$")
"""Rank 0's progress lines: training steps (``trainer/progress.py``), evaluation batches (``eval_entrypoint``)."""
CPP_NOISE = re.compile(
    r"^(\[rank\d+\]:)?(\[?W\d{4} \d\d:\d\d:\d\d|Exception raised from |frame #\d+: |<omitting python frames>)"
)
"""c10's C++ warnings (glog style, ``[W1206 21:26:52.45 TCPStore.cpp:125] ...``) and the stack frames they
print: a peer's store closing after the job failed, never what a user acts on (kept in the rank's log)."""
FAILED_LINE = re.compile(r"^(\[rank\d+\] )?rank \d+ failed: ")
TORCHRUN_LOG = "torchrun.log"


class ConsoleFilter:
    """Decides, line by line, what of torchrun's output the console shows (see the module docstring).

    Args:
        verbose: show every line unchanged.
        side_log: where torchrun's own lines go instead of the console.
        bar: draw rank 0's step lines as a progress bar.
    """

    def __init__(self, verbose: bool, side_log: IO[str] | None, bar: bool = False) -> None:
        self.verbose = verbose
        self.side_log = side_log
        self.bar = StepBar() if bar else None
        self._in_traceback: set[str] = set()  # the rank prefixes inside a traceback block
        self._lock = threading.Lock()  # two pumps (stdout, stderr) share the traceback state

    def __call__(self, line: str) -> str | None:
        """The text to show for one output line (with its newline), or None to keep it off the console."""
        if self.verbose:
            return line
        found = RANK_PREFIX.match(line)
        if found is None:
            with self._lock:
                if self.side_log is not None:
                    self.side_log.write(line)
                    self.side_log.flush()
            return None
        text = line[found.end() :]
        stripped = text.strip()
        rank = found.group(1)
        with self._lock:
            if stripped == TRACEBACK_BEGIN:
                self._in_traceback.add(rank)
                return None
            if stripped == TRACEBACK_END:
                self._in_traceback.discard(rank)
                return None
            if rank in self._in_traceback or FAILED_LINE.match(stripped) or CPP_NOISE.match(stripped):
                return None
            step = STEP_LINE.match(stripped) if self.bar is not None else None
            if step is not None and self.bar is not None:
                self.bar.update(int(step.group(2)), int(step.group(3)), step.group(4), unit=step.group(1))
                return None
        return text

    def show(self, text: str, sink: IO[str]) -> None:
        """Write a shown line to ``sink``, above the progress bar when one is drawn."""
        with self._lock:
            if self.bar is not None and self.bar.active:
                self.bar.write(text.rstrip("\n"))
            else:
                sink.write(text)
                sink.flush()

    def close(self) -> None:
        """End the progress bar (its last state stays on the console)."""
        if self.bar is not None:
            self.bar.close()


class StepBar:
    """A tqdm bar over training steps, moved by ``step N/M | loss ... | ex/s | MFU`` lines."""

    def __init__(self) -> None:
        self._bar: Any = None

    @property
    def active(self) -> bool:
        """Whether the bar is on the console."""
        return self._bar is not None

    def update(self, step: int, total: int, postfix: str, unit: str = "step") -> None:
        """Move the bar to ``step`` of ``total`` ``unit``s with ``postfix`` beside it."""
        if self._bar is None:
            from tqdm import tqdm

            # from the first progress line on: the start-up (imports, planning) is not a step rate
            self._bar = tqdm(
                total=total, initial=step, desc=unit, dynamic_ncols=True, file=sys.stderr, bar_format=BAR_FORMAT
            )
        self._bar.total = total
        self._bar.update(step - self._bar.n)  # tqdm's rate and remaining time follow the steps
        self._bar.set_postfix_str(postfix)

    def write(self, line: str) -> None:
        """Print ``line`` above the bar."""
        self._bar.write(line, file=sys.stderr)

    def close(self) -> None:
        """Leave the bar's last state on the console."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def _pump(source: IO[str], sink: IO[str], keep: ConsoleFilter) -> None:
    for line in source:
        shown = keep(line)
        if shown is not None:
            keep.show(shown, sink)


def run_filtered(
    cmd: list[str],
    env: dict[str, str],
    log_dir: Path,
    verbose: bool,
    stdout: IO[str] | None = None,
    bar: bool = False,
) -> int:
    """Run torchrun's ``cmd``, its output through ``ConsoleFilter``; returns its exit code.

    ``stdout``: where torchrun's standard output goes (default: ours); its standard error goes to ours.
    ``bar``: draw rank 0's step lines as a progress bar.
    """
    log_dir.mkdir(parents=True, exist_ok=True)
    out = stdout or sys.stdout
    with open(log_dir / TORCHRUN_LOG, "a", encoding="utf-8") as side_log:
        keep = ConsoleFilter(verbose, side_log, bar=bar and not verbose)
        proc = subprocess.Popen(
            cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, errors="replace", bufsize=1
        )
        assert proc.stdout is not None and proc.stderr is not None
        pumps = [
            threading.Thread(target=_pump, args=(proc.stdout, out, keep), daemon=True),
            threading.Thread(target=_pump, args=(proc.stderr, sys.stderr, keep), daemon=True),
        ]
        for pump in pumps:
            pump.start()
        try:
            code = proc.wait()
        except KeyboardInterrupt:  # torchrun got the same SIGINT from the terminal and stops the ranks
            code = proc.wait()
            raise
        finally:
            for pump in pumps:
                pump.join(timeout=10)
            keep.close()
    return code
