"""Managed-collision tables: raw 64-bit ids -> slots of a bounded table, before the tables are read.

A table with ``collisions: managed`` gets one TorchRec ``MCHManagedCollisionModule`` (managed-collision
hashing with sorted raw ids): every admitted id owns a slot (a row), ids not admitted share the last slot,
and every ``eviction_interval`` training steps the ids seen since the last round compete with the admitted
ones under the eviction policy (LFU, LRU or distance-weighted LFU); winners take the losers' slots.

Where it runs, and why: TorchRec's sharded managed-collision collection offers only row-wise sharding on
GPU (its sharder offers no sharding type on CPU). Here the remapper is **replicated**: every rank holds the
whole slot map and, in training, every rank profiles the *global* batch's ids (an all-gather of the managed
features' ids per step, in rank order, through ``exchange``), so all ranks make the same admissions and
evictions bit for bit;
each rank then remaps its own ids. The table itself is sharded like any other by the planner (table-,
column-, row-wise or data-parallel). Memory per rank: 3 x 8 bytes per slot (sorted raw ids, slot of each,
one policy statistic; distance LFU two).

Eviction rounds are ours: ids of the steps of one interval are collected here and given to the MCH module
in one profile call at the interval's last step (the module itself evicts at every call; a table's rounds
fall on the training steps that are multiples of its interval). So a checkpoint only needs the module's own
buffers, the ids collected since the last round and the step count, and a resumed run makes the same rounds
as an uninterrupted one. Recency (LRU, distance LFU) is counted in rounds.

When ``evicted_rows: reset`` the slots an eviction hands to new ids are reported to ``on_evict`` (the
trainer zeroes those rows and their optimizer state: ``recscale.modules.managed_rows``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import torch
from torch import nn
from torchrec.modules.mc_modules import (
    DistanceLFU_EvictionPolicy,
    LFU_EvictionPolicy,
    LRU_EvictionPolicy,
    MCHEvictionPolicy,
    MCHManagedCollisionModule,
)
from torchrec.sparse.jagged_tensor import JaggedTensor, KeyedJaggedTensor

from recscale.configs.schema import EmbeddingsConfig, FeatureSchemaConfig
from recscale.configs.schema.model import ManagedCollisionConfig

PROFILE_CHUNK = 1 << 20
"""Most ids given to one MCH profile call; a round with more ids is profiled in chunks of this size
(the module's history buffer is sized for exactly this many)."""


class IdExchange(Protocol):
    """What the remapper needs from the ranks (the collectives live in ``recscale.sharding``)."""

    def gather(self, ids: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Per table, every rank's ids ``[n_r]`` concatenated in rank order (the same on every rank)."""
        ...

    def sum_(self, counts: torch.Tensor) -> None:
        """Sum ``counts`` over the ranks, in place."""
        ...


def _bag(ids: torch.Tensor) -> JaggedTensor:
    """``ids`` ``[n]`` as one bag (MCH modules look only at the values)."""
    return JaggedTensor(values=ids, lengths=torch.tensor([ids.numel()], device=ids.device))


def eviction_policy(cfg: ManagedCollisionConfig) -> MCHEvictionPolicy:
    """TorchRec's eviction policy for ``managed.eviction``."""
    if cfg.eviction == "lru":
        return LRU_EvictionPolicy(decay_exponent=cfg.distance_decay)
    if cfg.eviction == "distance_lfu":
        return DistanceLFU_EvictionPolicy(decay_exponent=cfg.distance_decay)
    return LFU_EvictionPolicy()


class ManagedIds(nn.Module):
    """Remaps the raw ids of the features of ``collisions: managed`` tables to slots (a KJT in, a KJT out).

    Example::

        managed = ManagedIds({"user": (cfg, 1000)}, {"user": ["user_id"]}, device=torch.device("cpu"))
        slots = managed(kjt)   # a KJT of user_id only, its values now in [0, 1000)

    Args:
        tables: table name -> (its ``managed`` config, its rows = slots).
        readers: table name -> the sparse features that read it.
        device: where the slot maps live (the batch's device; build it there, see ``on``).
    """

    def __init__(
        self,
        tables: dict[str, tuple[ManagedCollisionConfig, int]],
        readers: dict[str, list[str]],
        device: torch.device,
    ) -> None:
        super().__init__()
        self.configs = {name: cfg for name, (cfg, _) in tables.items()}
        self.rows = {name: rows for name, (_, rows) in tables.items()}
        self.readers = {name: list(readers[name]) for name in tables}
        self.device = device
        self.mch = nn.ModuleDict({name: self._new_module(name) for name in tables})
        self.table_of = {f: t for t, fs in self.readers.items() for f in fs}
        self.exchange: IdExchange | None = None
        """How the ranks share their training ids and counts (``recscale.sharding.managed_exchange``);
        None: this process's ids only (one rank, or an unsharded reference)."""
        self.on_evict: Callable[[str, torch.Tensor], None] | None = None
        """Called with (table, slots handed to new ids) when ``evicted_rows: reset``."""
        self._pending: dict[str, list[torch.Tensor]] = {name: [] for name in tables}
        self._steps = 0  # training steps recorded (table t runs a round when it is a multiple of its interval)
        self._lookups = {name: 0 for name in tables}  # training lookups of the log window, this rank
        self._misses = {
            name: torch.zeros((), dtype=torch.int64, device=device) for name in tables
        }  # on the shared slot
        self._reassigned = {name: 0 for name in tables}  # slots that changed owner in the window's rounds

    def _new_module(self, table: str) -> MCHManagedCollisionModule:
        cfg = self.configs[table]
        module = MCHManagedCollisionModule(
            zch_size=self.rows[table],
            device=self.device,
            eviction_policy=eviction_policy(cfg),
            eviction_interval=1,  # rounds are ours (see the module docstring)
            input_hash_size=cfg.input_hash_size,
            name=table,
        )
        # private: size the module's history buffer for PROFILE_CHUNK ids (tests/modules/test_managed_ids.py)
        module._init_history_buffers({table: _bag(torch.empty(PROFILE_CHUNK, dtype=torch.int64))})
        return module

    def on(self, device: torch.device) -> ManagedIds:
        """A fresh remapper like this one on ``device``.

        MCH modules keep history buffers that ``.to()`` does not move, so a remapper is built where it runs.
        """
        if torch.device(device) == torch.device(self.device):
            return self
        tables = {t: (self.configs[t], self.rows[t]) for t in self.configs}
        return ManagedIds(tables, self.readers, torch.device(device))

    def forward(self, features: KeyedJaggedTensor) -> KeyedJaggedTensor:
        """The managed features of ``features`` (in its key order), their raw ids replaced by slots ``[0, rows)``.

        In training (``self.training``) the ids are first recorded, and at the end of each interval a round runs.
        """
        order = [i for i, key in enumerate(features.keys()) if key in self.table_of]
        ours = features.permute(order)
        keys, offsets, values = ours.keys(), ours.offset_per_key(), ours.values()
        local: dict[str, list[tuple[int, torch.Tensor]]] = {t: [] for t in self.mch}
        for i, key in enumerate(keys):
            table = self.table_of[key]
            local[table].append(
                (i, torch.remainder(values[offsets[i] : offsets[i + 1]], self.configs[table].input_hash_size))
            )
        if self.training:
            self._record({t: torch.cat([v for _, v in parts]) if parts else values[:0] for t, parts in local.items()})
        pieces: list[torch.Tensor] = [values[:0]] * len(keys)
        for table, parts in local.items():
            module = self.mch[table]
            for i, ids in parts:
                pieces[i] = module.remap({table: _bag(ids)})[table].values()
                if self.training:  # device-side counts: no host read in the step
                    self._lookups[table] += ids.numel()
                    self._misses[table] += (pieces[i] == self.rows[table] - 1).sum()
        return KeyedJaggedTensor(
            keys=keys,
            values=torch.cat(pieces) if pieces else values,
            lengths=ours.lengths(),
            weights=ours.weights_or_none(),
            stride=ours.stride(),
            length_per_key=ours.length_per_key(),
            offset_per_key=offsets,
        )

    # ------------------------------------------------------------------------------ rounds

    def _record(self, ids: dict[str, torch.Tensor]) -> None:
        """Collect this step's global ids; a table whose interval ends at this step runs a round."""
        self._steps += 1
        for table, step_ids in (ids if self.exchange is None else self.exchange.gather(ids)).items():
            self._pending[table].append(step_ids)
            if self._steps % self.configs[table].eviction_interval == 0:
                self._round(table)

    @torch.no_grad()
    def _round(self, table: str) -> None:
        """Profile ``table``'s collected ids (admissions and evictions); report the slots that changed owner."""
        module = self.mch[table]
        ids = torch.cat(self._pending[table])
        self._pending[table] = []
        for start in range(0, ids.numel(), PROFILE_CHUNK):
            chunk = ids[start : start + PROFILE_CHUNK]
            module.profile({table: _bag(chunk)})
            evicted = module.evict()
            if evicted is None:
                continue
            self._reassigned[table] += evicted.numel()
            if evicted.numel() and self.on_evict is not None and self.configs[table].evicted_rows == "reset":
                self.on_evict(table, evicted)

    # ------------------------------------------------------------------------------ telemetry

    def window_record(self) -> dict[str, float]:
        """What the tables did since the last call, over every rank (a collective; resets the window).

        Per table: ``managed/<t>/miss_rate`` (share of training lookups that read the shared slot: ids not
        admitted), ``managed/<t>/admitted`` (slots owned by an id now, of ``rows - 1``) and
        ``managed/<t>/reassigned`` (slots handed to a new id in the window's rounds, empty slots included).
        """
        tables = list(self.mch)
        counts = torch.stack(
            [torch.stack([self._misses[t], torch.tensor(self._lookups[t], device=self.device)]) for t in tables]
        )
        if self.exchange is not None:
            self.exchange.sum_(counts)
        out: dict[str, float] = {}
        for (misses, lookups), table in zip(counts.tolist(), tables, strict=True):
            out[f"managed/{table}/miss_rate"] = misses / lookups if lookups else float("nan")
            out[f"managed/{table}/admitted"] = float(len(self.slot_map(table)[0]))
            out[f"managed/{table}/reassigned"] = float(self._reassigned[table])
            self._lookups[table], self._reassigned[table] = 0, 0
            self._misses[table].zero_()
        return out

    # ------------------------------------------------------------------------------ state

    def state(self) -> dict[str, Any]:
        """Everything a resumed run needs to make the same rounds.

        Per table its module's buffers and the ids collected since its last round (``pending``); and the
        training steps recorded so far (``steps``), which place every table's rounds.
        """
        out: dict[str, Any] = {"steps": self._steps}
        for table, module in self.mch.items():
            pending = self._pending[table]
            out[table] = {
                **module.state_dict(),
                "pending": torch.cat(pending) if pending else torch.empty(0, dtype=torch.int64, device=self.device),
            }
        return out

    def load_state(self, state: dict[str, Any]) -> None:
        """Take ``state`` (from ``state``) into fresh modules, as a resumed run starts.

        Raises:
            ValueError: when ``state`` lacks a managed table or a table's slots differ from the config.
        """
        for table in self.mch:
            module = self._new_module(table)
            wanted = module.state_dict()
            saved = state.get(table, {})
            if "_mch_sorted_raw_ids" not in saved:
                raise ValueError(
                    f"embeddings.tables ({table}): the checkpoint has no managed-collision state for this table"
                )
            slots = saved["_mch_sorted_raw_ids"].shape[0]
            if slots != self.rows[table]:
                raise ValueError(
                    f"embeddings.tables ({table}).num_embeddings: the checkpoint's managed table has {slots} "
                    f"slots, the config {self.rows[table]}"
                )
            if set(saved) - {"pending"} != set(wanted):
                raise ValueError(
                    f"embeddings.tables ({table}).managed.eviction: the checkpoint's statistics are of another "
                    f"eviction policy than {self.configs[table].eviction!r}"
                )
            module.load_state_dict({n: saved[n] for n in wanted})
            module.train(self.training)
            self.mch[table] = module
            pending = saved.get("pending")
            keep = isinstance(pending, torch.Tensor) and pending.numel() > 0
            self._pending[table] = [pending.to(self.device)] if keep else []
        self._steps = int(state.get("steps", 0))

    def slot_map(self, table: str) -> tuple[torch.Tensor, torch.Tensor]:
        """The admitted ids of ``table`` and their slots, sorted by id (``[n]``, ``[n]``; empty slots left out).

        What serving needs to remap raw ids without TorchRec (any other id reads slot ``rows - 1``).
        """
        state = self.mch[table].state_dict()
        ids, slots = state["_mch_sorted_raw_ids"], state["_mch_remapped_ids_mapping"]
        used = ids != torch.iinfo(torch.int64).max
        return ids[used].clone(), slots[used].clone()


def build_managed_ids(emb: EmbeddingsConfig, features: FeatureSchemaConfig, device: torch.device) -> ManagedIds | None:
    """The remapper of the job's ``collisions: managed`` tables, or None when there is none."""
    tables = {t.name: (t.managed, t.num_embeddings) for t in emb.tables if t.collisions == "managed"}
    if not tables:
        return None
    readers: dict[str, list[str]] = {name: [] for name in tables}
    for f in features.sparse:
        if f.table in readers:
            readers[f.table].append(f.name)
    return ManagedIds(tables, readers, device)
