"""Versions of everything that decides a run's numbers (written into summary.json)."""

from __future__ import annotations

import platform
from importlib import metadata


def versions() -> dict[str, str]:
    """Python and the versions of torch, torchrec, fbgemm, deepspeed, torchx, pyarrow, recscale."""
    out = {"python": platform.python_version()}
    for dist_name, key in [
        ("torch", "torch"),
        ("torchrec", "torchrec"),
        ("fbgemm-gpu-cpu", "fbgemm_gpu"),
        ("fbgemm-gpu", "fbgemm_gpu"),
        ("deepspeed", "deepspeed"),
        ("torchx-nightly", "torchx"),
        ("torchx", "torchx"),
        ("pyarrow", "pyarrow"),
        ("recscale", "recscale"),
    ]:
        if key in out:
            continue
        try:
            out[key] = metadata.version(dist_name)
        except metadata.PackageNotFoundError:
            continue
    return out
