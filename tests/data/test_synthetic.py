"""The generator's claims hold when recomputed from its Parquet output; the data is a pure function of the config."""

import json
import multiprocessing as mp

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recscale.configs import config_from_dict, load_config
from recscale.data import ParquetBatchReader, generate_synthetic, prepare_data
from recscale.data.planted_math import zipf_ranks
from recscale.data.prepare import synthetic_key
from recscale.data.synthetic import auc


def small_quickstart(*overrides):
    return load_config("quickstart", ["data.synthetic.num_train=30000", "data.synthetic.num_valid=30000", *overrides])


def pairwise_auc(labels, scores):
    """AUC as P(score_pos > score_neg) + P(tie) / 2, counted with searchsorted (a second method)."""
    pos, neg = np.sort(scores[labels == 1]), np.sort(scores[labels == 0])
    below = np.searchsorted(neg, pos, side="left")
    ties = np.searchsorted(neg, pos, side="right") - below
    return float((below.sum() + 0.5 * ties.sum()) / (len(pos) * len(neg)))


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    cfg = small_quickstart()
    out = tmp_path_factory.mktemp("synth") / "q"
    claims = generate_synthetic(cfg.data, cfg.embeddings, out)
    return cfg, out, claims


def test_auc_helper_handles_ties_like_the_pairwise_definition():
    rng = np.random.default_rng(0)
    for _ in range(20):
        labels = (rng.random(300) < 0.3).astype(int)
        scores = rng.integers(0, 10, 300).astype(float)  # many ties
        assert auc(labels, scores) == pytest.approx(pairwise_auc(labels, scores), abs=1e-12)
    assert auc(np.array([0, 1]), np.array([0.2, 0.9])) == 1.0
    assert auc(np.array([0, 1, 0, 1]), np.array([0.5, 0.5, 0.5, 0.5])) == 0.5


def test_claims_match_the_written_data(generated):
    cfg, out, claims = generated
    assert json.loads((out / "claims.json").read_text()) == json.loads(json.dumps(claims))
    for split in ("train", "valid"):
        t = pq.read_table(out / split)
        assert t.num_rows == claims["rows"][split]
        assert np.mean(t.column("label").to_numpy()) == pytest.approx(claims["click_rate"][split]["label"], abs=1e-12)
    valid = pq.read_table(out / "valid")
    labels, probs = valid.column("label").to_numpy(), valid.column("true_prob").to_numpy().astype(np.float64)
    assert pairwise_auc(labels, probs) == pytest.approx(claims["oracle_auc_valid"]["label"], abs=1e-6)
    p = np.clip(probs, 1e-7, 1 - 1e-7)
    logloss = -np.mean(labels * np.log(p) + (1 - labels) * np.log(1 - p))
    assert logloss == pytest.approx(claims["oracle_logloss_valid"]["label"], abs=1e-5)


def test_click_rate_matches_the_target(generated):
    cfg, _, claims = generated
    target = cfg.data.synthetic.click_rate
    for split in ("train", "valid"):
        n = claims["rows"][split]
        sigma = np.sqrt(target * (1 - target) / n)
        assert abs(claims["click_rate"][split]["label"] - target) < 4 * sigma + 0.004
        assert claims["mean_true_probability"][split]["label"] == pytest.approx(target, abs=0.004)


def test_labels_are_drawn_from_the_oracle_probabilities(generated):
    _, out, _ = generated
    t = pq.read_table(out / "train")
    labels, probs = t.column("label").to_numpy(), t.column("true_prob").to_numpy()
    order = np.argsort(probs)
    for chunk in np.array_split(order, 10):  # calibration per decile of the true probability
        expected = probs[chunk].mean()
        sigma = np.sqrt(expected * (1 - expected) / len(chunk))
        assert abs(labels[chunk].mean() - expected) < 4 * sigma + 1e-3


def test_quickstart_oracle_auc_is_well_below_one(tmp_path):
    cfg = load_config("quickstart")
    out_claims = generate_synthetic(cfg.data, cfg.embeddings, tmp_path / "quickstart")
    assert 0.75 <= out_claims["oracle_auc_valid"]["label"] <= 0.85
    assert out_claims["seconds"] < 30


