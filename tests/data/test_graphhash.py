"""GraphHash (``data.convert.fields``): Louvain on the positive user-item graph, the community maps, the converter.

Partitions are checked against planted communities, Barber's modularity against a hand computation over a
networkx graph (and random partitions of the same sizes), and converted rows against the saved maps.
"""

from __future__ import annotations

import csv

import networkx as nx
import numpy as np
import pyarrow.parquet as pq
import pytest

from recscale.configs import config_from_dict
from recscale.configs.loader import ConfigError
from recscale.configs.schema import GraphHashConfig
from recscale.configs.validate import validate
from recscale.data import DataError, convert_csv
from recscale.data.graphhash import (
    CommunityMap,
    EdgeCounter,
    biadjacency,
    bipartite_modularity,
    build_maps,
    cold_rows,
    louvain_partition,
)
from recscale.data.hashing import hash_strings, mix64
from tests.data.helpers import shared_data


def planted_edges(blocks: int, users: int, items: int, p_in: float, p_out: float, seed: int = 0):
    """Positive pairs of a planted bipartite graph: user u and item i are in block u % blocks, i % blocks."""
    rng = np.random.default_rng(seed)
    u, i = np.meshgrid(np.arange(users), np.arange(items), indexing="ij")
    same = u % blocks == i % blocks
    draws = rng.poisson(np.where(same, p_in, p_out))  # counts: a pair may have several positive rows
    u, i = np.repeat(u.ravel(), draws.ravel()), np.repeat(i.ravel(), draws.ravel())
    return u.astype(np.uint64), (1000 + i).astype(np.uint64)


def test_louvain_recovers_two_planted_communities():
    users, items = planted_edges(2, 20, 30, 1.5, 0.05)
    counter = EdgeCounter()
    counter.add(users, items)
    matrix, user_keys, item_keys = biadjacency(*counter.pairs(), binarize=False)
    user_labels, item_labels = louvain_partition(matrix, resolution=1.0, seed=0)
    user_block, item_block = user_keys.astype(np.int64) % 2, (item_keys.astype(np.int64) - 1000) % 2
    for block in (0, 1):  # each planted block is one community, on both sides
        assert len(set(user_labels[user_block == block])) == 1
        assert set(item_labels[item_block == block]) == set(user_labels[user_block == block])
    assert user_labels[user_block == 0][0] != user_labels[user_block == 1][0]


def barber_by_hand(graph: nx.Graph, community: dict, resolution: float) -> float:
    """Q_B over every (user, item) pair of a networkx graph: sum (A_ui - gamma k_u d_i / m) [c_u == c_i] / m."""
    users = [n for n, side in graph.nodes(data="side") if side == "user"]
    items = [n for n, side in graph.nodes(data="side") if side == "item"]
    m = graph.size(weight="weight")
    degree = dict(graph.degree(weight="weight"))
    total = 0.0
    for u in users:
        for i in items:
            if community[u] == community[i]:
                weight = graph[u][i]["weight"] if graph.has_edge(u, i) else 0.0
                total += weight - resolution * degree[u] * degree[i] / m
    return total / m


def test_modularity_of_the_partition_beats_random_partitions_of_the_same_sizes():
    users, items = planted_edges(4, 24, 36, 0.6, 0.08, seed=1)
    counter = EdgeCounter()
    counter.add(users, items)
    matrix, user_keys, item_keys = biadjacency(*counter.pairs(), binarize=False)
    user_labels, item_labels = louvain_partition(matrix, resolution=1.0, seed=3)
    graph = nx.Graph()
    graph.add_nodes_from((f"u{k}" for k in user_keys), side="user")
    graph.add_nodes_from((f"i{k}" for k in item_keys), side="item")
    coo = matrix.tocoo()
    graph.add_weighted_edges_from(
        (f"u{user_keys[r]}", f"i{item_keys[c]}", w) for r, c, w in zip(coo.row, coo.col, coo.data)
    )

    def scores(u_labels, i_labels):
        community = {f"u{k}": int(c) for k, c in zip(user_keys, u_labels)}
        community |= {f"i{k}": int(c) for k, c in zip(item_keys, i_labels)}
        parts = [{n for n, c in community.items() if c == label} for label in set(community.values())]
        ours = bipartite_modularity(matrix, u_labels, i_labels, 1.0)
        assert ours == pytest.approx(barber_by_hand(graph, community, 1.0), abs=1e-12)
        return ours, nx.community.modularity(graph, parts, weight="weight")

    found_qb, found_newman = scores(user_labels, item_labels)
    rng = np.random.default_rng(0)
    labels = np.r_[user_labels, item_labels]
    for _ in range(10):  # the same community sizes, members drawn at random
        shuffled = rng.permutation(labels)
        random_qb, random_newman = scores(shuffled[: len(user_keys)], shuffled[len(user_keys) :])
        assert found_qb > random_qb + 0.2 and found_newman > random_newman + 0.2
    planted_qb, _ = scores(user_keys.astype(np.int64) % 4, (item_keys.astype(np.int64) - 1000) % 4)
    assert found_qb >= planted_qb - 0.01 and planted_qb > 0.4  # as good as the planted blocks


