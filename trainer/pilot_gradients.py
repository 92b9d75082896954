"""The Partitioner's third criterion: after a short pilot run, do the domains pull the shared trunk one way?

Two domains may share ids and label rates and still want different functions of them. A pilot run shows it:
the job's model is trained for ``steps`` batches on one process (unsharded tables, Adam on every parameter
at the dense learning rate, the job's batch size), then over the next ``batches`` training batches the
gradient of the task-weighted loss on each domain's rows is taken with respect to the dense arch's
parameters, the trunk the domains would share (embedding rows are per id; the id overlap covers them):

    g_d = Σ_batches ∇_θ_dense L(rows of domain d)        cos_ij = <g_i, g_j> / (|g_i| |g_j|)

Domains with the same truth have the same expected gradient, so their cosine approaches 1 as rows are
added; domains whose truths differ pull partly apart. The gradients are taken in eval mode (no dropout).
The pilot builds the whole model in memory on one process: for tables that only fit sharded, run it on a
smaller configuration of the same data.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from recscale.configs import JobConfig
from recscale.data.reader import ParquetBatchReader
from recscale.modules.build import build_model


def pilot_gradient_cosine(cfg: JobConfig, train: Path, num_domains: int, steps: int, batches: int) -> list[list[float]]:
    """``cos [D, D]`` of the per-domain dense gradients after a ``steps``-batch pilot (module docstring)."""
    if steps < 0 or batches < 1:
        raise ValueError(f"--pilot-steps {steps} / --pilot-batches {batches}: expected >= 0 and >= 1")
    torch.manual_seed(cfg.seed)
    built = build_model(cfg, sparse_device="cpu")
    model = built.rec_model()
    trunk = [p for p in built.dense.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=cfg.optimizer.dense.lr)
    f = cfg.data.features
    reader = ParquetBatchReader(
        str(train), f, cfg.embeddings, cfg.data.reader, batch_size=cfg.trainer.batch_size, mode="eval"
    )
    sums = [torch.zeros(sum(p.numel() for p in trunk), dtype=torch.float64) for _ in range(num_domains)]
    seen = 0
    for seen, batch in enumerate(reader, start=1):
        if seen <= steps:
            model.train()
            optimizer.zero_grad(set_to_none=True)
            model(batch)[0].backward()
            optimizer.step()
            continue
        model.eval()
        for d in range(num_domains):
            assert batch.domain is not None, "data.features.domain: the pilot needs the domain column"
            weights = batch.weights * (batch.domain == d).to(batch.weights.dtype)
            if not weights.any():
                continue
            loss = model(dataclasses.replace(batch, weights=weights))[0]
            grads = torch.autograd.grad(loss, trunk, allow_unused=True)
            sums[d] += torch.cat(
                [(g if g is not None else torch.zeros_like(p)).flatten() for g, p in zip(grads, trunk, strict=True)]
            ).double()
        if seen >= steps + batches:
            break
    if seen < steps + batches:
        raise ValueError(
            f"{train}: {seen} batches of {cfg.trainer.batch_size} rows, expected --pilot-steps {steps} + "
            f"--pilot-batches {batches}"
        )
    norms = [float(s.norm()) for s in sums]
    return [
        [1.0 if i == j else float(sums[i] @ sums[j]) / max(norms[i] * norms[j], 1e-300) for j in range(num_domains)]
        for i in range(num_domains)
    ]
