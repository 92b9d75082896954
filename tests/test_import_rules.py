"""Import rules that import-linter cannot express (it forbids only top-level external packages).

The layering of the packages: ``torch.distributed`` is never imported in ``modules/`` (single-device model code),
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


def test_dense_arches_build_without_torchrec():
    """The GPU benchmark machine has plain torch only: the registry and the dense arches must not need TorchRec."""
    code = (
        "import sys\n"
        "from recscale.configs import load_config\n"
        "from recscale.modules.layout import PooledLayout\n"
        "from recscale.modules.registry import ModelInputs, get_spec\n"
        "for preset in ('quickstart', 'wukong_synthetic', 'dcnv2_hilomoe', 'kunlun_synthetic'):\n"
        "    cfg = load_config(preset)\n"
        "    names = tuple(f.name for f in cfg.data.features.sparse)\n"
        "    layout = PooledLayout(names, (cfg.embeddings.dim,) * len(names))\n"
        "    seq = {q.name: cfg.embeddings.dim for q in cfg.data.features.sequences}\n"
        "    lens = {q.name: q.max_length for q in cfg.data.features.sequences}\n"
        "    inputs = ModelInputs(len(cfg.data.features.dense), layout, 1, seq, lens)\n"
        "    get_spec(cfg.model.arch).build(cfg.model, inputs)\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in ('torchrec', 'fbgemm_gpu'))\n"
        "assert not loaded, loaded\n"
    )
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
