"""Types shared by every dense arch."""

from __future__ import annotations

import torch

DenseOutput = tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]
"""What a dense arch returns: logits ``[B, T]``, a scalar auxiliary loss (0 when the model has
none; MoE load balance etc.), and named diagnostics (scalars or ``[B]`` tensors) for metrics."""
