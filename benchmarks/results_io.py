"""Writing a benchmark's results file whole or not at all (plain Python: the GPU scripts import it too)."""

from __future__ import annotations

import json
import platform
from pathlib import Path
from typing import Any


def write_results(path: Path | str, data: Any) -> Path:
    """Write ``data`` as indented JSON to a temporary name beside ``path``, then rename it over ``path``.

    A benchmark killed mid-write (out of time, out of memory) leaves the previous results intact
    instead of half a file. Returns the path written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".tmp")
    partial.write_text(json.dumps(data, indent=2) + "\n")
    partial.replace(path)
    return path


def write_result_key(path: Path | str, key: str, data: Any) -> Path:
    """Set ``key`` of the JSON results file ``path`` to ``data``, keeping its other keys (several benchmarks
    share one file); the file is read just before the atomic rewrite."""
    path = Path(path)
    merged = json.loads(path.read_text()) if path.is_file() else {}
    merged[key] = data
    return write_results(path, merged)


def write_result_or_key(path: Path | str, result: dict[str, Any], key: str = "") -> Path:
    """A benchmark's result: under ``key`` of ``path`` (a variant), or without a key as the file's top level,
    where ``result``'s keys replace the file's and the file's other keys (variants, sweeps) stay."""
    if key:
        return write_result_key(path, key, result)
    path = Path(path)
    kept = json.loads(path.read_text()) if path.is_file() else {}
    return write_results(path, {**{k: v for k, v in kept.items() if k not in result}, **result})


def cpu_model() -> str:
    """This machine's CPU model name (``/proc/cpuinfo``), for naming where a benchmark ran."""
    cpuinfo = Path("/proc/cpuinfo")
    for line in cpuinfo.read_text().splitlines() if cpuinfo.is_file() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"
