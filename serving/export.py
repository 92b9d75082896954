"""``recscale export``: a run's checkpoint -> a self-contained inference artifact directory.

The artifact holds ``model.pt2`` (``torch.export``: the tables as plain or row-wise quantized torch
buffers, the dense arch as an ATen graph), ``features.json`` (what ``serve.py`` needs to turn rows into
the graph's inputs), ``manifest.json`` (model, config, checkpoint step, metrics at that step, table
storage, file sizes) and ``serve.py`` (``runtime.py``: load and predict with torch + pyarrow only).
Everything is written into a temporary directory beside ``out`` and renamed into place at the end.
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
import yaml

from recscale.configs import JobConfig, config_from_dict
from recscale.configs.tasks import resolve_tasks
from recscale.serving import runtime
from recscale.serving.conversion import graphhash_dir, raw_spec
from recscale.serving.graph import FeatureLookup, InferenceModel, export_graph
from recscale.serving.managed import checkpoint_slot_maps, write_slot_maps
from recscale.serving.tables import QUANTIZE, InferenceTable
from recscale.sharding.checkpoint import read_manifest, verify
from recscale.sharding.checkpoint.export import dense_weights
from recscale.sharding.checkpoint.planner import LoadPlanner
from recscale.sharding.checkpoint.reader import SafeReader, read_metadata

RUN_CONFIG = "config.yaml"
CHECKPOINTS = "checkpoints"
TABLE_PREFIXES = ("sparse.model.ebc.embedding_bags.", "sparse.model.mc_ebc.embedding_bags.")
"""Checkpoint entries of the pooled tables: the plain collection and the managed-collision one."""


def resolve_checkpoint(run_dir: Path, which: str) -> Path:
    """``best``, ``latest`` (the newest complete checkpoint) or a step number -> a checkpoint directory."""
    run_dir = Path(run_dir).expanduser().resolve()
    if not (run_dir / RUN_CONFIG).is_file():
        raise ValueError(f"{run_dir}: not a run directory (no {RUN_CONFIG})")
    root = run_dir / CHECKPOINTS
    if which == "best":
        path = root / "best"
        if not path.exists():
            raise ValueError(f"{root}: no best checkpoint (the run never evaluated with a best pointer)")
        return path.resolve()
    if which == "latest":
        found = sorted(p for p in root.glob("step_*") if p.is_dir() and not p.name.endswith(".tmp"))
        if not found:
            raise ValueError(f"{run_dir}: the run directory has no complete checkpoint")
        return found[-1]
    if not which.isdigit():
        raise ValueError(f"--checkpoint {which!r}: expected best, latest or a step number")
    path = root / f"step_{int(which):08d}"
    if not path.is_dir():
        raise ValueError(f"{path}: no checkpoint at step {int(which)}")
    return path


def table_weights(path: Path) -> dict[str, torch.Tensor]:
    """Every pooled table's whole weight ``[R, D]``, read in one process whatever sharding wrote it."""
    entries = read_metadata(path).state_dict_metadata
    targets = {}
    for key, meta in entries.items():
        prefix = next((p for p in TABLE_PREFIXES if key.startswith(p)), None)
        if prefix is not None and key.endswith(".weight"):
            targets[key.removeprefix("sparse.model.")] = torch.empty(
                tuple(meta.size),
                dtype=meta.properties.dtype,  # type: ignore[union-attr]
            )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled", category=UserWarning)
        dcp.load({"sparse": {"model": targets}}, storage_reader=SafeReader(path), planner=LoadPlanner(), no_dist=True)
    return {k.split(".")[2]: v for k, v in targets.items()}


def refusal(cfg: JobConfig) -> str:
    """Why this config's model cannot be exported ("" when it can)."""
    from recscale.modules.registry import get_spec

    if cfg.data.features.sequences:
        return (
            f"model {cfg.model.arch!r} reads event sequences (an unpooled EmbeddingCollection); "
            "export supports pooled-table models only"
        )
    if cfg.data.features.teacher and cfg.model.teacher.as_feature:
        return (
            f"model {cfg.model.arch!r} reads the teacher's logits as inputs (model.teacher.as_feature); the "
            "artifact has no teacher input: train with as_feature: false to serve it"
        )
    if get_spec(cfg.model.arch).supports.domains and cfg.data.features.domain:
        return f"model {cfg.model.arch!r} reads the domain column; export supports models of the pooled tables only"
    return ""  # a domain column alone is fine: other models never read it (only metrics and task masks do)


