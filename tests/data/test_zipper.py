"""Zipper: window assignment, the dataset built at NOW, the per-window heads, and the generator's drift."""

from __future__ import annotations

from datetime import datetime, timezone

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import torch.nn.functional as F

from recscale.configs import load_config
from recscale.data import ParquetBatchReader
from recscale.data.partition import parquet_files
from recscale.data.planted import PlantedModel
from recscale.data.zipper import build_zipper, window_of
from recscale.modules.tasks import Task, TaskLoss

DAY = 86_400


def test_window_assignment_is_a_deterministic_hash_following_the_probabilities():
    rng = np.random.default_rng(0)
    keys = [rng.integers(0, 10**9, 60_000), rng.integers(0, 1000, 60_000)]
    cuts = np.cumsum([0.5, 0.3, 0.2])[:-1]
    w = window_of(keys, cuts, salt=7)
    assert np.array_equal(w, window_of([k.copy() for k in keys], cuts, salt=7))  # same signature, same window
    assert not np.array_equal(w, window_of(keys, cuts, salt=8))
    shares = np.bincount(w, minlength=3) / len(w)
    assert np.allclose(shares, [0.5, 0.3, 0.2], atol=0.01), shares
    # one signature column changed: the window is redrawn independently
    other = window_of([keys[0] + 1, keys[1]], cuts, salt=7)
    assert 0.55 < (other != w).mean() < 0.67  # 1 - (0.25 + 0.09 + 0.04) = 0.62 expected


def _stream(tmp_path, n=3000):
    """n impressions, one every 10 minutes (~21 days); conversions with known delays."""
    rng = np.random.default_rng(1)
    time = 1_000_000 + np.arange(n, dtype=np.int64) * 600
    converted = rng.random(n) < 0.3
    delay = np.where(converted, rng.exponential(2 * DAY, n), np.nan)
    table = pa.table(
        {
            "t": time,
            "user": rng.integers(0, 500, n),
            "item": rng.integers(0, 500, n),
            "buy": converted.astype(np.int8),
            "delay": pa.array(delay, mask=~converted),
        }
    )
    for split in ("train", "valid"):
        (tmp_path / "in" / split).mkdir(parents=True)
        pq.write_table(table, tmp_path / "in" / split / "part-0.parquet")
    cfg = load_config(
        "zipper_synthetic",
        [
            "data.zipper.label=buy",
            "data.zipper.time_column=t",
            "data.zipper.delay_column=delay",
            f"data.zipper.windows_s=[{DAY}, {3 * DAY}, {7 * DAY}]",
            f"data.zipper.now_s={1_000_000 + 600 * n}",
        ],
    )
    return cfg, table


def test_each_impression_is_emitted_once_its_window_closes_with_the_label_seen_within_it(tmp_path):
    cfg, table = _stream(tmp_path)
    record = build_zipper(cfg.data, tmp_path / "in" / "train", tmp_path / "in" / "valid", tmp_path / "z")
    now = record["now"]
    windows = np.array([DAY, 3 * DAY, 7 * DAY])
    cuts = np.array([1 / 3, 2 / 3])
    w = window_of([table.column(c).to_numpy() for c in ("t", "user", "item")], cuts, 0)
    time = table.column("t").to_numpy()
    delay = np.asarray(table.column("delay").to_numpy(zero_copy_only=False), dtype=np.float64)
    buy = table.column("buy").to_numpy()
    matured = time + windows[w] <= now
    out = pq.read_table(tmp_path / "z" / "train")
    assert np.array_equal(out.column("t").to_numpy(), time[matured])  # order kept, unmatured rows dropped
    assert np.array_equal(out.column("zipper_window").to_numpy(), w[matured])
    expected = (buy == 1) & (delay <= windows[w])
    assert np.array_equal(out.column("buy").to_numpy(), expected[matured].astype(np.int8))
    # a late conversion is a negative of a short window, a positive of a long one
    late = matured & (buy == 1) & (delay > DAY) & (delay <= 3 * DAY)
    assert late.any() and np.all(expected[late] == (w[late] >= 1))
    valid = pq.read_table(tmp_path / "z" / "valid")
    assert set(valid.column("zipper_window").to_numpy()) == {2}
    assert np.array_equal(valid.column("buy").to_numpy(), ((buy == 1) & (delay <= 7 * DAY)).astype(np.int8))
    assert sum(v["rows"] for v in record["train"].values()) == int(matured.sum())
    # F_k: among closed impressions' 7-day conversions, the share within each window (Exp(2 d) delays)
    closed = (time + 7 * DAY <= now) & (buy == 1) & (delay <= 7 * DAY)
    shares = [float((delay[closed] <= w).mean()) for w in windows]
    assert record["seen_share"] == pytest.approx(shares, abs=1e-12) and record["seen_share"][-1] == 1.0
    assert record["seen_share_conversions"] == int(closed.sum())
    truth = (1 - np.exp(-windows / (2 * DAY))) / (1 - np.exp(-3.5))
    assert np.allclose(shares, truth, atol=0.03), (shares, truth)


