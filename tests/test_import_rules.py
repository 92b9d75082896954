"""Import rules that import-linter cannot express (it forbids only top-level external packages).

DESIGN.md §1: ``torch.distributed`` is never imported in ``modules/`` (single-device model code),
and ``data/`` receives ranks as plain integers; neither may reach for ``torchrec.distributed``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = ("torch.distributed", "torchrec.distributed", "deepspeed", "torchx")


def imported_names(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append((node.lineno, node.module))
            out += [(node.lineno, f"{node.module}.{alias.name}") for alias in node.names]
    return out


@pytest.mark.parametrize("folder", ["modules", "data"])
def test_single_device_packages_do_not_import_distributed(folder):
    offenders = []
    for path in sorted((ROOT / folder).rglob("*.py")):
        for line, name in imported_names(path):
            if any(name == f or name.startswith(f + ".") for f in FORBIDDEN):
                offenders.append(f"{path.relative_to(ROOT)}:{line} imports {name}")
    assert not offenders, "\n".join(offenders)


def test_every_code_package_is_listed_in_pyproject():
    import tomllib

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    mapping = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    found = set()
    for package, folder in mapping.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder)
            found.add(".".join([package, *rel.parts]) if rel.parts else package)
    assert found == listed, (
        f"missing from [tool.setuptools] packages: {sorted(found - listed)}; stale: {sorted(listed - found)}"
    )