def stage_refusal(cfg: JobConfig, step: int) -> str:
    """Why a staged (HiLoMoE) run's checkpoint at ``step`` cannot be exported ("" once in the last stage).

    Stage ``i`` covers steps ``starts[i] + 1 ..``; the starts are the config's (a stage that ended early on
    a plateau moves the later ones sooner, so this check is conservative for such runs).
    """
    stages = cfg.trainer.stages
    if not stages:
        return ""
    last_start = sum(s.steps for s in stages[:-1])
    if step <= last_start:
        return (
            f"checkpoint step {step} is before the last training stage {stages[-1].name!r} (steps > {last_start}); "
            "export a checkpoint taken after it"
        )
    return ""


def build_inference_model(cfg: JobConfig, checkpoint: Path, quantize: str) -> InferenceModel:
    """The trained model of ``checkpoint`` as an ``InferenceModel`` (tables stored per ``quantize``)."""
    from recscale.modules.build import build_model

    built = build_model(cfg, dense_device="cpu", sparse_device="meta")
    if cfg.trainer.stages:  # the experts switch and the rest as the last stage left them
        from recscale.modules.hilomoe import apply_training_stage

        apply_training_stage(built.dense, cfg.trainer.stages[-1])
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled", category=UserWarning)
        built.dense.load_state_dict(dense_weights(checkpoint), strict=True)
    return assemble(cfg, built, table_weights(checkpoint), quantize)


def assemble(cfg: JobConfig, built: Any, weights: dict[str, torch.Tensor], quantize: str) -> InferenceModel:
    """``InferenceModel`` of a built model (``BuiltModel``, dense weights loaded) and whole table weights."""
    built.dense.eval()
    pooling = {t.name: t.pooling for t in cfg.embeddings.tables}
    tables = {}
    for name in dict.fromkeys(f.table for f in cfg.data.features.sparse):
        if name not in weights:
            raise ValueError(f"the checkpoint lacks table {name!r}")
        tables[name] = InferenceTable(weights[name].float(), quantize, pooling[name])
    features = [FeatureLookup(f.name, f.table) for f in cfg.data.features.sparse]
    regression = [t.loss == "regression" for t in resolve_tasks(cfg)]
    serving = built.task_loss.serving if built.task_loss is not None else None
    return InferenceModel(
        tables, features, list(built.sparse.layout.feature_names), built.dense, regression, serving_heads=serving
    )


def export_program(cfg: JobConfig, model: InferenceModel) -> torch.export.ExportedProgram:
    """``torch.export`` of ``model``; a model that does not trace raises one line naming it and why."""
    try:
        return export_graph(model, len(cfg.data.features.dense))
    except Exception as err:  # noqa: BLE001 - torch.export's errors are pages long; one line for the user
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        if first.startswith("Constraints violated (batch)"):
            first = "the dense arch fixes the batch size while tracing, so no graph serves every batch size"
        raise ValueError(f"model {cfg.model.arch!r} does not export with torch.export: {first}") from None


def feature_spec(cfg: JobConfig, managed: dict[str, Any] | None = None) -> dict[str, Any]:
    """What turns rows into the graph's inputs (``features.json``); ``managed``: the slot maps' section."""
    rows = {t.name: t.num_embeddings for t in cfg.embeddings.tables}
    collisions = {t.name: t.collisions for t in cfg.embeddings.tables}
    return {
        "labels": list(cfg.data.features.labels),
        "tasks": [{"name": t.name, "label": t.label, "loss": t.loss} for t in resolve_tasks(cfg)],
        "dense": list(cfg.data.features.dense),
        "sparse": [
            {
                "name": f.name,
                "table": f.table,
                "rows": rows[f.table],
                "hashing": f.hashing,
                "max_ids": f.max_ids,
                "collisions": collisions[f.table],
            }
            for f in cfg.data.features.sparse
        ],
        "managed": managed or {},
        "dense_transforms": "Parquet: dense columns are read as stored; raw text: as the 'raw' section says",
        "raw": raw_spec(cfg)[0],
    }