def test_one_long_window_is_the_matured_only_dataset(tmp_path):
    cfg, table = _stream(tmp_path)
    cfg.data.zipper.windows_s = [7.0 * DAY]
    build_zipper(cfg.data, tmp_path / "in" / "train", tmp_path / "in" / "valid", tmp_path / "z")
    out = pq.read_table(tmp_path / "z" / "train")
    time = table.column("t").to_numpy()
    assert np.array_equal(out.column("t").to_numpy(), time[time + 7 * DAY <= cfg.data.zipper.now_s])


def test_arrival_order_writes_the_same_rows_by_the_day_their_label_is_known(tmp_path):
    cfg, _ = _stream(tmp_path)
    first = build_zipper(cfg.data, tmp_path / "in" / "train", tmp_path / "in" / "valid", tmp_path / "z")
    cfg.data.zipper.order = "arrival"
    again = build_zipper(cfg.data, tmp_path / "in" / "train", tmp_path / "in" / "valid", tmp_path / "za")
    assert again["train"] == first["train"] and again["seen_share"] == first["seen_share"]
    assert (first["order"], again["order"]) == ("impression", "arrival")
    windows = np.array([DAY, 3 * DAY, 7 * DAY])
    days = sorted(p.name for p in (tmp_path / "za" / "train").iterdir())
    assert days and all(p.startswith("day=") for p in days)
    now, arrivals = again["now"], []
    for j, folder in enumerate(reversed(days)):  # folder j from the end: labels known in (NOW-(j+1)d, NOW-jd]
        part = pq.read_table(tmp_path / "za" / "train" / folder)
        arrival = part.column("t").to_numpy() + windows[part.column("zipper_window").to_numpy()]
        assert np.all((arrival > now - (j + 1) * DAY) & (arrival <= now - j * DAY)), folder
        start = datetime.fromtimestamp(now - (j + 1) * DAY + 1, tz=timezone.utc).date().isoformat()
        assert folder == f"day={start}"
        arrivals.insert(0, arrival)
    arrival = np.concatenate(arrivals)
    assert np.all(np.diff(arrival) >= 0)  # the folders in name order are the stream in time order
    # the same rows, only reordered: the windows interleave (a short window's row comes before older long ones)
    base = pq.read_table(tmp_path / "z" / "train").sort_by([("t", "ascending")])
    reread = pq.read_table(tmp_path / "za" / "train").drop_columns(["day"]).sort_by([("t", "ascending")])
    assert reread.select(base.column_names).equals(base)
    flat = np.concatenate([pq.read_table(f).column("t").to_numpy() for f in parquet_files(tmp_path / "za" / "train")])
    assert np.any(np.diff(flat) < 0)
    # the valid split keeps the input order, window K-1
    assert pq.read_table(tmp_path / "za" / "valid").equals(pq.read_table(tmp_path / "z" / "valid"))


def test_bad_zipper_settings_are_one_line_naming_the_key(tmp_path):
    cfg, _ = _stream(tmp_path)
    cfg.data.zipper.windows_s = [3.0 * DAY, DAY]
    with pytest.raises(ValueError, match=r"data.zipper.windows_s: expected positive, strictly increasing"):
        build_zipper(cfg.data, tmp_path / "in" / "train", tmp_path / "in" / "valid", tmp_path / "z")
    cfg.data.zipper.windows_s = [DAY]
    cfg.data.zipper.delay_column = "nope"
    with pytest.raises(ValueError, match=r"part-0.parquet: column 'nope' \(data.zipper\) is missing"):
        build_zipper(cfg.data, tmp_path / "in" / "train", tmp_path / "in" / "valid", tmp_path / "z")
    assert not (tmp_path / "z").exists()


