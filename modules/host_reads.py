"""The deliberate device-to-host reads of a training step, counted.

A training step on a GPU should never wait for the device: every ``.item()``, ``.tolist()`` or
``.cpu()`` of a tensor made in the step stalls the host until the GPU has caught up. A few
algorithms need sizes on the host, though: a dropless expert dispatch must know how many rows to
send to each rank before it can call the all-to-all (``recscale.sharding.moe_dispatch``), and the
``sorted`` MoWE compute must know each expert's row count to cut the batch. Those reads go through
``read_sizes``, which counts them, so a test that forbids host reads in the step can tell these
declared ones (``deliberate_reads()`` before and after) from accidental ones.
"""

from __future__ import annotations

import torch

_reads = 0


def read_sizes(sizes: torch.Tensor) -> list[int]:
    """``sizes`` (integer counts, any shape) as a flat host list: one counted device-to-host read."""
    global _reads
    _reads += 1
    values: list[int] = sizes.flatten().tolist()
    return values


def deliberate_reads() -> int:
    """How many ``read_sizes`` calls this process has made so far."""
    return _reads
