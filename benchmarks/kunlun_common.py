"""Shared by the Kunlun benchmarks: production-like shapes and a TorchRec-free way to build the dense arch.

The GPU benchmark machine has plain torch only, so nothing here imports TorchRec: the dense arch
is built through ``recscale.modules.kunlun.spec.build_kunlun`` with a duck-typed input layout.
The dense arches and their input shapes (``ModelInputs``, ``PooledLayout``) import no TorchRec. When
recscale is not installed (a bare checkout), ``bootstrap()`` maps ``recscale.<folder>`` onto
the repository's top-level folders, as the installed package does.
"""

from __future__ import annotations

import importlib.util
import sys
import types
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def bootstrap() -> None:
    """Make ``import recscale.modules...`` work from a bare checkout (no pip install)."""
    if "recscale" in sys.modules or importlib.util.find_spec("recscale") is not None:
        return  # installed, or mapped by an earlier call
    pkg = types.ModuleType("recscale")
    pkg.__path__ = [str(ROOT)]  # recscale.modules -> ROOT/modules, recscale.configs -> ROOT/configs
    sys.modules["recscale"] = pkg


@dataclass(frozen=True)
class Shapes:
    """One Kunlun configuration at benchmark scale."""

    seq_len: int = 1000
    dim: int = 256
    num_heads: int = 4
    num_layers: int = 4
    num_seeds: int = 64
    num_summary_tokens: int = 16
    num_sum_tokens: int = 16
    num_sparse: int = 64
    num_dense: int = 16
    num_experts: int = 4
    fmb_mlp: tuple[int, ...] = (1024, 1024)
    fm_rank: int = 32
    over_arch: tuple[int, ...] = (1024, 256)

    def as_dict(self) -> dict[str, object]:
        """JSON-friendly."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in self.__dict__.items()}


PRODUCTION = Shapes()
"""Production-like: one event type of 1,000 events, width 256, 4 Kunlun layers, 64 sparse features."""

TINY = Shapes(
    seq_len=32, dim=16, num_heads=2, num_layers=2, num_seeds=8, num_summary_tokens=2, num_sum_tokens=4,
    num_sparse=4, num_dense=4, num_experts=2, fmb_mlp=(32,), fm_rank=4, over_arch=(32,),
)  # fmt: skip
"""CPU smoke-test scale."""


def build_dense(shapes: Shapes, window: int = 0, compskip: bool = True, backend: str = "sdpa", rope: str = "none"):  # noqa: ANN201
    """``KunlunDense`` at ``shapes`` (on the current default device)."""
    bootstrap()
    from recscale.configs.schema import KunlunConfig, ModelConfig, MoWEConfig
    from recscale.modules.kunlun.spec import build_kunlun
    from recscale.modules.layout import PooledLayout
    from recscale.modules.registry import ModelInputs

    k = KunlunConfig(
        dim=shapes.dim,
        num_layers=shapes.num_layers,
        num_heads=shapes.num_heads,
        num_seeds=shapes.num_seeds,
        num_summary_tokens=shapes.num_summary_tokens,
        window=window,
        num_sum_tokens=shapes.num_sum_tokens,
        compskip=compskip,
        rope=rope,  # type: ignore[arg-type]
        attention_backend=backend,  # type: ignore[arg-type]
        mowe=MoWEConfig(num_experts=shapes.num_experts, fmb_mlp=list(shapes.fmb_mlp), fm_rank=shapes.fm_rank),
    )
    m = ModelConfig(arch="kunlun", dense_arch=[shapes.dim], over_arch=list(shapes.over_arch), kunlun=k)
    names = tuple(f"f{i}" for i in range(shapes.num_sparse))
    inputs = ModelInputs(
        num_dense=shapes.num_dense,
        pooled=PooledLayout(names, (shapes.dim,) * shapes.num_sparse),
        num_tasks=1,
        sequence_dims={"events": shapes.dim},
        sequence_lengths={"events": shapes.seq_len},
    )
    return build_kunlun(m, inputs)  # type: ignore[arg-type]