def test_a_zipper_task_trains_the_head_of_each_rows_window_and_serves_the_longest():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(32, 4, generator=g)  # click, purchase@1d, purchase@3d, purchase@7d
    labels = (torch.rand(32, 2, generator=g) < 0.5).float()
    window = torch.randint(0, 3, (32,), generator=g)
    loss = TaskLoss([Task("click"), Task("purchase", windows=3)])
    assert loss.num_heads == 4 and loss.serving == [0, 3]
    assert torch.equal(loss.predictions(logits), logits[:, [0, 3]])
    picked = logits[torch.arange(32), 1 + window]
    expected = 0.5 * F.binary_cross_entropy_with_logits(logits[:, 0], labels[:, 0]) + 0.5 * (
        F.binary_cross_entropy_with_logits(picked, labels[:, 1])
    )
    assert float(loss(logits, labels, torch.ones(32), None, window)) == pytest.approx(float(expected), rel=1e-6)
    no_window = 0.5 * F.binary_cross_entropy_with_logits(logits[:, 0], labels[:, 0]) + 0.5 * (
        F.binary_cross_entropy_with_logits(logits[:, 3], labels[:, 1])
    )
    assert float(loss(logits, labels, torch.ones(32))) == pytest.approx(float(no_window), rel=1e-6)


def test_the_reader_reads_the_window_column_and_refuses_one_out_of_range(tmp_path):
    from recscale.data.errors import DataError

    cfg = load_config(
        "zipper_synthetic",
        ["data.synthetic.num_train=4000", "data.synthetic.num_valid=1000", "data.synthetic.seconds_per_row=600"],
    )
    from recscale.data.synthetic import generate_synthetic

    generate_synthetic(cfg.data, cfg.embeddings, tmp_path / "gen")
    build_zipper(cfg.data, tmp_path / "gen" / "train", tmp_path / "gen" / "valid", tmp_path / "z")
    reader = ParquetBatchReader(
        tmp_path / "z" / "train", cfg.data.features, cfg.embeddings, cfg.data.reader, batch_size=256, mode="eval"
    )
    batch = next(iter(reader))
    file = pq.read_table(tmp_path / "z" / "train").slice(0, 256)
    assert torch.equal(batch.window, torch.from_numpy(file.column("zipper_window").to_numpy().copy()))
    bad = file.set_column(file.schema.get_field_index("zipper_window"), "zipper_window", pa.array(np.full(256, 3)))
    (tmp_path / "bad").mkdir()
    pq.write_table(bad, tmp_path / "bad" / "part-0.parquet")
    reader = ParquetBatchReader(
        tmp_path / "bad", cfg.data.features, cfg.embeddings, cfg.data.reader, batch_size=256, mode="eval"
    )
    with pytest.raises(DataError, match=r"zipper_window.*window 3(\.0)? is not in 0\.\.2"):
        next(iter(reader))


def test_the_truth_drifts_by_day_and_day_zero_is_the_stationary_truth():
    cfg = load_config("zipper_synthetic", ["data.synthetic.drift_per_day=0.2"])
    still = load_config("zipper_synthetic", ["data.synthetic.drift_per_day=0"])
    model = PlantedModel(cfg.data.features, cfg.embeddings, cfg.data.synthetic)
    fixed = PlantedModel(still.data.features, still.embeddings, still.data.synthetic)
    inputs = model.draw(20_000, np.random.default_rng(3), 0)
    logit = {}
    for day in (0, 25):
        inputs.day = np.full(20_000, day)
        p = model.probabilities(inputs)[:, 0]
        logit[day] = np.log(p / (1 - p))
    inputs.day = np.zeros(20_000, dtype=np.int64)
    assert np.allclose(fixed.probabilities(inputs)[:, 0], np.exp(logit[0]) / (1 + np.exp(logit[0])))
    moved = (logit[25] - logit[0]).std()
    assert 0.5 * 0.2 * 5 < moved < 1.5 * 0.2 * 5, moved  # std grows like rate * sqrt(days)


def test_a_mean_reverting_drift_keeps_its_spread_and_the_base_rate_on_every_day():
    rho, rate = 0.8, 0.3
    cfg = load_config(
        "zipper_synthetic", [f"data.synthetic.drift_per_day={rate}", f"data.synthetic.drift_memory={rho}"]
    )
    model = PlantedModel(cfg.data.features, cfg.embeddings, cfg.data.synthetic)
    inputs = model.draw(40_000, np.random.default_rng(3), 0)
    drift = {day: model._drift(inputs, np.full(40_000, day)) for day in (0, 1, 3, 60)}
    spread = rate / np.sqrt(1 - rho**2)
    for day in (0, 60):
        assert 0.8 * spread < drift[day].std() < 1.2 * spread, (day, drift[day].std())  # it does not grow
        inputs.day = np.full(40_000, day)
        clicked = model.probabilities(inputs)[:, 0].mean()
        assert abs(clicked - cfg.data.synthetic.click_rate) < 0.02, (day, clicked)
    for k in (1, 3):  # days k apart correlate as rho^k (one walk: loose bounds)
        assert abs(np.corrcoef(drift[0], drift[k])[0, 1] - rho**k) < 0.2
    walk = load_config("zipper_synthetic", [f"data.synthetic.drift_per_day={rate}"])
    grown = PlantedModel(walk.data.features, walk.embeddings, walk.data.synthetic)._drift(inputs, np.full(40_000, 60))
    assert grown.std() > 2 * spread  # the random walk's spread grows like rate * sqrt(days)
    bad = load_config("zipper_synthetic", ["data.synthetic.drift_memory=0", "data.source=synthetic"])
    from recscale.configs.tasks import synthetic_task_problems

    assert "data.synthetic.drift_memory: expected a value in (0, 1], got 0.0" in synthetic_task_problems(bad)


