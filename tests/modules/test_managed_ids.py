"""The managed-collision remapper on one process: who gets a slot, when, and exact resume; its config checks."""

from __future__ import annotations

import pytest
import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from recscale.configs import ConfigError, load_config, validate
from recscale.configs.schema.model import ManagedCollisionConfig
from recscale.modules.managed_ids import PROFILE_CHUNK, ManagedIds

A, B, C, D, E, F = (2**40 + 17 * k for k in range(6))


def kjt(user: list[int], item: list[int] | None = None) -> KeyedJaggedTensor:
    item = item if item is not None else [1] * len(user)
    return KeyedJaggedTensor.from_lengths_sync(
        keys=["user", "item"], values=torch.tensor(user + item), lengths=torch.ones(2 * len(user), dtype=torch.long)
    )


def remapper(rows: int = 5, **managed) -> ManagedIds:
    m = ManagedIds({"t_user": (ManagedCollisionConfig(**managed), rows)}, {"t_user": ["user"]}, torch.device("cpu"))
    return m.train()


def users(out: KeyedJaggedTensor) -> list[int]:
    return out.to_dict()["user"].values().tolist()


def test_the_most_frequent_ids_get_slots_and_the_rest_share_the_last():
    m = remapper(rows=5)  # 4 slots + the shared slot 4
    stream = [A] * 5 + [B] * 4 + [C] * 3 + [D] * 2 + [E, F]
    out = m(kjt(stream, list(range(len(stream)))))
    assert out.keys() == ["user"]  # only the managed features, as slots
    slot = dict(zip(stream, users(out)))
    assert sorted(slot[x] for x in (A, B, C, D)) == [0, 1, 2, 3]
    assert slot[E] == slot[F] == 4
    ids, slots = m.slot_map("t_user")
    assert ids.tolist() == sorted([A, B, C, D]) and [slot[i] for i in ids.tolist()] == slots.tolist()
    # evaluation remaps with the map as it is and admits nothing
    m.eval()
    assert users(m(kjt([E, E, E, A]))) == [4, 4, 4, slot[A]]
    assert m.slot_map("t_user")[0].tolist() == ids.tolist()


def test_a_round_runs_every_eviction_interval_steps():
    m = remapper(rows=5, eviction_interval=2)
    assert users(m(kjt([A, B]))) == [4, 4]  # collected, not yet profiled
    second = users(m(kjt([A, C])))  # the round: A, B, C admitted before this batch is remapped
    assert len(set(second)) == 2 and 4 not in second
    assert len(m.slot_map("t_user")[0]) == 3


def test_lfu_evicts_the_least_counted_and_reports_the_slots():
    m = remapper(rows=3)  # 2 slots
    reported = []
    m.on_evict = lambda table, slots: reported.append((table, sorted(slots.tolist())))
    m(kjt([A, A, A, B]))
    first = dict(zip([A, B], users(m.eval()(kjt([A, B])))))
    m.train()(kjt([C, C, C, C]))  # C outnumbers B (1) but not A (3 + 0)
    m.eval()
    after = dict(zip([A, B, C], users(m(kjt([A, B, C])))))
    assert after[A] == first[A] and after[B] == 2 and after[C] == first[B]  # C took B's slot
    assert reported == [("t_user", [0, 1]), ("t_user", [first[B]])]


def test_keep_reports_no_slots():
    m = remapper(rows=3, evicted_rows="keep")
    reported = []
    m.on_evict = lambda table, slots: reported.append(slots)
    m(kjt([A, B, C]))
    assert reported == []


def test_ids_are_taken_modulo_the_input_hash_size():
    m = remapper(rows=4, input_hash_size=1000)
    out = users(m(kjt([5, 1005, -995])))  # all three are id 5
    assert out[0] == out[1] == out[2] != 3


