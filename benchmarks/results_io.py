"""Writing a benchmark's results file whole or not at all (plain Python: the GPU scripts import it too)."""

from __future__ import annotations

import json
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
