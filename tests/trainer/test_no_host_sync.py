"""The training step reads nothing it computed back to the host (a GPU would stall on every such read).

Over the steps between two log boundaries of a real 2-rank run, ``HostReadCounter`` counts host
reads of tensors made in the step (``item``, ``float``, ``bool``, ``tolist``, ``.cpu()``, value-shaped
ops such as ``nonzero`` or boolean-mask indexing): there must be none. Work between steps (the log
record, evaluation, checkpoints, stage changes) is outside the count: the loop drains the device
there on purpose. With CUDA present the same steps also run under
``torch.cuda.set_sync_debug_mode("error")``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from tests.distributed import run_distributed
from tests.host_reads import HostReadCounter
from tests.trainer.runs import new_run, small_job

ROUTED = ["model.kunlun.mowe.partition=routed", "model.kunlun.mowe.num_experts=4", "model.kunlun.mowe.top_k=2"]
"""Kunlun's mixture of Wukong experts with a router (the partition that expert parallelism applies to)."""

EXFM_ADAPTER_FIRST = [
    "data.features.teacher=teacher",
    "data.synthetic.teacher_hit_rate=0.8",
    "model.teacher.as_feature=false",
    "model.teacher.head=auxiliary",
    "model.teacher.adapter=true",
    "model.teacher.adapter_update=before",
]
"""ExFM's auxiliary head and student adapter, the adapter stepped first (generated teacher scores, some missing)."""

COUNTED_WINDOW = (4, 8)
"""The log boundaries whose steps in between are counted (after the 3 warm-up steps)."""

SHORT = ["trainer.log_every=4", "checkpoint.every_steps=0", "checkpoint.at_end=false", "trainer.max_steps=8"]


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Synthetic data shared by the module's runs."""
    return tmp_path_factory.mktemp("data")


def _count_reads(rank: int, world: int, cfg: Any, run_dir: Path) -> dict[str, Any]:
    """Train ``cfg``; the host reads of the steps between the ``COUNTED_WINDOW`` log boundaries.

    Returns the undeclared reads (where, how many), the declared ones (``read_sizes``) and how many
    ``read_sizes`` calls the module itself counted over the same steps.
    """
    from recscale.modules.host_reads import deliberate_reads
    from recscale.trainer import loop, run_meter

    counter = HostReadCounter()
    counted = {"deliberate": 0}
    state = {"armed": False, "running": False, "model": None}
    log_train, lap, resume = loop.StepLoop._log_train, run_meter.RunMeter.lap, run_meter.RunMeter.resume_timing

    def log_train_watched(self: Any, step: int) -> None:
        state["armed"] = COUNTED_WINDOW[0] <= step < COUNTED_WINDOW[1]
        state["model"] = self.parallel.model
        log_train(self, step)

    def lap_watched(self: Any) -> None:
        if state["running"]:
            counter.stop()
            counted["deliberate"] += deliberate_reads()
            state["running"] = False
        lap(self)

    def resume_watched(self: Any) -> None:
        resume(self)
        if state["armed"]:
            HostReadCounter.tag_model(state["model"])
            counted["deliberate"] -= deliberate_reads()
            counter.start()
            state["running"] = True
            if torch.cuda.is_available():
                torch.cuda.set_sync_debug_mode("error")

    loop.StepLoop._log_train, run_meter.RunMeter.lap = log_train_watched, lap_watched
    run_meter.RunMeter.resume_timing = resume_watched
    try:
        loop.train(cfg, run_dir)
    finally:
        loop.StepLoop._log_train, run_meter.RunMeter.lap, run_meter.RunMeter.resume_timing = log_train, lap, resume
    return {"undeclared": counter.undeclared(), "declared": counter.declared(), "read_sizes": counted["deliberate"]}


@pytest.mark.parametrize(
    ("preset", "overrides"),
    [
        ("quickstart", []),  # DCN-V2, DDP, TorchRec's pipeline
        ("quickstart", ["trainer.pipeline=false", "sharding.dense=deepspeed", "sharding.zero_stage=1"]),
        ("dcnv2_hilomoe", []),  # HiLoMoE routing, training stages
        ("kunlun_synthetic", ROUTED),  # sequences, attention, routed MoWE with every expert on every rank
        ("quickstart", EXFM_ADAPTER_FIRST),  # the adapter's own Adam step (an all-reduce) in the forward pass
    ],
    ids=["dcnv2-pipeline", "dcnv2-plain-deepspeed", "hilomoe", "kunlun-routed", "dcnv2-exfm-adapter-before"],
)
def test_training_steps_make_no_host_reads(tmp_path: Path, cache: Path, preset: str, overrides: list[str]) -> None:
    cfg = small_job(cache, *SHORT, *overrides, preset=preset)
    run_dir = new_run(tmp_path, "run", cfg)
    reads = run_distributed(_count_reads, 2, cfg, run_dir)
    assert [r["undeclared"] for r in reads] == [{}, {}], f"host reads inside the training step: {reads}"
    assert [r["declared"] for r in reads] == [0, 0]


def test_expert_parallel_steps_read_only_the_dispatch_split_sizes(tmp_path: Path, cache: Path) -> None:
    """Dropless expert parallelism needs each all-to-all's split sizes on the host: one declared read
    per MoWE layer and step (``read_sizes``), and nothing else."""
    cfg = small_job(cache, *SHORT, *ROUTED, "sharding.dense=deepspeed", "sharding.ep_size=2", preset="kunlun_synthetic")
    run_dir = new_run(tmp_path, "run", cfg)
    reads = run_distributed(_count_reads, 2, cfg, run_dir)
    assert [r["undeclared"] for r in reads] == [{}, {}], f"host reads inside the training step: {reads}"
    layers = cfg.model.kunlun.num_layers
    steps = COUNTED_WINDOW[1] - COUNTED_WINDOW[0]
    assert [r["read_sizes"] for r in reads] == [steps * layers] * 2
    assert [r["declared"] for r in reads] == [steps * layers] * 2  # the counter saw each of them


def _read_in_step(rank: int, world: int, cfg: Any, run_dir: Path) -> dict[str, int]:
    """The same count with a deliberate ``float(loss)`` in every step: the counter must see it."""
    from recscale.trainer import run_meter

    original = run_meter.RunMeter.step_done

    def reading(self: Any, out: Any, steady: bool, profiled: bool) -> None:
        float(out[0])
        original(self, out, steady, profiled)

    run_meter.RunMeter.step_done = reading
    try:
        return _count_reads(rank, world, cfg, run_dir)
    finally:
        run_meter.RunMeter.step_done = original


def test_the_counter_sees_a_read_of_the_loss(tmp_path: Path, cache: Path) -> None:
    cfg = small_job(cache, *SHORT)
    run_dir = new_run(tmp_path, "run", cfg)
    (reads,) = run_distributed(_read_in_step, 1, cfg, run_dir)
    steps = COUNTED_WINDOW[1] - COUNTED_WINDOW[0]
    assert sum(n for where, n in reads["undeclared"].items() if "Tensor.__float__" in where) == steps
