"""What rank 0 shows while training: a progress bar with ETA in a terminal, plain lines otherwise."""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

log = logging.getLogger("recscale")


PROGRESS_LINES = "RECSCALE_PROGRESS_LINES"
"""Environment variable: ``1`` makes the ranks print step lines even under ``always`` (``recscale train``
draws the bar itself from those lines, on its own terminal)."""


class Progress:
    """Progress of the step loop.

    Args:
        mode: ``auto`` (a bar when stderr is a terminal), ``always`` or ``never`` (plain log lines).
        total_steps: steps of the run.
        enabled: show anything (rank 0 only).
    """

    def __init__(self, mode: str, total_steps: int, enabled: bool) -> None:
        self.enabled = enabled
        self.total = total_steps
        wanted = mode == "always" or (mode == "auto" and sys.stderr.isatty())
        self.use_bar = enabled and wanted and os.environ.get(PROGRESS_LINES) != "1"
        self._bar: Any = None

    def start(self, step: int) -> None:
        """Begin at ``step`` (non-zero after a resume)."""
        if self.use_bar:
            from tqdm import tqdm

            self._bar = tqdm(total=self.total, initial=step, unit="step", dynamic_ncols=True, file=sys.stderr)

    def update(self, step: int, loss: float, examples_per_s: float, mfu: float | None) -> None:
        """Report a logging window that ended at ``step``."""
        if not self.enabled:
            return
        util = f"{100 * mfu:.2f}%" if mfu is not None else "n/a"
        if self._bar is not None:
            self._bar.n = step
            self._bar.set_postfix_str(f"loss {loss:.4f} | {examples_per_s:,.0f} ex/s | MFU {util}")
        else:
            log.info(
                "step %d/%d | loss %.4f | %s ex/s | MFU %s", step, self.total, loss, f"{examples_per_s:,.0f}", util
            )

    def set_total(self, total_steps: int) -> None:
        """The run got shorter (a training stage ended early)."""
        self.total = total_steps
        if self._bar is not None:
            self._bar.total = total_steps
            self._bar.refresh()

    def message(self, text: str) -> None:
        """A line that should not break the bar."""
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.write(text, file=sys.stderr)
        else:
            log.info("%s", text)

    def close(self) -> None:
        """Finish the bar."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
