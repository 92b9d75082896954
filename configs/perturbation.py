"""Value checks of ``model.perturbation`` (LSPR / SCR), one ``key: what was expected`` line each."""

from __future__ import annotations

from recscale.configs.schema import JobConfig


def perturbation_problems(cfg: JobConfig) -> list[str]:
    """Problems of ``model.perturbation``; nothing is checked while ``kind`` is ``none``.

    The sequence-model refusal lives with the model capabilities (``configs/capabilities.py``).
    """
    p = cfg.model.perturbation
    if p.kind == "none":
        return []
    key = "model.perturbation"
    out = []
    if p.kind == "lspr" and not p.weight > 0:
        out.append(f"{key}.weight: expected > 0 (λ of lspr), got {p.weight}")
    if p.kind == "scr" and not p.consistency_weight > 0:
        out.append(f"{key}.consistency_weight: expected > 0 (μ of scr), got {p.consistency_weight}")
    if not p.sigma_rel > 0:
        out.append(f"{key}.sigma_rel: expected > 0 (noise relative to each feature's rms), got {p.sigma_rel}")
    if p.group_balance and not cfg.data.features.domain:
        out.append(
            f"{key}.group_balance: the groups are the domain column, but data.features.domain is not set "
            "(set it, or group_balance: false)"
        )
    return out
