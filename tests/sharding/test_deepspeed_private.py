"""DeepSpeed state that recscale's checkpoints read without a public API, pinned.

``sharding/zero_fragments.py`` reads each rank's ZeRO 1/2 fragments in place (DeepSpeed's
``safe_get_local_*`` helpers are ZeRO-3 only), and ``sharding/dense_deepspeed.py`` reads the bf16
ZeRO 0 optimizer's fp32 copies and sets the engine's step counters. When a DeepSpeed release renames
or changes one of these, this test fails naming it, instead of a checkpoint silently missing state.
``sharding/process_group.py`` also switches off, through DeepSpeed's table of compatible ops, the CPU
shared-memory op DeepSpeed would otherwise compile at start-up; that is pinned here too.
"""

from __future__ import annotations

import deepspeed
import pytest
import torch

from recscale.configs.schema import DenseOptimizerConfig
from recscale.sharding.dense_parallel import DeepSpeedDense
from recscale.sharding.process_group import SHM_OP, deepspeed_environment
from recscale.sharding.zero_fragments import ZeroParamAccess, is_zero_partitioned
from tests.distributed import run_distributed

pytestmark = pytest.mark.distributed

WHO = f"DeepSpeed {deepspeed.__version__}"
WHERE = "recscale's checkpoints read it (sharding/zero_fragments.py, sharding/dense_deepspeed.py)"


def _engine(zero: int, bf16: bool) -> DeepSpeedDense:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.ReLU(), torch.nn.Linear(7, 1))
    backend = DeepSpeedDense(
        model.bfloat16() if bf16 else model, DenseOptimizerConfig(name="adam", lr=0.01), 4, zero, 8, bf16
    )
    x = torch.randn(8, 5, dtype=torch.bfloat16 if bf16 else torch.float32)
    backend.backward(backend.module(x).float().pow(2).mean())
    backend.step()
    return backend


def _check(rank: int, world: int) -> dict[str, str]:
    """Each pinned attribute's problem ('' when DeepSpeed still has it as recscale reads it)."""
    problems = {}
    for zero, bf16 in ((1, False), (2, True)):
        backend = _engine(zero, bf16)
        opt = backend.engine.optimizer
        key = f"zero{zero}{'-bf16' if bf16 else ''}"
        problems[f"{key}: optimizer has bit16_groups / bf16_groups"] = "" if is_zero_partitioned(opt) else "missing"
        inner = getattr(opt, "optimizer", None)
        problems[f"{key}: optimizer.optimizer is the torch optimizer"] = (
            "" if isinstance(inner, torch.optim.Optimizer) else f"got {type(inner).__name__}"
        )
        for name, p in backend.inner.named_parameters():
            mapping = getattr(p, "_hp_mapping", "absent")
            where = f"{key}: {name}._hp_mapping"
            if mapping == "absent" or mapping is None:
                problems[where] = "absent (at world size 1 every parameter lies in this rank's partition)"
                continue
            try:
                partition = inner.param_groups[mapping.param_group_index]["params"][0]
                hp, lp, start = mapping.hp_fragment, mapping.lp_fragment_address, mapping.hp_fragment_address.start
                numel = mapping.hp_fragment_address.numel
                aliased = hp.data_ptr() == partition.data_ptr() + start * partition.element_size()
                same = torch.equal(hp, partition.narrow(0, start, numel)) and hp.dtype == torch.float32
                master = torch.allclose(p.detach().float().reshape(-1)[lp.start : lp.start + numel], hp, atol=1e-2)
                state = inner.state[partition]
                moments = all(state[k].shape == partition.shape for k in ("exp_avg", "exp_avg_sq"))
                problems[where] = (
                    ""
                    if aliased and same and master and moments and "step" in state
                    else (
                        f"hp_fragment aliases its partition: {aliased}, equals it: {same}, is p's master: {master}, "
                        f"Adam moments shaped like the partition: {moments}"
                    )
                )
            except (AttributeError, KeyError, IndexError, TypeError) as err:
                problems[where] = f"{type(err).__name__}: {err}"
        access = ZeroParamAccess(opt)
        held = access.held(next(backend.inner.parameters()))
        problems[f"{key}: ZeroParamAccess.held"] = "" if held is not None and held.state else "no fragment or state"
        problems[f"{key}: engine step counters"] = (
            ""
            if isinstance(backend.engine.global_steps, int) and hasattr(backend.engine, "global_samples")
            else "missing"
        )
    backend = getattr(deepspeed.comm.comm, "cdb", None)
    problems[f"deepspeed.comm.comm.cdb.shm_comm_op is None (no {SHM_OP} compiled)"] = (
        "" if backend is not None and getattr(backend, "shm_comm_op", "absent") is None else "built or absent"
    )
    zero0 = _engine(0, True).engine.optimizer
    pairs = list(zip(getattr(zero0, "fp16_groups", []), getattr(zero0, "fp32_groups", [])))
    fp32_copies = pairs and all(
        lo.dtype == torch.bfloat16 and hi.dtype == torch.float32 for g, h in pairs for lo, hi in zip(g, h)
    )
    problems["zero0-bf16: fp16_groups / fp32_groups hold the bf16 weights and their fp32 copies"] = (
        "" if fp32_copies else "missing or changed"
    )
    return problems


def test_deepspeed_state_that_checkpoints_read_is_still_there():
    problems = run_distributed(_check, 1)[0]
    broken = {k: v for k, v in problems.items() if v}
    assert not broken, f"{WHO} changed state that {WHERE}:\n" + "\n".join(f"  {k}: {v}" for k, v in broken.items())


def test_deepspeed_start_up_compiles_no_shared_memory_op(monkeypatch, tmp_path):
    monkeypatch.setenv("DS_ACCELERATOR", "cpu")  # both restored afterwards
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))  # were the op built after all, it would land here
    deepspeed_environment()
    compatible = deepspeed.ops.__compatible_ops__
    assert compatible.get(SHM_OP) is False, (
        f"{WHO}: deepspeed.ops.__compatible_ops__ no longer takes {SHM_OP!r} (sharding/process_group.py "
        f"skip_shared_memory_op); without it every fresh environment compiles the op at DeepSpeed's start-up"
    )
    from deepspeed.comm.torch import build_shm_op

    assert build_shm_op() is None
