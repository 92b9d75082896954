import numpy as np
import pytest
import torch

from recscale.data.partition import worker_batches, worker_batches_done
from tests.data.helpers import features, make_reader, rids, table, write_files

SIZES = [1000, 777, 1500]  # 3277 rows in 3 files, row groups of 128 (the last of each file shorter)
TOTAL = sum(SIZES)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_files(tmp_path_factory.mktemp("reader") / "train", SIZES, row_group_size=128)


def epoch_rows(path, world_size, **kwargs):
    """Per rank: the row numbers it read (real rows only) and its batch count."""
    out = []
    for rank in range(world_size):
        reader = make_reader(path, rank=rank, world_size=world_size, **kwargs)
        batches = list(reader)
        assert len(batches) == reader.num_batches()
        assert all(b.batch_size == reader.batch_size for b in batches)
        out.append((np.concatenate(rids(batches)), len(batches)))
    return out


@pytest.mark.parametrize("world_size", [2, 3])
@pytest.mark.parametrize(
    "mode,extra", [("train", {"tail": "pad"}), ("eval", {}), ("train", {"tail": "pad", "num_workers": 2})]
)
def test_every_row_is_read_exactly_once_across_ranks(data_dir, world_size, mode, extra):
    per_rank = epoch_rows(data_dir, world_size, mode=mode, **extra)
    union = np.concatenate([r for r, _ in per_rank])
    assert len(union) == TOTAL  # no duplicates ...
    assert np.array_equal(np.sort(union), np.arange(TOTAL))  # ... and nothing missing
    assert len({n for _, n in per_rank}) == 1  # every rank runs the same number of batches


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_drop_tail_gives_equal_full_batches_and_no_duplicates(data_dir, world_size):
    per_rank = epoch_rows(data_dir, world_size, tail="drop")
    counts = {n for _, n in per_rank}
    assert counts == {(TOTAL // world_size) // 64}
    union = np.concatenate([r for r, _ in per_rank])
    assert len(np.unique(union)) == len(union) == counts.pop() * 64 * world_size


def test_eval_mode_reads_in_file_order_and_pads_with_zero_weight(data_dir):
    reader = make_reader(data_dir, mode="eval", batch_size=500)
    batches = list(reader)
    assert np.array_equal(np.concatenate(rids(batches)), np.arange(TOTAL))
    last = batches[-1]
    real = TOTAL - 500 * (len(batches) - 1)
    assert last.weights[:real].eq(1).all() and last.weights[real:].eq(0).all()
    assert last.labels[real:].eq(0).all() and last.dense[real:].eq(0).all()
    lengths = last.sparse["a"].lengths()
    assert lengths[:real].eq(1).all() and lengths[real:].eq(0).all()


def test_a_rank_with_nothing_left_gets_padding_batches(tmp_path):
    path = write_files(tmp_path / "d", [10], row_group_size=10)
    per_rank = epoch_rows(path, 4, mode="eval", batch_size=8)
    assert [n for _, n in per_rank] == [1, 1, 1, 1]
    assert np.array_equal(np.sort(np.concatenate([r for r, _ in per_rank])), np.arange(10))


def test_shuffle_is_deterministic_from_the_seed(data_dir):
    def order(seed, epoch=0):
        reader = make_reader(data_dir, seed=seed)
        reader.set_epoch(epoch)
        return np.concatenate(rids(list(reader)))

    a, b, c = order(1), order(1), order(2)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)
    assert not np.array_equal(a, order(1, epoch=1))  # each epoch has its own order
    assert not np.array_equal(np.sort(a), a)  # actually shuffled, rows mixed across row groups
    first = a[:64]
    assert len(np.unique(first // 128)) > 1


def test_epochs_advance_and_differ(data_dir):
    reader = make_reader(data_dir)
    first = np.concatenate(rids(list(reader)))
    assert reader.state_dict()["epoch"] == 1 and reader.state_dict()["batches_done"] == 0
    second = np.concatenate(rids(list(reader)))
    assert not np.array_equal(first, second)
    assert len(np.unique(second)) == len(second) == len(first)  # the dropped tail differs per epoch


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("stop_after", [1, 7, 20])
def test_resume_after_k_batches_equals_the_uninterrupted_stream(data_dir, workers, stop_after):
    full = rids(list(make_reader(data_dir, num_workers=workers, tail="pad")))
    reader = make_reader(data_dir, num_workers=workers, tail="pad")
    states = []
    seen = []
    for batch in reader:
        seen.append(batch)
        states.append(reader.state_dict())
        if len(seen) == stop_after + 2:  # the trainer prefetches: it resumes from an older state
            break
    resumed = make_reader(data_dir, num_workers=workers, tail="pad")
    resumed.load_state_dict(states[stop_after - 1])
    rest = rids(list(resumed))
    assert len(rest) == len(full) - stop_after
    for got, want in zip(rest, full[stop_after:]):
        assert np.array_equal(got, want)


def test_resume_continues_into_the_next_epoch(data_dir):
    reader = make_reader(data_dir)
    n = reader.num_batches()
    list(reader)
    second = rids(list(reader))
    resumed = make_reader(data_dir)
    resumed.load_state_dict({**reader.state_dict(), "epoch": 0, "batches_done": n})  # end of epoch 0
    assert np.array_equal(np.concatenate(rids(list(resumed))), np.concatenate(second))


def test_state_dict_is_a_few_ints_of_the_position(data_dir):
    """Checkpoints take it after any batch: the position and what the stream depends on, no file state."""
    reader = make_reader(data_dir)
    it = iter(reader)
    next(it)
    next(it)
    state = reader.state_dict()
    assert set(state) == {"epoch", "batches_done", "world_size", "num_workers", "batch_size", "seed"}
    assert all(type(v) is int for v in state.values())
    assert (state["epoch"], state["batches_done"]) == (0, 2)


def test_resume_with_other_settings_is_refused_unless_not_strict(data_dir):
    reader = make_reader(data_dir, world_size=2)
    with pytest.raises(ValueError, match="world_size 3 -> 2"):
        reader.load_state_dict({**reader.state_dict(), "world_size": 3, "batches_done": 4})
    reader.load_state_dict({**reader.state_dict(), "world_size": 1, "batches_done": 10}, strict=False)
    assert reader.state_dict()["batches_done"] == 10 * reader.num_batches() // make_reader(data_dir).num_batches()


def test_worker_batch_runs_match_the_round_robin_order():
    for total in range(0, 23):
        for workers in (1, 2, 3, 4):
            runs = [worker_batches(total, workers, w) for w in range(workers)]
            assert runs[0][0] == 0 and runs[-1][1] == total
            assert all(a[1] == b[0] for a, b in zip(runs, runs[1:]))
            order = [runs[w][0] + r for r in range(total) for w in range(workers) if runs[w][0] + r < runs[w][1]]
            for k in range(total + 1):
                done = [worker_batches_done(k, workers, w, runs[w][1] - runs[w][0]) for w in range(workers)]
                consumed = sorted(order[:k])
                expected = [sum(1 for j in consumed if runs[w][0] <= j < runs[w][1]) for w in range(workers)]
                assert done == expected


def test_batch_contents_match_the_file(data_dir):
    reader = make_reader(data_dir, mode="eval", batch_size=1000)
    batch = next(iter(reader))
    source = table(1000, 0, seed=0)
    assert torch.equal(batch.labels[:, 0], torch.tensor(source.column("label").to_numpy(), dtype=torch.float32))
    assert torch.equal(batch.dense[:, 1], torch.tensor(source.column("d1").to_numpy()))
    a = batch.sparse["a"]
    assert torch.equal(a.values(), torch.tensor(source.column("a").to_numpy()))
    b = batch.sparse["b"]
    bags = source.column("b").to_pylist()
    assert b.lengths().tolist() == [min(len(x), 2) for x in bags]  # max_ids = 2 keeps the first two
    assert b.values().tolist() == [i for x in bags for i in x[:2]]
    assert batch.sparse.keys() == ["a", "b"] and batch.sparse.stride() == 1000
    assert batch.oracle is None and batch.sequences is None


def test_sequences_keep_the_newest_events_oldest_first(tmp_path):
    path = write_files(tmp_path / "s", [300], row_group_size=100, with_sequences=True)
    feats = features(with_sequences=True)
    batch = next(iter(make_reader(path, mode="eval", batch_size=300, feats=feats)))
    source = table(300, 0, seed=0, with_sequences=True)
    hist = source.column("hist").to_pylist()
    assert batch.sequences.keys() == ["click"]
    assert batch.sequences.lengths().tolist() == [min(len(h), 3) for h in hist]
    assert batch.sequences.values().tolist() == [i for h in hist for i in h[-3:]]
    times = source.column("hist_ts").to_pylist()
    assert batch.sequence_timestamps.values().tolist() == [t for ts in times for t in ts[-3:]]
    assert torch.equal(batch.sequence_timestamps.lengths(), batch.sequences.lengths())


def test_oracle_column_becomes_batch_oracle(tmp_path):
    path = write_files(tmp_path / "o", [200], row_group_size=64, oracle=True)
    batch = next(iter(make_reader(path, mode="eval", batch_size=200, feats=features(oracle="p"))))
    assert batch.oracle.shape == (200, 1)
    assert np.allclose(batch.oracle[:, 0].numpy(), table(200, 0, seed=0, oracle=True).column("p").to_numpy())


@pytest.mark.parametrize("hashing", ["modulo", "hash"])
def test_hashing_maps_big_and_negative_ids_into_the_table(tmp_path, hashing):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from recscale.configs.schema import SparseFeatureConfig
    from recscale.data.hashing import mix64

    ids = np.array([0, 5, 99, 100, 12345, -7, 2**62], dtype=np.int64)
    t = table(len(ids)).set_column(3, "a", pa.array(ids))
    pq.write_table(t, tmp_path / "h.parquet")
    feats = features()
    feats.sparse[0] = SparseFeatureConfig(name="a", table="ta", hashing=hashing)
    batch = next(iter(make_reader(tmp_path / "h.parquet", mode="eval", batch_size=len(ids), feats=feats)))
    got = batch.sparse["a"].values().numpy()
    if hashing == "modulo":
        assert got.tolist() == [int(i) % 100 for i in ids]  # Python modulo: non-negative
    else:
        assert got.tolist() == (mix64(ids) % np.uint64(100)).astype(np.int64).tolist()
        assert len(set(got.tolist())) > 3  # spread, not collapsed
    assert (got >= 0).all() and (got < 100).all()


def test_hash_is_stable_across_releases():
    from recscale.data.hashing import mix64

    # SplitMix64 finaliser of (x + golden ratio): fixed numbers, part of the on-disk meaning of hashing: hash
    got = mix64(np.array([0, 1, 2**40, -1], dtype=np.int64)).tolist()
    assert got == [0xE220A8397B1DCDAF, 10451216379200822465, 2296115805719413641, 16490336266968443936]