def test_the_partition_is_a_function_of_the_seed():
    users, items = planted_edges(5, 30, 40, 0.4, 0.1, seed=2)
    counter = EdgeCounter()
    counter.add(users, items)
    config = GraphHashConfig(resolution=2.0, seed=7)
    first, second = build_maps(counter, config), build_maps(counter, config)
    for a, b in zip(first[:2], second[:2]):
        assert np.array_equal(a.keys, b.keys) and np.array_equal(a.rows, b.rows)
    assert first[2]["modularity"] == second[2]["modularity"] and first[2]["fingerprint"] == second[2]["fingerprint"]


def test_edge_counts_merge_across_blocks_and_binarize_weighs_pairs_once():
    users, items = planted_edges(3, 10, 12, 2.0, 0.3, seed=4)
    whole, chunks = EdgeCounter(), EdgeCounter()
    whole.add(users, items)
    for part in np.array_split(np.arange(len(users)), 7):
        chunks.add(users[part], items[part])
    for a, b in zip(whole.pairs(), chunks.pairs()):
        assert np.array_equal(a, b)
    pairs = {(int(u), int(i)) for u, i in zip(users, items)}
    _, _, counts = whole.pairs()
    assert len(counts) == len(pairs) and counts.sum() == len(users) == whole.positive_rows
    assert biadjacency(*whole.pairs(), binarize=True)[0].sum() == len(pairs)
    assert biadjacency(*whole.pairs(), binarize=False)[0].sum() == len(users)


def test_every_key_lands_in_range_and_unseen_keys_in_the_cold_block():
    users, items = planted_edges(4, 40, 50, 0.3, 0.05, seed=5)
    counter = EdgeCounter()
    counter.add(users, items)
    user_map, item_map, info = build_maps(counter, GraphHashConfig(resolution=1.0, seed=0))
    assert cold_rows(126, 0.01, 8) == 8 and cold_rows(1001, 0.01, 8) == 11
    unseen = np.arange(10**6, 10**6 + 500, dtype=np.uint64)
    for found, known in ((user_map, np.unique(users)), (item_map, np.unique(items))):
        assert found.cold == cold_rows(found.communities, 0.01, 8)
        rows = found.lookup(known)
        assert np.array_equal(rows, found.rows) and rows.max() < found.communities
        cold = found.lookup(unseen)
        expected = found.communities + (mix64(unseen) % np.uint64(found.cold)).astype(np.int64)
        assert np.array_equal(cold, expected) and cold.min() >= found.communities and cold.max() < found.size
        assert len(np.unique(cold)) == found.cold  # 500 keys fill every cold row
    assert info["positive_rows"] == len(users) and info["users"] == len(np.unique(users))


# ---------------------------------------------------------------------------------------------- converter


