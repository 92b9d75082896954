import pytest
import torch
import torch.distributed as dist

from tests.distributed import run_distributed

pytestmark = pytest.mark.distributed


def _all_reduce_rank(rank: int, world: int) -> float:
    t = torch.tensor([float(rank + 1)])
    dist.all_reduce(t)
    return float(t)


def _fail_on_rank_one(rank: int, world: int) -> None:
    if rank == 1:
        raise ValueError("boom")


def test_results_come_back_per_rank():
    assert run_distributed(_all_reduce_rank, 3) == [6.0, 6.0, 6.0]


def test_a_failing_rank_is_reported_with_its_traceback():
    with pytest.raises(AssertionError, match="rank 1: ValueError: boom"):
        run_distributed(_fail_on_rank_one, 2)
