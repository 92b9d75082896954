"""Lattice's Partitioner (``recscale data partition``): the pair statistics by hand on a tiny Parquet file, the
grouping rule, and on the planted generator the report groups exactly the planted domain markets."""

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recscale.configs import load_config
from recscale.configs.schema import TaskConfig
from recscale.configs.validate import collect_problems
from recscale.data.partitioner import average_linkage, collect, report
from tests.data.test_data_cli import run

TASKS = [TaskConfig(name="click", label="click"), TaskConfig(name="buy", label="buy", given="click")]


def _tiny(tmp_path):
    """Domain 0: users 1, 1, 2 (item lists [5], [5, 6], []); domain 1: users 2, 3 (items [6], [7])."""
    table = pa.table(
        {
            "dom": pa.array([0, 0, 0, 1, 1], pa.int64()),
            "user": pa.array([1, 1, 2, 2, 3], pa.int64()),
            "item": pa.array([[5], [5, 6], [], [6], [7]], pa.list_(pa.int64())),
            "click": pa.array([1, 0, 0, 1, 1], pa.int8()),
            "buy": pa.array([1, 0, 0, 0, 0], pa.int8()),
            "delay": pa.array([100.0, None, None, 300.0, None], pa.float32()),
        }
    )
    (tmp_path / "train").mkdir()
    pq.write_table(table, tmp_path / "train" / "part-0.parquet")
    return tmp_path / "train"


def test_pair_statistics_equal_a_hand_computation(tmp_path):
    stats = collect(_tiny(tmp_path), "dom", 2, ["user", "item"], TASKS, "delay")
    got = report(stats, ["feed", "search"], TASKS, min_affinity=0.5)
    assert got["rows"] == [3, 2]
    assert got["jaccard"]["user"][0][1] == pytest.approx(1 / 3)  # {1, 2} vs {2, 3}
    assert got["jaccard"]["item"][0][1] == pytest.approx(1 / 3)  # {5, 6} vs {6, 7}
    # users: 1 of feed's 3 rows has a user search saw, 1 of search's 2 rows one feed saw
    assert got["shared_traffic"]["user"][0][1] == pytest.approx(0.5 * (1 / 3 + 1 / 2))
    # items (each id of a list counts): feed's ids 5, 5, 6 -> one seen; search's 6, 7 -> one seen
    assert got["shared_traffic"]["item"][1][0] == pytest.approx(0.5 * (1 / 3 + 1 / 2))
    assert got["positive_rate"] == {"click": [1 / 3, 1.0], "buy": [1.0, 0.0]}  # buy: on clicked rows only
    assert got["median_delay_s"] == [100.0, 300.0]
    labels = (1 / 3 + 0.0 + 100 / 300) / 3  # click rates, buy rates, delays: min / max each
    assert got["label_similarity"][0][1] == pytest.approx(labels)
    assert got["affinity"][0][1] == pytest.approx(0.5 * (1 / 3 + 1 / 2) * labels)
    assert got["groups"] == [["feed"], ["search"]]


def test_a_task_of_one_domain_counts_as_unlike_labels(tmp_path):
    tasks = [TaskConfig(name="click", label="click", domains=[0])]
    got = report(collect(_tiny(tmp_path), "dom", 2, ["user"], tasks), ["a", "b"], tasks, 0.5)
    assert got["positive_rate"] == {"click": [1 / 3, None]}
    assert got["label_similarity"][0][1] == 0.0


def test_average_linkage_merges_while_the_mean_affinity_reaches_the_threshold():
    affinity = np.array(
        [
            [1.0, 0.9, 0.6, 0.1],
            [0.9, 1.0, 0.2, 0.1],
            [0.6, 0.2, 1.0, 0.1],
            [0.1, 0.1, 0.1, 1.0],
        ]
    ).tolist()
    # {0, 1} first (0.9); then {0, 1} with 2 has mean (0.6 + 0.2) / 2 = 0.4
    assert average_linkage(affinity, 0.5) == [[0, 1], [2], [3]]
    assert average_linkage(affinity, 0.4) == [[0, 1, 2], [3]]
    assert average_linkage(affinity, 0.05) == [[0, 1, 2, 3]]
    assert average_linkage(affinity, 0.95) == [[0], [1], [2], [3]]


def test_bad_input_names_the_column_or_domain(tmp_path):
    train = _tiny(tmp_path)
    with pytest.raises(ValueError, match=r"no column 'seen'"):
        collect(train, "dom", 2, ["seen"], TASKS)
    with pytest.raises(ValueError, match=r"column 'dom' holds domain 1, expected 0..0"):
        collect(train, "dom", 1, ["user"], TASKS)
    stats = collect(train, "dom", 3, ["user"], TASKS)
    with pytest.raises(ValueError, match=r"domains c: no rows"):
        report(stats, ["a", "b", "c"], TASKS, 0.5)


PILOT = ["--pilot-steps", "10", "--pilot-batches", "8"]
PLANTED = [
    "data.synthetic.num_domains=4",
    "data.features.domain_names=[a,b,c,d]",
    "data.synthetic.num_train=24000",
    "data.synthetic.num_valid=1000",
]


