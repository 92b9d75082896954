"""One rank of TorchRec's own DLRM_DCN training under DistributedModelParallel: the reference side of
``torchrec_speed.py``, which starts it under torchrun (``torchrec_run``); not meant to be run by hand.

The model is the ``torchrec_dlrm_dcn`` preset built from TorchRec's ``DLRM_DCN``, sharded by TorchRec's
planner, the tables' Adagrad fused into backward, the dense Adagrad through ``KeyedOptimizerWrapper``,
stepped by ``TrainPipelineSparseDist`` on batches built from the same Parquet rows before the clock
starts. Rank 0 writes examples/s (the first ``WARMUP_STEPS`` steps left out) to ``--out`` as JSON.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from pathlib import Path
from typing import Any

from results_io import write_results
from torchrec_speed import WARMUP_STEPS, load_config


def worker(args: argparse.Namespace) -> None:
    """One rank of TorchRec's own DLRM_DCN training (under torchrun)."""
    import torch
    import torch.distributed as dist
    from torchrec import EmbeddingBagCollection
    from torchrec.datasets.utils import Batch as TorchRecBatch
    from torchrec.distributed import TrainPipelineSparseDist
    from torchrec.distributed.model_parallel import DistributedModelParallel, get_default_sharders
    from torchrec.distributed.planner import EmbeddingShardingPlanner, Topology
    from torchrec.models.dlrm import DLRM_DCN, DLRMTrain
    from torchrec.modules.embedding_configs import EmbeddingBagConfig
    from torchrec.optim.apply_optimizer_in_backward import apply_optimizer_in_backward
    from torchrec.optim.keyed import CombinedOptimizer, KeyedOptimizerWrapper
    from torchrec.optim.optimizers import in_backward_optimizer_filter

    from recscale.data.prepare import prepare_data
    from recscale.trainer.data import train_reader

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    cfg = load_config(args, Path(args.cache), Path(args.runs), world)
    m, dense_opt, sparse_opt = cfg.model, cfg.optimizer.dense, cfg.optimizer.sparse
    assert (dense_opt.name, sparse_opt.name) == ("adagrad", "adagrad"), "the TorchRec side builds Adagrad"
    torch.manual_seed(cfg.seed)

    # The same rows recscale's rank reads, as TorchRec batches, built before the clock starts.
    paths = prepare_data(cfg.data, cfg.embeddings)
    reader = train_reader(cfg, paths.train, args.batch, rank, world)
    batches = [
        TorchRecBatch(dense_features=b.dense, sparse_features=b.sparse, labels=b.labels[:, 0])
        for b in itertools.islice(reader, args.steps)
    ]

    dims = {t.name: t.dim or cfg.embeddings.dim for t in cfg.embeddings.tables}
    tables = [
        EmbeddingBagConfig(
            name=t.name, embedding_dim=dims[t.name], num_embeddings=t.num_embeddings, feature_names=[f.name]
        )
        for t in cfg.embeddings.tables
        for f in cfg.data.features.sparse
        if f.table == t.name
    ]
    model = DLRM_DCN(
        embedding_bag_collection=EmbeddingBagCollection(tables=tables, device=torch.device("meta")),
        dense_in_features=len(cfg.data.features.dense),
        dense_arch_layer_sizes=m.dense_arch,
        over_arch_layer_sizes=[*m.over_arch, 1],
        dcn_num_layers=m.dcnv2.num_cross_layers,
        dcn_low_rank_dim=m.dcnv2.low_rank,
        dense_device=torch.device("cpu"),
    )
    train_model = DLRMTrain(model)
    dense_parameters = sum(p.numel() for n, p in train_model.named_parameters() if "sparse_arch" not in n)
    apply_optimizer_in_backward(
        torch.optim.Adagrad, train_model.model.sparse_arch.parameters(), {"lr": sparse_opt.lr, "eps": sparse_opt.eps}
    )
    planner = EmbeddingShardingPlanner(
        topology=Topology(world_size=world, local_world_size=world, compute_device="cpu"), batch_size=args.batch
    )
    plan = planner.collective_plan(train_model, get_default_sharders(), dist.GroupMember.WORLD)
    dmp = DistributedModelParallel(module=train_model, device=torch.device("cpu"), plan=plan)
    dense = KeyedOptimizerWrapper(
        dict(in_backward_optimizer_filter(dmp.named_parameters())),
        lambda params: torch.optim.Adagrad(params, lr=dense_opt.lr, eps=dense_opt.eps),
    )
    pipeline = TrainPipelineSparseDist(dmp, CombinedOptimizer([dmp.fused_optimizer, dense]), torch.device("cpu"))

    # warm-up + measured steps, plus the 2 batches the pipeline reads ahead (so every timed step is full)
    measured = args.steps - WARMUP_STEPS
    feed = itertools.islice(itertools.cycle(batches), args.steps + 2)
    for _ in range(WARMUP_STEPS):
        pipeline.progress(feed)
    dist.barrier()
    result: dict[str, Any] = {}
    if args.profile:
        result["profile"] = _profiled_steps(pipeline, feed, measured, Path(args.profile), rank)
        seconds = result["profile"]["wall_s"]
    else:
        start = time.perf_counter()
        for _ in range(measured):
            pipeline.progress(feed)
        seconds = time.perf_counter() - start
    per_rank = measured * args.batch / seconds
    if rank == 0:
        result.update(
            examples_per_s=per_rank * world,  # every rank steps in lockstep (the all-to-alls wait)
            examples_per_s_per_rank=per_rank,
            steps_measured=measured,
            step_time_s=seconds / measured,
            dense_parameters=dense_parameters,
            pipeline=type(pipeline).__name__,
            sharding={t: p.sharding_type for t, p in plan.plan["model.sparse_arch.embedding_bag_collection"].items()},
        )
        write_results(args.out, result)
    dist.destroy_process_group()


def _profiled_steps(pipeline: Any, feed: Any, steps: int, trace: Path, rank: int) -> dict[str, Any]:
    """Run ``steps`` steps under ``torch.profiler``; rank 0 writes the Chrome trace to ``trace``."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        for _ in range(steps):
            pipeline.progress(feed)
        wall = time.perf_counter() - start
    if rank == 0:
        prof.export_chrome_trace(str(trace))
    return {"wall_s": wall, "steps": steps, "trace": str(trace)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, required=True, help="steps, the first WARMUP_STEPS not measured")
    ap.add_argument("--batch", type=int, required=True, help="examples per rank per step")
    ap.add_argument("--cache", required=True, help="the data cache directory the recscale runs share")
    ap.add_argument("--runs", required=True, help="the benchmark's run directory")
    ap.add_argument("--out", required=True, help="where rank 0 writes its JSON result")
    ap.add_argument("--profile", default="", help="profile the measured steps; rank 0's Chrome trace here")
    worker(ap.parse_args())
    return 0


if __name__ == "__main__":
    sys.exit(main())
