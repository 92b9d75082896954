"""Every model family exports (and its graph equals the eager model) or refuses in one line saying why."""

from __future__ import annotations

import pytest
import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from recscale.configs import load_config
from recscale.modules.build import build_model
from recscale.serving.export import assemble, export_program, refusal, stage_refusal

SMALL = ["trainer.batch_size=64"]


def _inputs(cfg, batch: int, seed: int) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    rows = {t.name: t.num_embeddings for t in cfg.embeddings.tables}
    out: list[torch.Tensor] = [torch.randn(batch, len(cfg.data.features.dense), generator=g)]
    for f in cfg.data.features.sparse:
        lengths = torch.randint(0, 3, (batch,), generator=g)
        out += [torch.randint(0, rows[f.table], (int(lengths.sum()),), generator=g), torch.cumsum(lengths, 0) - lengths]
    return tuple(out)


def _assembled(preset: str):
    cfg = load_config(preset, SMALL)
    assert refusal(cfg) == ""
    built = build_model(cfg, sparse_device="cpu")
    weights = {name: bag.weight.detach() for name, bag in built.sparse.ebc.embedding_bags.items()}
    return cfg, built, assemble(cfg, built, weights, "none")


@pytest.mark.parametrize("preset", ["quickstart", "wukong_synthetic", "dcnv2_hilomoe", "wukong_hilomoe"])
def test_pooled_models_export_and_match_the_eager_model(preset):
    cfg, built, model = _assembled(preset)
    program = export_program(cfg, model).module()
    for batch in (1, 9):
        inputs = _inputs(cfg, batch, batch)
        keys = [f.name for f in cfg.data.features.sparse]
        kjt = KeyedJaggedTensor.from_lengths_sync(
            keys=keys,
            values=torch.cat(inputs[1::2]),
            lengths=torch.cat(
                [torch.diff(o, append=torch.tensor([len(v)])) for v, o in zip(inputs[1::2], inputs[2::2])]
            ),
        )
        with torch.no_grad():
            eager = torch.sigmoid(built.dense(inputs[0], built.sparse(kjt))[0])
            assert torch.allclose(program(*inputs), eager, atol=1e-5), preset


@pytest.mark.parametrize(
    ("preset", "why"), [("kunlun_synthetic", "reads event sequences"), ("gca_two_domain", "reads event sequences")]
)
def test_sequence_models_refuse_in_one_line(preset, why):
    message = refusal(load_config(preset, SMALL))
    assert why in message and "\n" not in message and "export supports pooled-table models only" in message


def test_a_staged_run_exports_only_after_its_last_stage_starts():
    cfg = load_config(
        "dcnv2_hilomoe",
        SMALL
        + [
            "trainer.stages=[{name: backbone, train: backbone, steps: 4}, {name: experts, train: experts, steps: 4},"
            " {name: joint, train: all, steps: 4}]"
        ],
    )
    assert "before the last training stage 'joint' (steps > 8)" in stage_refusal(cfg, 8)
    assert stage_refusal(cfg, 9) == ""


class _BatchFixed(torch.nn.Module):
    """A dense arch whose trace fixes the batch size (``float`` of a shape)."""

    def forward(self, dense, pooled):
        return pooled[:, :1] * float(pooled.shape[0]), torch.zeros(()), {}


def test_a_graph_that_fixes_the_batch_size_is_refused_in_one_line():
    cfg = load_config("quickstart", SMALL)
    built = build_model(cfg, sparse_device="cpu")
    built.dense = _BatchFixed()
    weights = {name: bag.weight.detach() for name, bag in built.sparse.ebc.embedding_bags.items()}
    with pytest.raises(ValueError) as err:
        export_program(cfg, assemble(cfg, built, weights, "none"))
    assert str(err.value) == (
        "model 'dcnv2' does not export with torch.export: the dense arch fixes the batch size while tracing, so no "
        "graph serves every batch size"
    )


@pytest.mark.parametrize("heads", ["linear", "offset", "scaled"])
def test_zipper_models_export_the_longest_window_of_each_delayed_task(heads):
    cfg = load_config("zipper_synthetic", [*SMALL, f"model.tasks.1.window_heads={heads}"])
    built = build_model(cfg, sparse_device="cpu")
    weights = {name: bag.weight.detach() for name, bag in built.sparse.ebc.embedding_bags.items()}
    with torch.no_grad():  # shorter windows that differ from the served one
        for name in ("offsets", "seen_logits"):
            if getattr(built.dense, name, None) is not None:
                getattr(built.dense, name).copy_(torch.linspace(-1.0, 0.5, getattr(built.dense, name).numel()))
    program = export_program(cfg, assemble(cfg, built, weights, "none")).module()
    inputs = _inputs(cfg, 7, 0)
    kjt = KeyedJaggedTensor.from_lengths_sync(
        keys=[f.name for f in cfg.data.features.sparse],
        values=torch.cat(inputs[1::2]),
        lengths=torch.cat([torch.diff(o, append=torch.tensor([len(v)])) for v, o in zip(inputs[1::2], inputs[2::2])]),
    )
    with torch.no_grad():
        heads_BH = built.dense(inputs[0], built.sparse(kjt))[0]
    assert heads_BH.shape[1] == 4  # click, purchase's 1-, 3- and 7-day heads
    assert torch.allclose(program(*inputs), torch.sigmoid(heads_BH[:, [0, 3]]), atol=1e-5), heads