@pytest.mark.parametrize(("groups", "want"), [("[[0,1],[2,3]]", "a, b; c, d"), ("[[0,2],[1,3]]", "a, c; b, d")])
def test_the_report_groups_the_planted_domain_markets(tmp_path, capsys, groups, want):
    sets = [*PLANTED, f"data.synthetic.domain_groups={groups}", f"data.cache_dir={tmp_path / 'cache'}"]
    out = tmp_path / "partition.json"
    assert (
        run(
            "data",
            "partition",
            "multitask_synthetic",
            *[x for s in sets for x in ("--set", s)],
            *PILOT,
            "--json",
            str(out),
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert f"groups (affinity >= 0.5): {want}" in printed
    planted = groups.replace("[[", "").replace("]]", "").split("],[")
    assert f"--set model.lattice.domain_groups=[[{planted[0]}],[{planted[1]}]]" in printed
    result = json.loads(out.read_text())
    members = [set(g) for g in result["group_ids"]]
    for i in range(4):
        for j in range(4):
            together = any({i, j} <= g for g in members)
            # a market's users are its own: no shared user traffic across markets, most of it within
            assert (
                (result["shared_traffic"]["user"][i][j] > 0.6)
                if together
                else result["shared_traffic"]["user"][i][j] == 0
            )
    assert result["median_delay_s"] is not None  # the preset's conversion delay column is read by default
    assert "pilot gradient cosine" in printed and len(result["gradient_cosine"]) == 4


def test_without_planted_markets_every_domain_lands_in_one_group(tmp_path, capsys):
    sets = [*PLANTED, f"data.cache_dir={tmp_path / 'cache'}"]
    assert run("data", "partition", "multitask_synthetic", *[x for s in sets for x in ("--set", s)]) == 0
    assert "groups (affinity >= 0.5): a, b, c, d" in capsys.readouterr().out


def test_the_planted_markets_must_partition_the_domains():
    cfg = load_config("multitask_synthetic", [*PLANTED, "data.synthetic.domain_groups=[[0,1],[1,2,3]]"])
    assert "data.synthetic.domain_groups: expected non-empty groups that together hold each of the 4 domains" in (
        "\n".join(collect_problems(cfg))
    )


def test_cli_refuses_unknown_id_features(tmp_path):
    with pytest.raises(ValueError, match=r"--ids: buyer not among data.features.sparse"):
        run("data", "partition", "multitask_synthetic", "--ids", "user,buyer")


def test_pilot_gradients_agree_for_copies_and_oppose_for_flipped_labels(tmp_path):
    """Domain 2's rows are domain 0's, domain 1's the same rows with click flipped, interleaved so every batch
    holds each copy: after the pilot, domains 0 and 2 have the same trunk gradient (cosine 1) and domain 1's
    points away from it."""
    from recscale.data import generate_synthetic
    from recscale.trainer.pilot_gradients import pilot_gradient_cosine

    sets = ["data.synthetic.num_train=3000", "data.synthetic.num_valid=500", "trainer.batch_size=300"]
    cfg = load_config("multitask_synthetic", sets)
    generate_synthetic(cfg.data, cfg.embeddings, tmp_path / "gen")
    base = pq.read_table(tmp_path / "gen" / "train")
    n = base.num_rows

    def as_domain(d, table):
        return table.set_column(table.schema.get_field_index("surface"), "surface", pa.array([d] * n, pa.int64()))

    flipped = base.set_column(base.schema.get_field_index("click"), "click", pa.compute.subtract(1, base["click"]))
    flipped = flipped.set_column(flipped.schema.get_field_index("purchase"), "purchase", pa.array([0] * n, pa.int8()))
    copies = pa.concat_tables([as_domain(0, base), as_domain(1, flipped.cast(base.schema)), as_domain(2, base)])
    order = np.arange(3 * n).reshape(3, n).T.flatten()  # row i of each copy side by side
    (tmp_path / "mixed").mkdir()
    pq.write_table(copies.take(pa.array(order)), tmp_path / "mixed" / "part-0.parquet")
    cos = pilot_gradient_cosine(cfg, tmp_path / "mixed", 3, steps=10, batches=4)
    assert cos[0][2] == pytest.approx(1.0, abs=1e-6)
    assert cos[0][1] < 0 and cos[2][1] < 0
    with pytest.raises(ValueError, match=r"30 batches of 300 rows, expected --pilot-steps 28 \+ --pilot-batches 4"):
        pilot_gradient_cosine(cfg, tmp_path / "mixed", 3, steps=28, batches=4)


def test_parquet_data_without_domain_names_counts_the_domains_it_holds(tmp_path, capsys):
    from recscale.data import generate_synthetic

    cfg = load_config("multitask_synthetic", [*PLANTED, "data.synthetic.domain_groups=[[0,1],[2,3]]"])
    generate_synthetic(cfg.data, cfg.embeddings, tmp_path / "gen")
    sets = [
        "data.source=parquet",
        f"data.train_path={tmp_path / 'gen' / 'train'}",
        f"data.valid_path={tmp_path / 'gen' / 'valid'}",
        "data.features.domain_names=[]",
    ]
    assert run("data", "partition", "multitask_synthetic", *[x for s in sets for x in ("--set", s)]) == 0
    assert "groups (affinity >= 0.5): domain0, domain1; domain2, domain3" in capsys.readouterr().out