def test_generation_is_deterministic_from_the_seed(tmp_path, generated):
    cfg, out, claims = generated
    again = generate_synthetic(cfg.data, cfg.embeddings, tmp_path / "again")
    assert pq.read_table(tmp_path / "again" / "train").equals(pq.read_table(out / "train"))
    assert again["oracle_auc_valid"] == claims["oracle_auc_valid"]
    other = small_quickstart("data.synthetic.seed=99")
    generate_synthetic(other.data, other.embeddings, tmp_path / "other")
    a = pq.read_table(out / "train", columns=["user"]).column("user").to_numpy()
    b = pq.read_table(tmp_path / "other" / "train", columns=["user"]).column("user").to_numpy()
    assert not np.array_equal(a, b)


def test_streamed_files_and_row_groups(tmp_path):
    cfg = small_quickstart("data.synthetic.row_group_size=4000", "data.synthetic.rows_per_file=10000")
    generate_synthetic(cfg.data, cfg.embeddings, tmp_path / "s")
    files = sorted((tmp_path / "s" / "train").glob("*.parquet"))
    assert len(files) == 3  # 30000 rows, 3 row groups (12000 rows) per file
    assert [pq.ParquetFile(f).metadata.num_row_groups for f in files] == [3, 3, 2]


def test_each_planted_term_adds_signal(tmp_path):
    base = ["data.synthetic.num_train=4000", "data.synthetic.num_valid=40000"]
    scores = {}
    for name, extra in {"base": [], "hier": ["data.synthetic.hierarchical_scale=1.5"]}.items():
        cfg = load_config("quickstart", [*base, "data.synthetic.hierarchical_scale=0", *extra])
        scores[name] = generate_synthetic(cfg.data, cfg.embeddings, tmp_path / name)["oracle_auc_valid"]["label"]
    assert scores["hier"] > scores["base"] + 0.02


def rich_config(sequence_scale: float, tasks=("click", "buy")):
    return config_from_dict(
        {
            "data": {
                "features": {
                    "labels": list(tasks),
                    "dense": ["d0", "d1"],
                    "sparse": [
                        {"name": "user", "table": "t_user"},
                        {"name": "item", "table": "t_item"},
                        {"name": "tags", "table": "t_tag", "max_ids": 3},
                    ],
                    "sequences": [
                        {"name": "click", "ids": "hist", "table": "t_item", "max_length": 8, "timestamps": "hist_ts"}
                    ],
                    "domain": "domain",
                    "oracle": "p",
                },
                "synthetic": {
                    "num_train": 6000,
                    "num_valid": 30000,
                    "multi_hot_max": 4,
                    "num_domains": 3,
                    "sequence_scale": sequence_scale,
                    "click_rate": 0.2,
                    "row_group_size": 3000,
                },
            },
            "embeddings": {
                "tables": [
                    {"name": "t_user", "num_embeddings": 500},
                    {"name": "t_item", "num_embeddings": 300},
                    {"name": "t_tag", "num_embeddings": 40},
                ]
            },
        }
    )


def test_sequences_domains_multi_hot_and_two_tasks(tmp_path):
    cfg = rich_config(1.5)
    claims = generate_synthetic(cfg.data, cfg.embeddings, tmp_path / "rich")
    t = pq.read_table(tmp_path / "rich" / "valid")
    assert t.schema.field("tags").type.value_type == pa.int64()
    assert t.schema.field("p").type.value_type == pa.float32()
    times = t.column("hist_ts").to_pylist()
    assert all(a < b for ts in times for a, b in zip(ts, ts[1:]))  # oldest first
    assert set(t.column("domain").to_pylist()) == {0, 1, 2}
    reader = ParquetBatchReader(
        tmp_path / "rich" / "valid", cfg.data.features, cfg.embeddings, cfg.data.reader, batch_size=1000, mode="eval"
    )
    batch = next(iter(reader))
    assert batch.labels.shape == (1000, 2) and batch.oracle.shape == (1000, 2)
    assert batch.sequences.keys() == ["click"] and batch.domain.shape == (1000,)
    assert int(batch.sparse["tags"].lengths().max()) == 3  # bags of up to 4, max_ids 3
    assert set(claims["oracle_auc_valid"]) == {"click", "buy"}
    for task in ("click", "buy"):
        assert claims["mean_true_probability"]["valid"][task] == pytest.approx(0.2, abs=0.006)
    without = rich_config(0.0)
    plain = generate_synthetic(without.data, without.embeddings, tmp_path / "plain")
    assert claims["oracle_auc_valid"]["click"] > plain["oracle_auc_valid"]["click"] + 0.02


