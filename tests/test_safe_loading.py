"""Nothing recscale loads can run code: every ``torch.load`` passes ``weights_only=True``, nothing unpickles.

A checkpoint (or any file) from elsewhere must never execute what it contains. Checkpoints keep their
trainer state as JSON and tensors; DCP's pickled index is read by a restricted unpickler
(``sharding/checkpoint/reader.py``); ``tests/distributed.py`` unpickles only what its own child
processes wrote.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = ("configs", "data", "modules", "sharding", "trainer", "launch", "reports", "benchmarks", "scripts", "tests")
UNPICKLERS = {"load", "loads", "Unpickler"}
ALLOWED_PICKLE = {
    "sharding/checkpoint/reader.py": "a subclass of pickle.Unpickler that admits DCP's metadata classes only",
    "tests/distributed.py": "the results its own spawned ranks wrote",
}


def _calls(path: Path) -> list[tuple[int, str, ast.Call | ast.Attribute]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    out: list[tuple[int, str, ast.Call | ast.Attribute]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            out.append((node.lineno, f"{node.value.id}.{node.attr}", node))
    calls = {id(n.func): n for n in ast.walk(tree) if isinstance(n, ast.Call)}
    return [(line, name, calls.get(id(node), node)) for line, name, node in out]


def test_every_torch_load_is_weights_only_and_nothing_else_unpickles():
    offenders = []
    for folder in FOLDERS:
        for path in sorted((ROOT / folder).rglob("*.py")):
            rel = str(path.relative_to(ROOT))
            for line, name, node in _calls(path):
                if name == "torch.load":
                    safe = isinstance(node, ast.Call) and any(
                        k.arg == "weights_only" and isinstance(k.value, ast.Constant) and k.value.value is True
                        for k in node.keywords
                    )
                    if not safe:
                        offenders.append(f"{rel}:{line}: torch.load without weights_only=True")
                elif name.startswith("pickle.") and name.split(".")[1] in UNPICKLERS and rel not in ALLOWED_PICKLE:
                    offenders.append(f"{rel}:{line}: {name} (unpickling runs the data's code)")
    assert not offenders, "\n".join(offenders)
