"""Multi-task layers over a shared input: MMoE and CGC / PLE.

Mixtures of experts gated per task (MMoE), and task-specific plus shared experts over one or more
extraction levels (CGC / PLE).

Public API:

- ``ExpertSet`` and ``TaskGate``: n MLP experts stacked ``[B, n, d]``, a softmax gate over them;
- ``MMoE``: every expert shared, one gate per task (Ma et al., KDD 2018);
- ``PLE``: per-task and shared experts, ``num_levels`` extraction levels; one level is CGC (Tang et al.,
  RecSys 2020);
- ``MultiTaskDense``: a dense arch (DLRM, DCN-V2) as the shared bottom of one of them (or of nothing:
  shared-bottom), then a tower and a logit per task (``model.multitask``).

Each maps ``x [B, D]`` to one ``[B, d]`` vector per task, for that task's tower, and counts its FLOPs
(forward and exact backward, matmuls only: expert and gate layers and the gated mixture).
"""

from recscale.modules.multitask.experts import ExpertSet, TaskGate, mix
from recscale.modules.multitask.mmoe import MMoE
from recscale.modules.multitask.ple import PLE, ExtractionLevel, SharedGate

__all__ = ["MMoE", "PLE", "ExpertSet", "ExtractionLevel", "SharedGate", "TaskGate", "mix"]
