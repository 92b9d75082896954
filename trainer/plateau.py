"""Learning-rate decay on plateau and early stopping over full validation evaluations.

After each full evaluation: an improvement (by more than ``min_delta``) records a new best and
resets the count; otherwise every learning rate is multiplied by ``lr_decay`` and, after
``patience`` such evaluations in a row, training stops. The state is a few numbers, saved in
checkpoints so a resumed run decides exactly as the uninterrupted one would.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from recscale.configs.schema import EarlyStoppingConfig


@dataclass
class PlateauState:
    """Where the plateau logic stands."""

    best: float = math.nan
    """Best metric so far (NaN before the first full evaluation)."""
    best_step: int = 0
    """Step of the best evaluation."""
    bad_evaluations: int = 0
    """Consecutive full evaluations without improvement."""
    lr_factor: float = 1.0
    """Product of the decays applied so far."""
    stopped: bool = False
    """Early stopping fired."""


class Plateau:
    """Decides, after each full evaluation, whether the model improved, to decay, or to stop.

    Args:
        cfg: ``trainer.early_stopping``.
    """

    def __init__(self, cfg: EarlyStoppingConfig) -> None:
        self.cfg = cfg
        self.state = PlateauState()

    @property
    def active(self) -> bool:
        """Whether evaluations change anything (decay, stop or best-weights tracking)."""
        return self.cfg.patience > 0 or self.cfg.lr_decay < 1.0 or self.cfg.restore_best

    def observe(self, step: int, metrics: dict[str, float]) -> bool:
        """Take a full evaluation's metrics; returns True when it is a new best."""
        m = self.cfg.metric
        value = metrics["auc"] - metrics["logloss"] if m == "auc_minus_logloss" else metrics[m]
        s = self.state
        sign = -1.0 if m in ("logloss", "mse") else 1.0
        improved = math.isnan(s.best) or sign * (value - s.best) > self.cfg.min_delta
        if improved:
            s.best, s.best_step, s.bad_evaluations = value, step, 0
            return True
        s.bad_evaluations += 1
        s.lr_factor *= self.cfg.lr_decay
        if self.cfg.patience and s.bad_evaluations >= self.cfg.patience:
            s.stopped = True
        return False

    def new_stage(self) -> None:
        """A training stage begins: undo the decay and the count (the best so far stays the best)."""
        self.state.lr_factor, self.state.bad_evaluations = 1.0, 0

    def state_dict(self) -> dict[str, Any]:
        """For checkpoints."""
        return asdict(self.state)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """From a checkpoint."""
        self.state = PlateauState(**state)
