"""TorchX's runner with every registered scheduler, and a Slurm scheduler that survives Slurm 22.05.

TorchX (nightly 2026.10.26) describes a Slurm job with ``squeue --json`` first and only falls back
to ``sacct`` when squeue *fails*. Slurm 22.05's JSON has no ``job_resources`` for a running job, so
the parser raises ``KeyError`` and ``status`` / ``wait`` / ``log_lines`` crash while the job runs.
:class:`SlurmScheduler` here falls back to ``sacct`` when the squeue answer cannot be parsed, too.
"""

from __future__ import annotations

import logging
from typing import Any

from torchx.runner import Runner
from torchx.schedulers import get_scheduler_factories
from torchx.schedulers.api import DescribeAppResponse
from torchx.schedulers.slurm_scheduler import SlurmScheduler as _TorchXSlurmScheduler

log = logging.getLogger(__name__)


class SlurmScheduler(_TorchXSlurmScheduler):
    """TorchX's Slurm scheduler, reading ``sacct`` when ``squeue --json`` has a layout it cannot parse."""

    def describe(self, app_id: str) -> DescribeAppResponse | None:
        """The job's state and replicas (squeue while it is known there, else sacct)."""
        try:
            return super().describe(app_id)
        except (KeyError, TypeError, ValueError) as err:
            log.debug("squeue --json of %s not understood (%r); reading sacct", app_id, err)
            return self._describe_sacct(app_id)


def _create_slurm(session_name: str, **kwargs: Any) -> SlurmScheduler:
    return SlurmScheduler(session_name=session_name)


def get_runner() -> Runner:
    """A TorchX runner (session ``torchx``) with our Slurm scheduler in place of TorchX's."""
    factories = dict(get_scheduler_factories())
    factories["slurm"] = _create_slurm
    return Runner("torchx", factories)