def test_conversions_later_than_the_limit_are_never_observed(tmp_path):
    from recscale.data.synthetic import generate_synthetic

    cfg = load_config("zipper_synthetic", ["data.synthetic.num_train=2000", "data.synthetic.num_valid=30000"])
    generate_synthetic(cfg.data, cfg.embeddings, tmp_path / "gen")
    t = pq.read_table(tmp_path / "gen" / "valid")
    s = cfg.data.synthetic
    delay = np.asarray(t.column("conversion_delay_s").to_numpy(zero_copy_only=False), dtype=np.float64)
    buy, click = t.column("purchase").to_numpy(), t.column("click").to_numpy()
    assert np.array_equal(~np.isnan(delay), buy == 1) and np.nanmax(delay) <= s.conversion_delay_max_s
    # the oracle of the purchase is p(conversion | click) x P(delay <= max): calibrated on clicked rows
    p = np.stack(t.column("true_prob").to_numpy(zero_copy_only=False))[click == 1, 1]
    sigma = np.sqrt((p * (1 - p)).sum()) / len(p)
    assert abs(buy[click == 1].mean() - p.mean()) < 3 * sigma


def test_variants_compared_on_one_validation_set_label_it_by_the_same_window(tmp_path):
    cfg, table = _stream(tmp_path)
    cfg.data.zipper.windows_s = [1.0 * DAY]  # the fresh-labels baseline ...
    cfg.data.zipper.valid_window_s = 7.0 * DAY  # ... judged on the final labels
    build_zipper(cfg.data, tmp_path / "in" / "train", tmp_path / "in" / "valid", tmp_path / "z")
    buy = table.column("buy").to_numpy()
    delay = np.asarray(table.column("delay").to_numpy(zero_copy_only=False), dtype=np.float64)
    valid = pq.read_table(tmp_path / "z" / "valid")
    assert np.array_equal(valid.column("buy").to_numpy(), ((buy == 1) & (delay <= 7 * DAY)).astype(np.int8))
    train = pq.read_table(tmp_path / "z" / "train")
    assert train.column("buy").to_numpy().sum() < valid.column("buy").to_numpy().sum()  # a 1-day label misses some


def test_offset_window_heads_share_one_logit_and_shift_it_per_window():
    from recscale.configs.tasks import heads
    from recscale.modules.build import build_model, flops_per_example
    from recscale.modules.window_heads import SharedWindowHeads
    from tests.batches import random_batch

    cfg = load_config("zipper_synthetic", ["model.tasks.1.window_heads=offset"])
    assert heads(cfg) == 2  # the arch emits click and one purchase logit
    built = build_model(cfg, sparse_device="cpu")
    assert isinstance(built.dense, SharedWindowHeads) and built.task_loss.num_heads == 4
    batch = random_batch(cfg, 8, seed=0)
    inner, _, _ = built.dense.inner(batch.dense, built.sparse(batch.sparse))
    with torch.no_grad():
        built.dense.offsets.copy_(torch.tensor([-1.0, -0.5, 0.0]))
    out, _, _ = built.dense(batch.dense, built.sparse(batch.sparse))
    assert torch.equal(out[:, 0], inner[:, 0])
    assert torch.equal(out[:, 1:], inner[:, 1:2] + torch.tensor([-1.0, -0.5, 0.0]))
    plain = load_config("zipper_synthetic", ["model.tasks.1.windows=1", "data.features.window="])
    assert flops_per_example(cfg) == flops_per_example(plain)  # the offsets are adds: no FLOPs