def tiny_csv(path, rows: int = 400, seed: int = 0) -> list[dict]:
    """Two planted communities: users a0..a9 like items x0..x9, users b0..b9 like y0..y9 (label 1)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(rows):
        side = rng.integers(2)
        user = f"{'ab'[side]}{rng.integers(10)}"
        liked = rng.random() < 0.5
        item_side = side if liked else 1 - side
        out.append(
            {
                "label": int(liked),
                "user": user,
                "item": f"{'xy'[item_side]}{rng.integers(10)}",
                "ctx": str(rng.integers(50)),
            }
        )
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["label", "user", "item", "ctx"])
        writer.writeheader()
        writer.writerows(out)
    return out


def tiny_config(tmp_path, user_rows: int = 10, **convert):
    return config_from_dict(
        {
            "name": "graphhash_tiny",
            "data": {
                "source": "parquet",
                "train_path": str(tmp_path / "out" / "train"),
                "valid_path": str(tmp_path / "out" / "valid"),
                "features": {
                    "labels": ["label"],
                    "sparse": [
                        {"name": "user", "table": "t_user"},
                        {"name": "user_hash", "table": "t_user_hash"},
                        {"name": "item", "table": "t_item"},
                        {"name": "ctx", "table": "t_ctx"},
                    ],
                },
                "convert": {
                    "categorical": "vocab",
                    "fields": {
                        "user": {"remap": "double_graphhash", "hash_feature": "user_hash"},
                        "item": {"remap": "graphhash"},
                        "ctx": {"remap": "modulo"},
                    },
                    "graphhash": {"user": "user", "item": "item", "resolution": 1.0, "seed": 0},
                    **convert,
                },
            },
            "embeddings": {
                "dim": 4,
                "tables": [
                    {"name": "t_user", "num_embeddings": user_rows},
                    {"name": "t_user_hash", "num_embeddings": 10},
                    {"name": "t_item", "num_embeddings": 12},
                    {"name": "t_ctx", "num_embeddings": 7},
                ],
            },
        }
    )


def test_the_converter_writes_community_rows_hash_rows_and_modulo_rows(tmp_path):
    train = tiny_csv(tmp_path / "train.csv")
    valid = tiny_csv(tmp_path / "valid.csv", rows=50, seed=1)
    valid[0]["user"] = "new_user"  # unseen in training: the cold block
    with (tmp_path / "valid.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(valid[0]))
        writer.writeheader()
        writer.writerows(valid)
    cfg = tiny_config(tmp_path)
    validate(cfg)
    stats = convert_csv(
        [tmp_path / "train.csv"],
        tmp_path / "out",
        cfg.data,
        cfg.embeddings,
        valid_inputs=[tmp_path / "valid.csv"],
        progress=False,
    )
    user_map = CommunityMap.load(tmp_path / "out" / "graphhash" / "user.npz")
    item_map = CommunityMap.load(tmp_path / "out" / "graphhash" / "item.npz")
    assert user_map.communities == item_map.communities == 2 and user_map.cold == item_map.cold == 8
    for split, rows in (("train", train), ("valid", valid)):
        table = pq.read_table(tmp_path / "out" / split).to_pydict()
        users = hash_strings([r["user"] for r in rows])
        assert table["user"] == user_map.lookup(users).tolist()
        assert table["user_hash"] == (mix64(users) % np.uint64(10)).astype(np.int64).tolist()
        assert table["item"] == item_map.lookup(hash_strings([r["item"] for r in rows])).tolist()
        assert table["ctx"] == (hash_strings([r["ctx"] for r in rows]) % np.uint64(7)).astype(np.int64).tolist()
    table = pq.read_table(tmp_path / "out" / "train").to_pydict()
    community = {r["user"][0]: set() for r in train} | {r["item"][0]: set() for r in train}
    for r, u, i in zip(train, table["user"], table["item"]):
        community[r["user"][0]].add(u)
        community[r["item"][0]].add(i)
    assert all(len(rows) == 1 for rows in community.values())  # the planted groups, one row each
    assert community["a"] != community["b"] and community["a"] == community["x"] and community["b"] == community["y"]
    assert pq.read_table(tmp_path / "out" / "valid").column("user")[0].as_py() >= 2  # new_user: a cold row
    assert stats["remap"]["user"] == {
        "remap": "graphhash",
        "table_rows": 10,
        "rows_needed": 10,
        "communities": 2,
        "cold_rows": 8,
        "full_rows": 22,
        "rows_saved": 12,
        "saved_fraction": round(1 - 10 / 22, 4),
    }
    positives = [(r["user"], r["item"]) for r in train if r["label"] == 1]
    assert stats["graphhash"]["positive_rows"] == len(positives) and stats["graphhash"]["edges"] == len(set(positives))
    assert stats["remap"]["user_hash"]["remap"] == "hash"
    assert stats["remap_spec"]["user_hash"] == {"remap": "hash", "rows": 10, "source": "user"}


def test_a_table_too_small_and_bad_options_are_one_line_errors(tmp_path):
    tiny_csv(tmp_path / "train.csv")
    cfg = tiny_config(tmp_path, user_rows=9)
    with pytest.raises(
        DataError,
        match=r"column 'user': GraphHash needs 10 rows \(2 communities \+ 8 cold rows\) "
        r"but table 't_user' has 9; set embeddings.tables\[t_user\].num_embeddings to 10",
    ):
        convert_csv([tmp_path / "train.csv"], tmp_path / "out", cfg.data, cfg.embeddings, progress=False)
    bad = tiny_config(tmp_path, graphhash={"user": "user", "item": "ctx", "resolution": 0})
    with pytest.raises(ConfigError) as err:
        validate(bad)
    assert "data.convert.fields.item.remap: GraphHash maps only data.convert.graphhash.user or .item" in str(err.value)
    assert "data.convert.graphhash.resolution: expected > 0, got 0" in str(err.value)


def test_frappe_rows_convert_with_graphhash(tmp_path):
    frappe = shared_data("frappe_x1", "train.csv")
    lines = frappe.read_text().splitlines()[:20001]
    (tmp_path / "train.csv").write_text("\n".join(lines) + "\n")
    from recscale.configs import load_config

    cfg = load_config(
        "frappe",
        [
            "data.convert.fields={user: {remap: graphhash}, item: {remap: graphhash}}",
            "data.convert.graphhash={user: user, item: item, resolution: 5.0, seed: 0}",
        ],
    )
    stats = convert_csv([tmp_path / "train.csv"], tmp_path / "out", cfg.data, cfg.embeddings, progress=False)
    header = lines[0].split(",")
    rows = [dict(zip(header, line.split(","))) for line in lines[1:]]
    positives = {(r["user"], r["item"]) for r in rows if r["label"] == "1"}
    assert stats["graphhash"]["edges"] == len(positives)  # field-local ids: one node per (column, value)
    assert stats["graphhash"]["users"] == len({u for u, _ in positives})
    table = pq.read_table(tmp_path / "out" / "train")
    for name in ("user", "item"):
        entry = stats["remap"][name]
        column = table.column(name).to_numpy()
        assert column.min() >= 0 and column.max() < entry["rows_needed"] < entry["full_rows"]
        assert entry["full_rows"] == len({r[name] for r in rows}) + 2
