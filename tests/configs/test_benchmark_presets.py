"""The benchmark presets: MLPerf's DLRM-DCNv2 (its shapes, FLOPs by two independent counts, a 2-rank run at
CPU scale) and TorchRec's own DLRM_DCN (layer for layer the same model as TorchRec's class)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from recscale.configs import load_config
from recscale.modules.build import build_model, dense_flops, model_inputs
from recscale.modules.flops import total
from recscale.modules.registry import get_spec

# MLPerf Training's DLRM-DCNv2 reference (mlcommons/training, recommendation_v2/torchrec_dlrm): rows of the
# 26 tables (C1..C26) and the ids per example of its multi-hot benchmark data.
MLPERF_ROWS = [
    40000000, 39060, 17295, 7424, 20265, 3, 7122, 1543, 63, 40000000, 3067956, 405282, 10,
    2209, 11938, 155, 4, 976, 14, 40000000, 40000000, 40000000, 590152, 12973, 108, 36,
]  # fmt: skip
MLPERF_BAG_SIZES = [3, 2, 1, 2, 6, 1, 1, 1, 1, 7, 3, 8, 1, 6, 9, 5, 1, 1, 1, 12, 100, 27, 10, 3, 1, 1]


def _linear_flops(widths: list[int], first_needs_input_grad: bool) -> tuple[int, int]:
    """(forward, backward) FLOPs per example of a chain of Linear layers, counted by hand.

    Forward 2·in·out per layer; backward 2·in·out for the weight gradient plus 2·in·out for the input
    gradient, except a first layer whose input needs no gradient.
    """
    forward = backward = 0
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
        forward += 2 * a * b
        backward += 2 * a * b + (2 * a * b if (i > 0 or first_needs_input_grad) else 0)
    return forward, backward


def test_mlperf_preset_is_the_reference_model_and_recipe():
    cfg = load_config("mlperf_dlrm_dcnv2")
    assert [t.num_embeddings for t in cfg.embeddings.tables] == MLPERF_ROWS
    assert {t.dim or cfg.embeddings.dim for t in cfg.embeddings.tables} == {128}
    assert [f.name for f in cfg.data.features.sparse] == [f"C{i}" for i in range(1, 27)]
    assert [f.table for f in cfg.data.features.sparse] == [t.name for t in cfg.embeddings.tables]  # one table each
    assert len(cfg.data.features.dense) == 13 and cfg.data.features.labels == ["label"]
    m = cfg.model
    assert (m.arch, m.dense_arch, m.over_arch) == ("dcnv2", [512, 256, 128], [1024, 1024, 512, 256])
    assert (m.dcnv2.num_cross_layers, m.dcnv2.low_rank, m.dcnv2.structure) == (3, 512, "stacked")
    for opt in (cfg.optimizer.dense, cfg.optimizer.sparse):
        assert (opt.name, opt.lr, opt.eps) == ("adagrad", 0.005, 1e-10)
    assert cfg.optimizer.dense.schedule == "constant" and cfg.optimizer.dense.warmup_steps == 0
    assert cfg.trainer.batch_size == 65536 and cfg.trainer.epochs == 1

    multihot = load_config("mlperf_dlrm_dcnv2_multihot")
    factors = [multihot.sharding.constraints[t.name].pooling_factor for t in multihot.embeddings.tables]
    assert factors == MLPERF_BAG_SIZES and sum(factors) == 214

    small = load_config("mlperf_dlrm_dcnv2_cpu")
    assert small.model == cfg.model and small.optimizer == cfg.optimizer and small.data.source == "synthetic"
    assert [t.num_embeddings for t in small.embeddings.tables] == [min(n, 4096) for n in MLPERF_ROWS]


def test_mlperf_flops_per_example_equal_a_hand_count_of_the_architecture():
    cfg = load_config("mlperf_dlrm_dcnv2")
    width = 128 + 26 * 128  # the cross network's input: bottom output and 26 pooled embeddings
    bottom = _linear_flops([13, 512, 256, 128], first_needs_input_grad=False)  # raw dense features
    top = _linear_flops([width, 1024, 1024, 512, 256, 1], first_needs_input_grad=True)
    cross_forward = 3 * (2 * width * 512 + 2 * 512 * width)  # per layer V: d -> 512, U: 512 -> d
    forward = bottom[0] + cross_forward + top[0]
    backward = bottom[1] + 2 * cross_forward + top[1]
    counted = total(dense_flops(cfg))
    assert (counted.forward, counted.backward) == (forward, backward)
    assert counted.train == 96_169_472  # the figure the docs quote


def test_mlperf_flops_per_example_equal_flop_counter_mode():
    cfg = load_config("mlperf_dlrm_dcnv2")
    torch.manual_seed(0)
    dense_arch = get_spec(cfg.model.arch).build(cfg.model, model_inputs(cfg))
    assert sum(p.numel() for p in dense_arch.parameters()) == 16_044_545
    batch = 3
    dense = torch.randn(batch, 13)  # raw features: no gradient, as in training
    pooled = torch.randn(batch, 26 * 128, requires_grad=True)  # the tables' output: needs its gradient
    with FlopCounterMode(display=False) as counter:
        logits, _, _ = dense_arch(dense, pooled)
        logits.sum().backward()
    assert counter.get_total_flops() == batch * total(dense_flops(cfg)).train


@pytest.mark.distributed
@pytest.mark.slow
def test_mlperf_cpu_preset_trains_on_two_ranks(tmp_path):
    from recscale.data.prepare import prepare_data
    from tests.distributed import run_distributed
    from tests.trainer.runs import losses, new_run

    cfg = load_config(
        "mlperf_dlrm_dcnv2_cpu",
        [
            f"data.cache_dir={tmp_path / 'cache'}",
            "data.synthetic.num_train=4096",
            "data.synthetic.num_valid=512",
            "data.synthetic.row_group_size=1024",
            "data.reader.shuffle_buffer_rows=2048",
            "trainer.batch_size=256",
            "trainer.max_steps=4",
            "trainer.log_every=1",
            "metrics.tensorboard=false",
            "metrics.progress_bar=never",
            "checkpoint.at_end=false",
        ],
    )
    prepare_data(cfg.data, cfg.embeddings)
    run_dir = new_run(tmp_path, "mlperf_cpu", cfg)
    run_distributed(_train, 2, cfg, run_dir)
    trained = losses(run_dir)
    assert sorted(trained) == [1, 2, 3, 4] and all(math.isfinite(v) for v in trained.values())
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["batch_size_per_rank"] == 128
    assert summary["flops_per_example"]["train"] == 96_169_472
    assert summary["dense_parameters"] == 16_044_545
    assert math.isfinite(summary["final_eval"]["auc"])


def _train(rank: int, world: int, cfg, run_dir) -> None:
    from recscale.trainer.loop import train

    train(cfg, run_dir)


# ------------------------------------------------------------------------------------ TorchRec's DLRM_DCN


def _linears(module: nn.Module) -> list[nn.Linear]:
    return [m for m in module.modules() if isinstance(m, nn.Linear)]


def test_torchrec_dlrm_dcn_preset_computes_what_torchrecs_dlrm_dcn_computes():
    """Same weights in both (embeddings included) give the same logits: the preset is TorchRec's model."""
    from torchrec import EmbeddingBagCollection
    from torchrec.models.dlrm import DLRM_DCN
    from torchrec.modules.embedding_configs import EmbeddingBagConfig

    from tests.batches import random_batch

    cfg = load_config("torchrec_dlrm_dcn")
    m = cfg.model
    assert (m.dense_arch, m.over_arch, m.dcnv2.num_cross_layers, m.dcnv2.low_rank) == (
        [64, 12],
        [500, 500, 500],
        3,
        128,
    )
    assert m.dcnv2.structure == "stacked" and cfg.embeddings.dim == 12 and cfg.trainer.batch_size == 4096
    assert [t.num_embeddings for t in cfg.embeddings.tables] == [100_000] * 26
    for t in cfg.embeddings.tables:
        t.num_embeddings = 1000  # the same model with shorter tables, to keep the test light
    built = build_model(cfg, sparse_device="cpu")
    ours = built.rec_model().eval()
    tables = [
        EmbeddingBagConfig(name=t.name, embedding_dim=12, num_embeddings=1000, feature_names=[f"C{i}"])
        for i, t in enumerate(cfg.embeddings.tables, start=1)
    ]
    theirs = DLRM_DCN(
        EmbeddingBagCollection(tables=tables),
        dense_in_features=13,
        dense_arch_layer_sizes=[64, 12],
        over_arch_layer_sizes=[500, 500, 500, 1],
        dcn_num_layers=3,
        dcn_low_rank_dim=128,
    ).eval()
    assert sum(p.numel() for n, p in theirs.named_parameters() if "sparse_arch" not in n) == sum(
        p.numel() for p in ours.dense.parameters()
    )
    with torch.no_grad():
        theirs.sparse_arch.embedding_bag_collection.load_state_dict(ours.sparse.ebc.state_dict())
        for mine, their in zip(
            _linears(ours.dense.bottom) + _linears(ours.dense.deep) + [ours.dense.head],
            _linears(theirs.dense_arch) + _linears(theirs.over_arch),
            strict=True,
        ):
            mine.weight.copy_(their.weight)
            mine.bias.copy_(their.bias)
        crossnet = theirs.inter_arch.crossnet
        for layer, w, v, b in zip(ours.dense.cross, crossnet.W_kernels, crossnet.V_kernels, crossnet.bias, strict=True):
            layer.down.weight.copy_(v)  # x -> V x      [rank, d]
            layer.up.weight.copy_(w)  # -> W (V x) + b  [d, rank]
            layer.up.bias.copy_(b)
    batch = random_batch(cfg, 64, seed=3)
    with torch.no_grad():
        _, (_, logits, _, _, _) = ours(batch)
        expected = theirs(batch.dense, batch.sparse)
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5)
    assert len(set(logits.flatten().tolist())) == 64  # every example its own output: not a degenerate case
