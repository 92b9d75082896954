"""The planner's view of the hardware, built from ``sharding.topology`` (never hard-coded)."""

from __future__ import annotations

import torch
from torchrec.distributed.planner.types import HardwareConfig, KernelConfig, Topology, TopologyFactory
from torchrec.distributed.planner.types import TrainerConfig as PlannerTrainerConfig

from recscale.configs.schema import TopologyConfig

GB = 1024**3


def resolve_device(requested: str) -> str:
    """``auto`` -> ``cuda`` when a GPU is visible, else ``cpu``."""
    if requested != "auto":
        return requested
    return "cuda" if torch.cuda.is_available() else "cpu"


def build_topology(topo: TopologyConfig, world_size: int, local_world_size: int, device: str) -> Topology:
    """TorchRec ``Topology`` for ``world_size`` ranks of ``device``.

    Args:
        topo: the config section (memory per rank, bandwidths, ranks per node).
        world_size: total ranks.
        local_world_size: ranks per node of the running job (``topo.ranks_per_node`` wins when set).
        device: ``cpu`` or ``cuda`` (already resolved).
    """
    ranks_per_node = min(topo.ranks_per_node or local_world_size, world_size)
    bytes_per_ms = GB / 1000  # TorchRec's bandwidth unit
    hardware = HardwareConfig(
        intra_host_bw=topo.intra_host_bw_gbps * bytes_per_ms if topo.intra_host_bw_gbps else None,
        inter_host_bw=topo.inter_host_bw_gbps * bytes_per_ms if topo.inter_host_bw_gbps else None,
    )
    trainer = PlannerTrainerConfig(
        world_size=world_size,
        local_world_size=ranks_per_node,
        hbm_cap_bytes=int(topo.hbm_gb * GB) if device == "cuda" else 0,
        ddr_cap_bytes=int(topo.ddr_gb * GB),
    )
    return TopologyFactory.create_topology(
        trainer_config=trainer, hardware_config=hardware, kernel_config=KernelConfig(compute_device=device)
    )
