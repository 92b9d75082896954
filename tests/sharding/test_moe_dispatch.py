"""The dropless dispatcher: every route reaches its expert's rank and comes back, nothing dropped or padded.

Each rank routes its tokens to random global experts (some experts get nothing, some ranks send a
rank nothing); the "experts" tag each received row with its local expert and source, so the test can
check where every row went, that the combine restores route order, and that gradients flow back to
the right tokens. At world 2 and 3, with one host read per dispatch.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist

from recscale.modules.host_reads import deliberate_reads
from recscale.sharding.moe_dispatch import DroplessDispatcher
from tests.distributed import run_distributed

LOCAL_EXPERTS, TOKENS, WIDTH, TOP_K = 2, 7, 3, 2


def _routes(rank: int, num_experts: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Tokens ``[S, W]`` (value = rank·1000 + token·10 + column) and top-2 distinct experts per token."""
    g = torch.Generator().manual_seed(rank)
    x = rank * 1000 + torch.arange(TOKENS).view(-1, 1) * 10 + torch.arange(WIDTH).float()
    scores = torch.rand(TOKENS, num_experts, generator=g)
    scores[:, num_experts - 1] = -1.0  # the last expert never gets a route: an empty local expert
    experts = scores.topk(TOP_K, dim=-1).indices
    return x.float(), experts


def _exchange(rank: int, world: int) -> dict:
    num_experts = LOCAL_EXPERTS * world
    x, experts_SK = _routes(rank, num_experts)
    x.requires_grad_(True)
    clock = SimpleNamespace(wall_clock_breakdown=True, time_falltoall=0.0, time_salltoall=0.0)
    dispatcher = DroplessDispatcher(num_experts, world, dist.group.WORLD, clock)
    reads = deliberate_reads()
    experts_R = experts_SK.flatten()
    token_R = torch.arange(TOKENS).repeat_interleave(TOP_K)
    plan = dispatcher.plan(experts_R)
    reads = deliberate_reads() - reads
    rows_TW = dispatcher.dispatch(x, token_R, plan)
    # each local expert j multiplies by its global id + 1 and appends it, so every row says where it ran
    global_T = (rank * LOCAL_EXPERTS + plan.local_expert_T).float()
    out_TV = torch.cat([rows_TW * (global_T + 1).unsqueeze(-1), global_T.unsqueeze(-1)], dim=1)
    y_RV = dispatcher.combine(out_TV, plan)
    timed = (clock.time_falltoall, clock.time_salltoall)
    (y_RV[:, :WIDTH].sum()).backward()
    sent = dispatcher.bytes_sent(plan, WIDTH, WIDTH + 1, 4, rank)
    return {
        "x": x.detach(),
        "experts_R": experts_R,
        "token_R": token_R,
        "y_RV": y_RV.detach(),
        "grad": x.grad,
        "reads": reads,
        "expert_rows": plan.expert_rows,
        "rows_TW": rows_TW.detach(),
        "send_splits": plan.send_splits,
        "bytes_sent": sent,
        "timed_ms": timed,
        "timed_after_backward": (clock.time_falltoall, clock.time_salltoall),
    }


@pytest.mark.distributed
@pytest.mark.parametrize("world", [2, 3])
def test_every_route_reaches_its_expert_and_comes_back_in_route_order(world):
    results = run_distributed(_exchange, world, timeout_s=120)
    for rank, r in enumerate(results):
        x, experts_R, token_R = r["x"], r["experts_R"], r["token_R"]
        expected = x[token_R] * (experts_R.float() + 1).unsqueeze(-1)
        torch.testing.assert_close(r["y_RV"][:, :WIDTH], expected, rtol=0, atol=0)
        assert torch.equal(r["y_RV"][:, WIDTH], experts_R.float())  # ran on the expert it was routed to
        # d/dx of Σ over a token's routes of (expert + 1) · x
        per_token = torch.zeros(TOKENS).index_add_(0, token_R, experts_R.float() + 1)
        torch.testing.assert_close(r["grad"], per_token.unsqueeze(-1).expand(-1, WIDTH), rtol=0, atol=0)
        assert r["reads"] == 1
        assert min(r["timed_ms"]) > 0 and r["timed_after_backward"] == r["timed_ms"]  # forward exchanges only
        assert r["send_splits"] == [
            int(((experts_R >= d * LOCAL_EXPERTS) & (experts_R < (d + 1) * LOCAL_EXPERTS)).sum()) for d in range(world)
        ]
        off_rank = sum(s for d, s in enumerate(r["send_splits"]) if d != rank)
        assert r["bytes_sent"] >= off_rank * WIDTH * 4
    # what each rank received: exactly the routes to its experts, expert by expert, nothing padded
    for rank, r in enumerate(results):
        mine = range(rank * LOCAL_EXPERTS, (rank + 1) * LOCAL_EXPERTS)
        want = [
            torch.cat([o["x"][o["token_R"][o["experts_R"] == e]] for o in results]) for e in mine
        ]  # per expert, by source rank, then in route order
        assert r["expert_rows"] == [len(w) for w in want]
        assert torch.equal(r["rows_TW"], torch.cat(want))
    assert results[-1]["expert_rows"][-1] == 0  # the last expert received nothing (and ran on 0 rows)
    assert sum(sum(r["expert_rows"]) for r in results) == world * TOKENS * TOP_K  # nothing dropped


@pytest.mark.parametrize("split_by_expert", [True, False])
def test_a_group_of_one_keeps_everything_local_and_reads_only_to_split_by_expert(split_by_expert):
    x, experts_SK = _routes(0, 4)
    dispatcher = DroplessDispatcher(4, 1, None)
    before = deliberate_reads()
    experts_R = experts_SK.flatten()
    plan = dispatcher.plan(experts_R, split_by_expert)
    token_R = torch.arange(TOKENS).repeat_interleave(TOP_K)
    rows = dispatcher.dispatch(x, token_R, plan)
    assert deliberate_reads() - before == int(split_by_expert)
    assert plan.send_splits == plan.recv_splits == [TOKENS * TOP_K]
    order = torch.sort(experts_R, stable=True).indices
    assert torch.equal(rows, x[token_R[order]]) and torch.equal(plan.local_expert_T, experts_R[order])
    if split_by_expert:
        assert plan.expert_rows == torch.bincount(experts_R, minlength=4).tolist()
    assert torch.equal(dispatcher.combine(rows, plan), x[token_R])


def test_experts_must_split_evenly():
    with pytest.raises(ValueError, match="sharding.ep_size: 4 does not divide the 6 experts"):
        DroplessDispatcher(6, 4, None)
