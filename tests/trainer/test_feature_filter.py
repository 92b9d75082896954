"""Lattice's Filter: Pareto fronts, the Filter's random fill, the weighted-sum baseline, permuting one feature."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from recscale.configs import collect_problems, load_config
from recscale.configs.schema import TaskConfig
from recscale.data.batch import Batch
from recscale.launch.features_cli import parse_weights, selected_config
from recscale.trainer.feature_filter import (
    Candidate,
    candidates,
    filter_select,
    pareto_fronts,
    permutation_importance,
    permute_feature,
    row_permutation,
    weighted_top,
)
from tests.batches import random_batch, tiny_config


def _dominates(a: np.ndarray, b: np.ndarray) -> bool:
    return bool(np.all(a >= b) and np.any(a > b))


def _brute_fronts(F: np.ndarray) -> list[list[int]]:
    """The definition: front k = rows no remaining row dominates, once fronts 0..k-1 are removed."""
    remaining = list(range(len(F)))
    fronts = []
    while remaining:
        front = [i for i in remaining if not any(_dominates(F[k], F[i]) for k in remaining if k != i)]
        fronts.append(front)
        remaining = [i for i in remaining if i not in front]
    return fronts


@pytest.mark.parametrize("seed", range(12))
def test_pareto_fronts_match_the_brute_force_definition(seed):
    rng = np.random.default_rng(seed)
    m, n = int(rng.integers(1, 40)), int(rng.integers(1, 5))
    F = rng.integers(0, 4, size=(m, n)).astype(float)  # few levels: many ties and equal rows
    if seed % 3 == 0:
        F = rng.random((m, n))
    if m > 3:
        F[1] = F[0]  # an exact duplicate
    fronts = pareto_fronts(F)
    assert fronts == _brute_fronts(F)
    assert sorted(i for f in fronts for i in f) == list(range(m))
    for earlier, later in zip(fronts, fronts[1:]):  # everything after front 0 is dominated by the front before
        assert all(any(_dominates(F[k], F[i]) for k in earlier) for i in later)


def test_equal_rows_share_a_front_and_zeros_come_last():
    F = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 0.0], [0.5, 0.0]])
    assert pareto_fronts(F) == [[0, 1, 2], [4], [3]]


def _layered() -> np.ndarray:
    """Fronts of sizes 2, 3 and 5 on two tasks (anti-diagonals), then one all-zero row."""
    rows = [[3.0, 4.0], [4.0, 3.0]]
    rows += [[1.0, 3.0], [2.0, 2.0], [3.0, 1.0]]
    rows += [[0.0, 0.9], [0.2, 0.7], [0.4, 0.5], [0.6, 0.3], [0.9, 0.0]]
    return np.array([*rows, [0.0, 0.0]])


def test_filter_keeps_whole_early_fronts_and_fills_uniformly_from_the_overflowing_one():
    F = _layered()
    assert [len(f) for f in pareto_fronts(F)] == [2, 3, 5, 1]
    assert filter_select(F, 5, seed=0) == [0, 1, 2, 3, 4]  # two whole fronts, nothing sampled
    picks = [filter_select(F, 7, seed=s) for s in range(3000)]
    assert all(p[:5] == [0, 1, 2, 3, 4] and len(set(p)) == 7 and set(p[5:]) <= set(range(5, 10)) for p in picks)
    assert filter_select(F, 7, seed=11) == filter_select(F, 7, seed=11)  # deterministic by seed
    assert len({tuple(p) for p in picks}) == 10  # every pair of the 5 overflow rows is drawn
    counts = np.bincount([i for p in picks for i in p[5:]], minlength=10)[5:]
    expected = 3000 * 2 / 5
    assert np.all(np.abs(counts - expected) < 4 * np.sqrt(expected * 0.6))  # uniform: each row 2/5 of the time
    assert filter_select(F, 11, seed=0) == list(range(11))


def test_weighted_sum_drops_what_only_a_low_weight_task_needs_and_the_filter_keeps_it():
    # click features c0..c2 and one feature p that only the purchase task (weight 0.1) needs
    F = np.array([[0.30, 0.0], [0.20, 0.0], [0.10, 0.0], [0.0, 0.50]])
    assert weighted_top(F, [1.0, 0.1], 3) == [0, 1, 2]
    assert 3 in filter_select(F, 3, seed=0)
    assert filter_select(F, 3, seed=0) == [0, 3, 1]
    assert 3 in weighted_top(F, [1.0, 1.0], 3)  # with equal weights the baseline keeps it too


@pytest.mark.parametrize("budget", [0, 5, -1])
def test_a_budget_outside_the_candidates_is_refused(budget):
    with pytest.raises(ValueError, match="--budget"):
        filter_select(np.ones((4, 2)), budget)
    with pytest.raises(ValueError, match="--budget"):
        weighted_top(np.ones((4, 2)), [1.0, 1.0], budget)


def _rows(batch: Batch, key: str) -> list[list[int]]:
    jt = batch.sparse[key]
    return [t.tolist() for t in jt.to_dense()]


def test_permuting_a_sparse_feature_moves_whole_bags_and_nothing_else():
    cfg = tiny_config()
    batch = random_batch(cfg, 16, seed=3, max_ids=3)
    batch.weights[-3:] = 0  # padding rows stay in place
    perm = row_permutation(batch.weights, torch.Generator().manual_seed(0))
    assert sorted(perm.tolist()) == list(range(16)) and perm[-3:].tolist() == [13, 14, 15]
    assert perm[:13].tolist() != list(range(13))
    out = permute_feature(batch, Candidate("f2", "sparse"), perm)
    before, after = _rows(batch, "f2"), _rows(out, "f2")
    assert after == [before[p] for p in perm.tolist()]  # row r holds row perm[r]'s bag, lengths included
    assert sorted(map(tuple, after)) == sorted(map(tuple, before))
    assert after != before
    for key in ("f0", "f1", "f3"):
        assert _rows(out, key) == _rows(batch, key)
    assert out.sparse.keys() == batch.sparse.keys()
    assert torch.equal(out.sparse.lengths().sum(), batch.sparse.lengths().sum())
    for name in ("dense", "labels", "weights"):
        assert torch.equal(getattr(out, name), getattr(batch, name))


def test_permuting_a_dense_column_moves_that_column_only():
    cfg = tiny_config()
    batch = random_batch(cfg, 16, seed=4)
    perm = row_permutation(batch.weights, torch.Generator().manual_seed(1))
    out = permute_feature(batch, Candidate("d1", "dense", 1), perm)
    assert torch.equal(out.dense[:, 1], batch.dense[perm, 1])
    assert torch.equal(out.dense[:, [0, 2]], batch.dense[:, [0, 2]])
    assert torch.equal(out.labels, batch.labels)
    assert torch.equal(out.sparse.values(), batch.sparse.values())
    assert not torch.equal(out.dense[:, 1], batch.dense[:, 1])
    assert [c.name for c in candidates(cfg.data.features)] == ["f0", "f1", "f2", "f3", "d0", "d1", "d2"]


def test_importance_is_the_mean_rise_clipped_at_zero_with_its_spread():
    cfg = tiny_config()
    batches = [random_batch(cfg, 32, seed=s) for s in range(3)]
    for b in batches:
        b.dense[:, 0] = b.labels[:, 0]  # d0 carries the label of task a; task b reads its negation

    def evaluate(bs):
        agree = torch.cat([(b.dense[:, 0] == b.labels[:, 0]).float() for b in bs]).mean().item()
        return {"ne/a": 1.0 - 0.5 * agree, "ne/b": 0.5 + 0.5 * agree, "auc": 0.5}

    tasks = [TaskConfig(name="a"), TaskConfig(name="b", weight=0.5)]
    feats = candidates(cfg.data.features)
    imp = permutation_importance(evaluate, batches, feats, tasks, repeats=3, seed=0)
    d0 = imp.features.index("d0")
    assert imp.metrics == ["ne/a", "ne/b"] and imp.intact == [0.5, 1.0]
    assert imp.mean[d0, 0] > 0.1 and imp.mean[d0, 1] < -0.1  # permuting d0 hurts a, "helps" b
    assert imp.values[d0, 1] == 0.0 and imp.values[d0, 0] == imp.mean[d0, 0]
    assert imp.std[d0, 0] > 0
    others = [i for i in range(len(feats)) if i != d0]
    assert np.all(imp.mean[others] == 0) and np.all(imp.std[others] == 0)
    again = permutation_importance(evaluate, batches, feats, tasks, repeats=3, seed=0)
    assert np.array_equal(again.mean, imp.mean)


def test_weights_name_every_task():
    assert parse_weights("", ["click", "buy"], [1.0, 0.2]) == [1.0, 0.2]
    assert parse_weights("buy=0.5,click=2", ["click", "buy"], [1.0, 1.0]) == [2.0, 0.5]
    for bad in ("click=1", "click=1,shop=2", "click=x,buy=1", "click=-1,buy=1", "click"):
        with pytest.raises(ValueError, match="--weights"):
            parse_weights(bad, ["click", "buy"], [1.0, 1.0])


def test_the_selected_config_drops_features_and_the_tables_only_they_read():
    cfg = load_config("quickstart", ["sharding.constraints={t_context_3: {sharding_types: [table_wise]}}"])
    assert list(cfg.sharding.constraints) == ["t_context_3"]
    keep = {"user", "item", "context_0", "dense_1", "dense_3"}
    out = selected_config(cfg, keep, ("/data/train", "/data/valid"))
    f = out.data.features
    assert [s.name for s in f.sparse] == ["user", "item", "context_0"] and f.dense == ["dense_1", "dense_3"]
    assert [t.name for t in out.embeddings.tables] == ["t_user", "t_item", "t_context_0"]
    assert out.sharding.constraints == {}
    assert (out.data.source, out.data.train_path, out.data.valid_path) == ("parquet", "/data/train", "/data/valid")
    assert collect_problems(out) == []
    assert [s.name for s in cfg.data.features.sparse][-1] == "context_4"  # the input is not changed


def test_a_ranks_share_of_a_batch_is_its_rows_bags_and_weights_included():
    cfg = tiny_config()
    batch = random_batch(cfg, 12, seed=5, max_ids=3)
    kjt = batch.sparse
    weighted = type(kjt)(keys=kjt.keys(), values=kjt.values(), lengths=kjt.lengths(), weights=kjt.values() * 0.5)
    batch = Batch(batch.dense, weighted, batch.labels, batch.weights, domain=torch.arange(12))
    shares = [batch.rows(0, 4), batch.rows(4, 8), batch.rows(8, 12)]
    for key in batch.sparse.keys():
        assert sum((_rows(s, key) for s in shares), []) == _rows(batch, key)
        whole = batch.sparse[key].weights().tolist()
        assert sum((s.sparse[key].weights().tolist() for s in shares), []) == whole
    for name in ("dense", "labels", "weights", "domain"):
        assert torch.equal(torch.cat([getattr(s, name) for s in shares]), getattr(batch, name))
    assert shares[1].batch_size == 4 and shares[1].sparse.stride() == 4 and shares[1].oracle is None


def test_on_two_ranks_each_evaluates_its_half_of_the_one_process_permuted_batches():
    cfg = tiny_config()
    batches = [random_batch(cfg, 8, seed=s) for s in range(2)]
    batches[1].weights[-3:] = 0  # padding of the last batch: it stays in place, here on rank 1
    feats, tasks = candidates(cfg.data.features), [TaskConfig(name="a")]

    def recorder(seen):
        def evaluate(bs):
            seen.append(list(bs))
            return {"ne": 0.0}

        return evaluate

    one, halves = [], [[], []]
    permutation_importance(recorder(one), batches, feats, tasks, repeats=2, seed=7)
    for r in (0, 1):
        share = lambda b, r=r: b.rows(4 * r, 4 * r + 4)  # noqa: E731 - rank r's rows
        permutation_importance(recorder(halves[r]), batches, feats, tasks, repeats=2, seed=7, share=share)
    assert len(one) == len(halves[0]) == len(halves[1]) == 1 + len(feats) * 2
    for whole, low, high in zip(one, *halves):  # every pass, every batch: rank 0's rows then rank 1's
        for b, lo, hi in zip(whole, low, high):
            assert torch.equal(torch.cat([lo.dense, hi.dense]), b.dense)
            assert torch.equal(torch.cat([lo.weights, hi.weights]), b.weights)
            for key in b.sparse.keys():
                assert _rows(lo, key) + _rows(hi, key) == _rows(b, key)