def test_scaled_window_heads_are_the_logit_of_the_probability_times_the_seen_share():
    from recscale.configs.tasks import heads
    from recscale.modules.build import build_model, flops_per_example
    from tests.batches import random_batch

    cfg = load_config("zipper_synthetic", ["model.tasks.1.window_heads=scaled"])
    assert heads(cfg) == 2
    built = build_model(cfg, sparse_device="cpu")
    batch = random_batch(cfg, 8, seed=0)
    inner, _, _ = built.dense.inner(batch.dense, built.sparse(batch.sparse))
    assert built.dense.seen_logits.shape == (2,) and built.dense.offsets is None  # the 7-day head has none
    with torch.no_grad():
        built.dense.seen_logits.copy_(torch.tensor([-0.4, 1.4]))
    out, _, _ = built.dense(batch.dense, built.sparse(batch.sparse))
    assert torch.equal(out[:, 0], inner[:, 0]) and torch.equal(out[:, 3], inner[:, 1])  # click; served = z
    z = inner[:, 1:2].double()
    share = torch.sigmoid(torch.tensor([-0.4, 1.4], dtype=torch.float64))
    expected = torch.logit(torch.sigmoid(z) * share)
    assert torch.allclose(out[:, 1:3].double(), expected, atol=1e-5, rtol=0)
    assert torch.allclose(built.dense.seen_share(), share.float())
    plain = load_config("zipper_synthetic", ["model.tasks.1.windows=1", "data.features.window="])
    assert flops_per_example(cfg) == flops_per_example(plain)


def test_scaled_window_heads_are_stable_at_extreme_logits_and_learn_each_windows_seen_share():
    from recscale.modules.window_heads import SharedWindowHeads

    class Linear(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layer = torch.nn.Linear(3, 1)

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
            return self.layer(x), torch.zeros(()), {}

    heads = SharedWindowHeads(Linear(), windows=[3], kinds=["scaled"])
    with torch.no_grad():
        heads.inner.layer.weight.zero_()
        heads.inner.layer.bias.fill_(60.0)  # p = 1 in float32
        heads.seen_logits.fill_(-30.0)
    out, _, _ = heads(torch.zeros(2, 3))
    assert torch.isfinite(out).all() and torch.allclose(out[:, 0], torch.full((2,), -30.0), atol=1e-4)
    assert torch.equal(out[:, 2], torch.full((2,), 60.0))
    # labels of window k are Bernoulli(p(x) F_k): the heads recover F and p's logit
    torch.manual_seed(0)
    heads = SharedWindowHeads(Linear(), windows=[3], kinds=["scaled"])
    truth_w, truth_b, seen = torch.tensor([1.0, -0.5, 0.8]), -0.5, torch.tensor([0.4, 0.8, 1.0])
    x = torch.randn(60_000, 3)
    window = torch.randint(0, 3, (60_000,))
    labels = torch.bernoulli(torch.sigmoid(x @ truth_w + truth_b) * seen[window])
    optimizer = torch.optim.Adam(heads.parameters(), lr=0.05)
    for _ in range(300):
        out, _, _ = heads(x)
        loss = F.binary_cross_entropy_with_logits(out.gather(1, window[:, None]).squeeze(1), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert torch.allclose(heads.seen_share(), seen[:2], atol=0.03), heads.seen_share()
    assert torch.allclose(heads.inner.layer.weight[0], truth_w, atol=0.06)
    assert abs(heads.inner.layer.bias.item() - truth_b) < 0.06


def test_scaled_window_heads_start_at_the_given_shares():
    from recscale.modules.build import build_model

    cfg = load_config(
        "zipper_synthetic", ["model.tasks.1.window_heads=scaled", "model.tasks.1.window_shares=[0.4,0.8]"]
    )
    built = build_model(cfg, sparse_device="cpu")
    assert torch.allclose(built.dense.seen_share(), torch.tensor([0.4, 0.8]))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["model.tasks.1.window_heads=scaled", "model.tasks.1.loss=regression"],
            "window_heads: scaled heads model a probability; they need loss: bce",
        ),
        (
            ["model.tasks.1.window_shares=[0.4,0.8]"],
            "window_shares: start values of scaled heads, but window_heads is 'linear'",
        ),
        (
            ["model.tasks.1.window_heads=scaled", "model.tasks.1.window_shares=[0.4]"],
            "window_shares: expected 2 values (one per window but the last), got 1",
        ),
        (
            ["model.tasks.1.window_heads=scaled", "model.tasks.1.window_shares=[0.4,1.0]"],
            "window_shares: expected each in (0, 1)",
        ),
    ],
)
def test_bad_window_head_settings_name_the_task_key(overrides, message):
    from recscale.configs.tasks import task_problems

    problems = task_problems(load_config("zipper_synthetic", overrides))
    assert any(p.startswith(f"model.tasks[1] (purchase).{message}") for p in problems), problems
