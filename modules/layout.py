"""The shape of the pooled sparse features a dense arch receives (no TorchRec here).

Kept apart from ``embeddings.py`` so dense arches can be built without TorchRec installed, e.g. on a
GPU machine that only has plain torch (``benchmarks/mfu_gpu.py``).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PooledLayout:
    """Order and widths of the pooled sparse features the sparse arch emits."""

    feature_names: tuple[str, ...]
    feature_dims: tuple[int, ...]

    @property
    def total_dim(self) -> int:
        """Width of the concatenated pooled output."""
        return sum(self.feature_dims)

    @property
    def num_features(self) -> int:
        """Number of pooled features F."""
        return len(self.feature_names)

    def uniform_dim(self) -> int | None:
        """The common embedding dim when every feature has the same one, else None."""
        dims = set(self.feature_dims)
        return dims.pop() if len(dims) == 1 else None