def test_zipf_ids_follow_the_exponent():
    u = np.random.default_rng(0).random(2_000_000)
    ranks = zipf_ranks(u, 100_000, 1.1)
    counts = np.bincount(ranks, minlength=100_000)
    k = np.arange(20, 400)
    slope = np.polyfit(np.log(k + 1.5), np.log(counts[k]), 1)[0]
    assert slope == pytest.approx(-1.1, abs=0.1)
    assert ranks.min() >= 0 and ranks.max() < 100_000


def _prepare_in_child(cache_dir):
    cfg = small_quickstart(f"data.cache_dir={cache_dir}")
    return str(prepare_data(cfg.data, cfg.embeddings).train)


def test_prepare_data_generates_once_even_when_called_concurrently(tmp_path):
    cfg = small_quickstart(f"data.cache_dir={tmp_path}")
    with mp.get_context("spawn").Pool(2) as pool:
        results = pool.map(_prepare_in_child, [str(tmp_path)] * 2)
    assert results[0] == results[1] == str(tmp_path / synthetic_key(cfg.data, cfg.embeddings) / "train")
    entries = [p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")]
    assert entries == [synthetic_key(cfg.data, cfg.embeddings)]  # no leftover temporary directories
    claims = tmp_path / entries[0] / "claims.json"
    before = claims.stat().st_mtime_ns
    paths = prepare_data(cfg.data, cfg.embeddings)  # cached: nothing is regenerated
    assert claims.stat().st_mtime_ns == before and paths.claims()["rows"]["train"] == 30000
    other = small_quickstart(f"data.cache_dir={tmp_path}", "data.synthetic.click_rate=0.05")
    assert synthetic_key(other.data, other.embeddings) != entries[0]


def test_generator_and_converter_settings_are_validated():
    from recscale.configs import collect_problems

    cfg = load_config(
        "quickstart",
        [
            "data.synthetic.sequence_scale=0.5",
            "data.synthetic.recency_decay=0",
            "data.synthetic.domain_scale=-1",
            "data.convert.valid_fraction=1.5",
            "data.convert.min_count=0",
        ],
    )
    problems = "\n".join(collect_problems(cfg))
    assert "data.synthetic.sequence_scale: the sequence term needs data.features.sequences" in problems
    assert "data.synthetic.recency_decay: expected a value in (0, 1], got 0.0" in problems
    assert "data.synthetic.domain_scale: expected >= 0, got -1.0" in problems
    assert "data.convert.valid_fraction: expected a fraction in [0, 1), got 1.5" in problems
    assert "data.convert.min_count: expected >= 1, got 0" in problems
    for preset in ("quickstart", "criteo_kaggle", "frappe"):
        assert not [p for p in collect_problems(load_config(preset)) if p.startswith("data.")]


def two_domain(*overrides):
    """The gca_two_domain preset at test size (row groups of 3000: several per split)."""
    sets = ["data.synthetic.num_train=6000", "data.synthetic.num_valid=30000", "data.synthetic.row_group_size=3000"]
    return load_config("gca_two_domain", [*sets, *overrides])


def category_matrix_term(model, items, histories):
    """``mean_{h in history} K[category(item), category(h)]`` row by row (a plain loop, 0 when empty)."""
    out = np.zeros(len(items))
    for r, (item, history) in enumerate(zip(items, histories)):
        if history:
            g = model.group(np.array([item]), 1)[0]
            out[r] = np.mean([model.cross_matrix[g, c] for c in model.group(np.array(history), 1)])
    return out


@pytest.fixture(scope="module")
def cross_domain(tmp_path_factory):
    """The same two-domain data generated without and with the cross-domain term."""
    from recscale.data.planted import PlantedModel

    root = tmp_path_factory.mktemp("cross")
    off, on = two_domain("data.synthetic.cross_domain_scale=0"), two_domain("data.synthetic.cross_domain_scale=1.5")
    claims_off = generate_synthetic(off.data, off.embeddings, root / "off")
    claims_on = generate_synthetic(on.data, on.embeddings, root / "on")
    model = PlantedModel(on.data.features, on.embeddings, on.data.synthetic)
    return root, on, claims_off, claims_on, model


def test_cross_domain_term_only_changes_the_labels(cross_domain):
    root, cfg, _, claims_on, _ = cross_domain
    for split in ("train", "valid"):
        a, b = pq.read_table(root / "off" / split), pq.read_table(root / "on" / split)
        features = [c for c in a.column_names if c not in ("label", "true_prob")]
        assert len(features) == 11 and a.select(features).equals(b.select(features))
        assert not np.array_equal(a.column("true_prob").to_numpy(), b.column("true_prob").to_numpy())
        # the same files and row groups, so the reader's per-rank split (by row group) is the same too
        for fa, fb in zip(
            sorted((root / "off" / split).glob("*.parquet")), sorted((root / "on" / split).glob("*.parquet"))
        ):
            ma, mb = pq.ParquetFile(fa).metadata, pq.ParquetFile(fb).metadata
            assert [ma.row_group(i).num_rows for i in range(ma.num_row_groups)] == [
                mb.row_group(i).num_rows for i in range(mb.num_row_groups)
            ]
    for rank in (0, 1):
        users = []
        for name in ("off", "on"):
            reader = ParquetBatchReader(
                root / name / "train", cfg.data.features, cfg.embeddings, cfg.data.reader,
                batch_size=500, rank=rank, world_size=2,
            )  # fmt: skip
            users.append(np.concatenate([b.sparse["user"].values().numpy() for b in reader]))
        assert np.array_equal(users[0], users[1]) and len(users[0]) >= 2500
    assert claims_on["planted"]["cross_domain"]["sequence"] == "domain_b"
    assert claims_on["planted"]["term_std_in_logit"]["cross"] == 1.5


def test_oracle_is_the_planted_logit_with_the_cross_domain_term(cross_domain):
    root, _, claims_off, claims_on, model = cross_domain
    off, on = pq.read_table(root / "off" / "valid"), pq.read_table(root / "on" / "valid")
    items = on.column("item").to_numpy()
    term_b = category_matrix_term(model, items, on.column("hist_domain_b").to_pylist())
    term_a = category_matrix_term(model, items, on.column("hist_domain_a").to_pylist())

    def logit(p):
        p = p.astype(np.float64)
        return np.log(p) - np.log1p(-p)

    base, diff = logit(off.column("true_prob").to_numpy()), None
    diff = logit(on.column("true_prob").to_numpy()) - base
    slope, intercept = np.polyfit(term_b, diff, 1)
    assert np.abs(diff - (slope * term_b + intercept)).max() < 1e-3  # float32 probabilities
    assert np.std(slope * term_b) == pytest.approx(1.5, rel=0.03)  # the scale is the term's std in the logit
    assert abs(np.corrcoef(term_a, diff)[0, 1]) < 0.03  # domain A's history does not carry it
    labels = on.column("label").to_numpy()
    planted = base + slope * term_b + intercept
    assert auc(labels, planted) == pytest.approx(claims_on["oracle_auc_valid"]["label"], abs=1e-4)
    assert claims_on["oracle_auc_valid"]["label"] > claims_off["oracle_auc_valid"]["label"] + 0.02
    assert 0.3 < claims_on["planted"]["cross_domain"]["share_of_logit_variance"] < 0.7


def test_cross_domain_generation_is_deterministic(cross_domain, tmp_path):
    root, cfg, _, claims_on, _ = cross_domain
    again = generate_synthetic(cfg.data, cfg.embeddings, tmp_path / "again")
    assert pq.read_table(tmp_path / "again" / "train").equals(pq.read_table(root / "on" / "train"))
    assert again["oracle_auc_valid"] == claims_on["oracle_auc_valid"]


def test_cross_domain_settings_are_validated():
    from recscale.configs import collect_problems

    problems = "\n".join(collect_problems(two_domain("data.synthetic.cross_domain_sequence=nope")))
    assert (
        "data.synthetic.cross_domain_sequence: no sequence named 'nope'; sequences: ['domain_a', 'domain_b']"
        in problems
    )
    problems = "\n".join(collect_problems(small_quickstart("data.synthetic.cross_domain_scale=1")))
    assert "data.synthetic.cross_domain_scale: the cross-domain term needs two data.features.sequences" in problems
    assert not [p for p in collect_problems(two_domain()) if p.startswith("data.")]