@pytest.mark.parametrize("eviction", ["lfu", "lru", "distance_lfu"])
def test_state_round_trip_continues_exactly(eviction):
    g = torch.Generator().manual_seed(0)
    batches = [((torch.rand(64, generator=g) ** 3) * 300).long().mul(7919).tolist() for _ in range(9)]
    m = remapper(rows=40, eviction=eviction, eviction_interval=3)
    outs, saved = [], None
    for k, b in enumerate(batches):
        if k == 4:  # one step into the second round
            saved = {
                t: ({n: x.clone() for n, x in v.items()} if isinstance(v, dict) else v) for t, v in m.state().items()
            }
        outs.append(users(m(kjt(b))))
    assert saved is not None and saved["steps"] == 4
    resumed = remapper(rows=40, eviction=eviction, eviction_interval=3)
    resumed.load_state(saved)
    assert [users(resumed(kjt(b))) for b in batches[4:]] == outs[4:]
    with pytest.raises(ValueError, match=r"embeddings.tables \(t_user\).num_embeddings: .* 40 slots, the config 30"):
        remapper(rows=30, eviction=eviction).load_state(saved)
    other = "lru" if eviction == "lfu" else "lfu"
    with pytest.raises(ValueError, match=r"\(t_user\).managed.eviction: the checkpoint's statistics"):
        remapper(rows=40, eviction=other).load_state(saved)


def test_private_history_buffer_is_sized_for_a_chunk():
    """Relies on TorchRec's private ``MCHManagedCollisionModule._init_history_buffers`` and
    ``_input_history_buffer_size`` (torchrec 1.8): if this fails, ``ManagedIds._new_module`` must change."""
    module = remapper().mch["t_user"]
    assert module._input_history_buffer_size == int(PROFILE_CHUNK * 1.25)


def _problems(*overrides: str) -> str:
    cfg = load_config("quickstart", ["embeddings.tables.0.collisions=managed", *overrides])
    with pytest.raises(ConfigError) as err:
        validate(cfg)
    return str(err.value)


def test_config_errors_name_the_key():
    assert "data.features.sparse[0] (user).hashing: table 't_user' is managed" in _problems(
        "data.features.sparse.0.hashing=modulo"
    )
    assert "embeddings.tables[0] (t_user).num_embeddings: a managed table needs at least 2 rows" in _problems(
        "embeddings.tables.0.num_embeddings=1"
    )
    assert "embeddings.tables[0] (t_user).managed.eviction_interval: expected >= 1" in _problems(
        "embeddings.tables.0.managed.eviction_interval=0"
    )
    validate(load_config("quickstart", ["embeddings.tables.0.collisions=managed"]))  # the plain case is fine


def test_window_record_counts_misses_admissions_and_reassignments():
    m = remapper(rows=3)  # 2 slots
    m(kjt([A, A, A, B, C, C]))  # A (3) and C (2) admitted; B misses
    m(kjt([B]))  # B (1) cannot beat C (2): a miss, no reassignment
    record = m.window_record()
    assert record == {
        "managed/t_user/miss_rate": 2 / 7,
        "managed/t_user/admitted": 2.0,
        "managed/t_user/reassigned": 2.0,
    }
    m.eval()(kjt([B, B]))  # evaluation lookups are not counted
    again = m.window_record()
    assert again["managed/t_user/reassigned"] == 0.0 and again["managed/t_user/admitted"] == 2.0
    assert again["managed/t_user/miss_rate"] != again["managed/t_user/miss_rate"]  # NaN: no training lookup


def test_each_table_runs_rounds_at_its_own_interval():
    fast, slow = ManagedCollisionConfig(eviction_interval=1), ManagedCollisionConfig(eviction_interval=2)
    m = ManagedIds(
        {"t_user": (fast, 4), "t_item": (slow, 4)}, {"t_user": ["user"], "t_item": ["item"]}, torch.device("cpu")
    )
    m.train()
    first = m(kjt([A, B], [C, D])).to_dict()
    assert 3 not in first["user"].values().tolist() and first["item"].values().tolist() == [3, 3]
    second = m(kjt([A, B], [C, D])).to_dict()  # step 2 ends t_item's first interval
    assert 3 not in second["item"].values().tolist()
    assert m.state()["steps"] == 2
