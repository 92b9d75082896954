"""The collectives of the replicated managed-collision remapper (``recscale.modules.managed_ids``).

Every rank profiles the global batch's ids, so each step the ranks swap the managed features' ids: two
all-gathers whatever the number of tables (the ``[tables]`` sizes, then every table's ids of each rank
in one padded buffer), concatenated per table in rank order. At a log boundary the tables' lookup and
miss counts are summed over the ranks.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


class GroupExchange:
    """``IdExchange`` over a process group.

    Args:
        group: the ranks that train together (the default group).
    """

    def __init__(self, group: dist.ProcessGroup) -> None:
        self.group = group
        self.world = dist.get_world_size(group)

    def gather(self, ids: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Per table, every rank's ids concatenated in rank order (identical on every rank)."""
        tables = list(ids)
        device = next(iter(ids.values())).device
        size = torch.tensor([ids[t].numel() for t in tables], dtype=torch.int64, device=device)
        sizes = [torch.empty_like(size) for _ in range(self.world)]
        dist.all_gather(sizes, size, group=self.group)
        counts = torch.stack(sizes).tolist()  # [world][tables]: the step's one host read of sizes
        flat = torch.cat([ids[t] for t in tables])
        padded = torch.zeros(max(sum(c) for c in counts), dtype=flat.dtype, device=device)
        padded[: flat.numel()] = flat
        gathered = [torch.empty_like(padded) for _ in range(self.world)]
        dist.all_gather(gathered, padded, group=self.group)
        out: dict[str, list[torch.Tensor]] = {t: [] for t in tables}
        for rank_ids, rank_counts in zip(gathered, counts, strict=True):
            for t, piece in zip(tables, rank_ids[: sum(rank_counts)].split(rank_counts), strict=True):
                out[t].append(piece)
        return {t: torch.cat(pieces) for t, pieces in out.items()}

    def sum_(self, counts: torch.Tensor) -> None:
        """Sum ``counts`` over the ranks, in place."""
        dist.all_reduce(counts, group=self.group)
