"""Models declare what they support; a job that asks for more is refused in one line naming the key.

Also: every registry model's dense arch implements the FLOP protocol its spec declares
(``CountsFlops``, or ``CountsSequenceFlops`` for sequence models).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from recscale.configs import ConfigError, load_config
from recscale.configs.schema import StageConfig
from recscale.modules.build import model_inputs
from recscale.modules.flops import (
    CountsFlops,
    CountsSequenceFlops,
    FlopCount,
    Lengths,
    flop_counter,
    sequence_flop_counter,
)
from recscale.modules.registry import MODEL_SPECS, check_model
from recscale.trainer.job import check_job
from tests.modules.seq_helpers import seq_config

PRESET = {
    "dlrm": "dlrm_criteo",
    "dcnv2": "quickstart",
    "wukong": "wukong_synthetic",
    "dcnv2_hilomoe": "dcnv2_hilomoe",
    "wukong_hilomoe": "wukong_hilomoe",
    "kunlun": "kunlun_synthetic",
    "gca_seq": "gca_two_domain",
}
CONFIGS = {
    # lattice with event sequences (its preset, lattice_multitask, has none): a small job built here
    "lattice": lambda: seq_config("lattice", model={"lattice": {"dim": 8, "fmb_mlp": [16], "task_mlp": [8]}}),
}


def _config(arch: str):
    return CONFIGS[arch]() if arch in CONFIGS else load_config(PRESET[arch])


def _refusal(cfg, key: str) -> str:
    """The one problem line about ``key`` (check_job raises with every problem, one per line)."""
    with pytest.raises(ConfigError) as err:
        check_job(cfg, 2, "cpu")
    lines = [line.strip() for line in str(err.value).splitlines() if line.strip().startswith(key)]
    assert len(lines) == 1, str(err.value)
    return lines[0]


def test_every_registered_arch_has_a_preset_here():
    assert sorted([*PRESET, *CONFIGS]) == sorted(MODEL_SPECS)


@pytest.mark.parametrize("arch", ["dlrm", "dcnv2", "wukong", "gca_seq"])
def test_ep_size_is_refused_for_a_model_without_expert_layers(arch):
    cfg = load_config(PRESET[arch], ["sharding.dense=deepspeed", "sharding.ep_size=2"])
    line = _refusal(cfg, "sharding.ep_size")
    assert line == (
        f"sharding.ep_size: 2 but model.arch {arch} has no expert layers "
        "(expert parallelism: dcnv2_hilomoe, kunlun, wukong_hilomoe)"
    )


def test_stages_are_refused_for_a_model_without_staged_training():
    cfg = load_config("quickstart")
    cfg.trainer.stages = [StageConfig(name="all", train="all", steps=5)]
    cfg.trainer.max_steps = 0
    line = _refusal(cfg, "trainer.stages")
    assert line.startswith("trainer.stages: model.arch dcnv2 has no staged training")
    assert line.endswith("staged training: dcnv2_hilomoe, wukong_hilomoe)")


def test_sequences_are_refused_for_a_model_that_reads_none():
    cfg = seq_config(arch="dcnv2", model={"dense_arch": []})
    problems = check_model(cfg)
    (line,) = [p for p in problems if p.startswith("data.features.sequences")]
    assert line == (
        "data.features.sequences: model.arch dcnv2 reads no event sequences "
        "(remove them, or use a sequence model: gca_seq, kunlun, lattice)"
    )


def test_kunlun_expert_parallelism_needs_routed_mowe_and_the_dropless_exchange():
    base = ["sharding.dense=deepspeed", "sharding.ep_size=2"]
    strided = load_config("kunlun_synthetic", base)
    line = _refusal(strided, "sharding.ep_size")
    assert line.startswith("sharding.ep_size: 2 needs model.kunlun.mowe.partition: routed (got 'strided'")
    routed = ["model.kunlun.mowe.partition=routed", "model.kunlun.mowe.num_experts=4"]
    check_job(load_config("kunlun_synthetic", base + routed), 2, "cpu")  # accepted
    padded = load_config("kunlun_synthetic", [*base, *routed, "sharding.moe.exchange=padded"])
    assert _refusal(padded, "sharding.moe.exchange").startswith("sharding.moe.exchange: 'padded' is HiLoMoE's")
    odd = load_config(
        "kunlun_synthetic", [*base, "model.kunlun.mowe.partition=routed", "model.kunlun.mowe.num_experts=3"]
    )
    assert _refusal(odd, "model.kunlun.mowe.num_experts") == (
        "model.kunlun.mowe.num_experts: 3 experts cannot be split over sharding.ep_size 2 ranks"
    )


def test_capacity_factor_needs_the_padded_exchange():
    base = ["sharding.dense=deepspeed", "sharding.ep_size=2", "sharding.moe.capacity_factor=1.25"]
    line = _refusal(load_config("dcnv2_hilomoe", base), "sharding.moe.capacity_factor")
    assert line.startswith("sharding.moe.capacity_factor: 1.25 drops routes over capacity")
    check_job(load_config("dcnv2_hilomoe", [*base, "sharding.moe.exchange=padded"]), 2, "cpu")  # accepted


def test_what_a_model_declares_is_accepted():
    for arch in ("dcnv2_hilomoe", "wukong_hilomoe"):
        check_job(load_config(PRESET[arch], ["sharding.dense=deepspeed", "sharding.ep_size=2"]), 2, "cpu")


@pytest.mark.parametrize("arch", sorted([*PRESET, *CONFIGS]))
def test_dense_arch_implements_the_declared_flop_protocol(arch):
    cfg = _config(arch)
    spec = MODEL_SPECS[arch]
    with torch.device("meta"):
        dense = spec.build(cfg.model, model_inputs(cfg))
    assert isinstance(dense, spec.flop_protocol)
    counter = spec.counter(dense)
    breakdown = counter.flops()
    assert breakdown and all(isinstance(v, FlopCount) for v in breakdown.values())
    if spec.uses_sequences:
        assert spec.flop_protocol is CountsSequenceFlops
        seq = sequence_flop_counter(dense)
        lengths = {q.name: Lengths.full(1, 3) for q in cfg.data.features.sequences}
        batch = seq.flops(seq_lengths=lengths)  # three examples of length 1: less than three padded ones
        assert sum(v.train for v in batch.values()) < 3 * sum(v.train for v in breakdown.values())
    else:
        assert spec.flop_protocol is CountsFlops


def test_a_module_without_the_protocol_is_named():
    with pytest.raises(TypeError, match="Linear has no flops"):
        flop_counter(nn.Linear(2, 2))

    class PerExampleOnly(nn.Module):
        def flops(self) -> dict[str, FlopCount]:
            return {}

    flop_counter(PerExampleOnly())
    with pytest.raises(TypeError, match="PerExampleOnly.flops\\(\\) takes no seq_lengths"):
        sequence_flop_counter(PerExampleOnly())