def copy_vocabularies(cfg: JobConfig, artifact: Path) -> None:
    """Copy the conversion's vocabularies (raw CSV values -> the rows the model knows) into ``artifact/vocab``.

    Nothing without a ``vocab``-mode conversion; a ``remap: raw`` feature has none (its ids are raw).
    """
    spec, vocab = raw_spec(cfg)
    if spec is None or vocab is None:
        return
    (artifact / "vocab").mkdir()
    for feature in cfg.data.features.sparse:
        if spec["remap"].get(feature.name, {}).get("remap") != "raw":
            shutil.copyfile(vocab / f"{feature.name}.npz", artifact / "vocab" / f"{feature.name}.npz")


def metrics_at(run_dir: Path, step: int) -> dict[str, Any]:
    """The run's evaluation at ``step`` (empty when it did not evaluate there)."""
    path = run_dir / "metrics.jsonl"
    found: dict[str, Any] = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if record.get("kind") == "eval" and record.get("step") == step:
                found = record
    return found


def export_run(run_dir: Path, checkpoint: str, out: Path, quantize: str) -> dict[str, Any]:
    """Write the artifact of ``run_dir``'s ``checkpoint`` into ``out`` (new or empty); returns its manifest.

    Raises:
        ValueError: a bad run directory, checkpoint or option, or a model export refuses (one line).
    """
    if quantize not in QUANTIZE:
        raise ValueError(f"--quantize {quantize!r}: expected one of {', '.join(QUANTIZE)}")
    path = resolve_checkpoint(run_dir, checkpoint)
    run_dir = path.parent.parent
    out = Path(out).expanduser().resolve()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"{out}: the output exists and is not an empty directory")
    problems = verify(path)
    if problems:
        raise ValueError(f"{path}: damaged checkpoint: {problems[0]}")
    raw = yaml.safe_load((run_dir / RUN_CONFIG).read_text())
    cfg = config_from_dict(raw)
    step = int(read_manifest(path)["step"])
    why = refusal(cfg) or stage_refusal(cfg, step)
    if why:
        raise ValueError(why)
    model = build_inference_model(cfg, path, quantize)
    program = export_program(cfg, model)
    maps = checkpoint_slot_maps(cfg, path)
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    torch.export.save(program, str(tmp / runtime.GRAPH))
    managed = write_slot_maps(maps, tmp)  # managed tables: raw ids -> slots, frozen at this checkpoint
    (tmp / runtime.FEATURES).write_text(json.dumps(feature_spec(cfg, managed), indent=2))
    copy_vocabularies(cfg, tmp)
    graphs = graphhash_dir(cfg)
    if graphs is not None:  # GraphHash's community maps (data.convert.fields): raw ids -> community rows
        shutil.copytree(graphs, tmp / graphs.name)
    shutil.copyfile(runtime.__file__, tmp / "serve.py")
    manifest = {
        "format": runtime.ARTIFACT_FORMAT,
        "model": cfg.model.arch,
        "name": cfg.name,
        "run_dir": str(run_dir),
        "checkpoint": str(path),
        "step": step,
        "metrics": metrics_at(run_dir, step),
        "quantize": quantize,
        "table_bytes": {name: t.nbytes() for name, t in model.tables.items()},
        "managed": {name: {"rows": m["rows"], "admitted": m["admitted"]} for name, m in managed.items()},
        "torch": torch.__version__,
        "inputs": "dense [B, N] float32, then per sparse feature: ids [nnz] int64, offsets [B] int64",
        "output": "probabilities [B, T] float32, one column per label",
        "config": raw,
    }
    manifest["files"] = {p.name: p.stat().st_size for p in sorted(tmp.iterdir())}
    (tmp / runtime.MANIFEST).write_text(json.dumps(manifest, indent=2, default=str))
    if out.exists():
        out.rmdir()
    tmp.replace(out)
    return manifest


__all__ = [
    "assemble",
    "export_program",
    "export_run",
    "refusal",
    "resolve_checkpoint",
    "stage_refusal",
    "table_weights",
]
