"""Report sections about runs: one run in full, or several side by side.

One run: summary, training stages (staged runs), curves, time split, FLOPs and the profile's
per-module table, the sharding plan, config and versions.
"""

from __future__ import annotations

import yaml

from recscale.reports import plots
from recscale.reports.conversion import remap_section
from recscale.reports.managed import managed_section
from recscale.reports.render import Report, fmt, percent
from recscale.reports.rundata import RunData
from recscale.reports.scaling import SHORT_NAMES, shown_categories, step_breakdown
from recscale.reports.streaming import streaming_section


def run_section(report: Report, run: RunData) -> None:
    """Everything about one run: summary, curves, time split, FLOPs and profile, plan, config."""
    s, final = run.summary, run.final_eval
    tput = s.get("throughput", {})
    emb = s.get("embedding") or {}
    report.heading("Summary")
    rows = [
        ["model", run.config.get("model", {}).get("arch")],
        ["device", f"{run.world_size} x {s.get('device_name') or s.get('device')}"],
        ["precision", s.get("precision")],
        ["batch (global / per rank)", f"{fmt(s.get('batch_size'))} / {fmt(s.get('batch_size_per_rank'))}"],
        ["steps", s.get("steps")],
        ["validation AUC", final.get("auc")],
        ["oracle AUC (best possible)", final.get("oracle_auc")],
        ["validation logloss / NE", f"{fmt(final.get('logloss'))} / {fmt(final.get('ne'))}"],
        ["throughput, examples/s (global)", tput.get("examples_per_s")],
        ["throughput, examples/s per rank", tput.get("examples_per_s_per_rank")],
        ["mean step time, ms", _ms(tput.get("mean_step_time_s"))],
        ["training MFLOP per example", (s.get("flops_per_example", {}).get("train") or 0) / 1e6],
        ["achieved TFLOP/s per rank", s.get("tflops_per_rank")],
        ["peak TFLOP/s per rank", s.get("peak_tflops_per_rank")],
        ["MFU", percent(s.get("mfu"), 2)],
        ["embedding rows read, bytes per example", emb.get("bytes_per_example")],
        ["embedding bandwidth, GB/s per rank", emb.get("gbytes_per_s_per_rank")],
        ["wall time, s", s.get("wall_time_s")],
    ]
    report.table(["", "value"], rows)
    report.text(
        "MFU = training FLOPs per example (analytic, matmuls only) x examples/s per rank / the device's dense "
        "peak (vendor table on GPU, a cached matmul probe on CPU); throughput leaves out the warm-up and profiled "
        "steps. Embedding lookups are memory traffic: reported as bytes of rows read and the bandwidth they imply.",
        note=True,
    )
    tasks_section(report, final)
    streaming_section(report, run)
    remap_section(report, run)
    managed_section(report, run)
    stages_section(report, s.get("stages"))
    curves_section(report, [run])
    report.heading("Where the time goes")
    split = step_breakdown(run)
    if split:
        report.image("time_split", plots.stacked_bars([run.name], [split], SHORT_NAMES, "ms per step"), "time split")
        rows = [[label, split.get(key, 0.0)] for key, label in shown_categories([split])]
        report.table(["part", "ms per step"], rows)
    else:
        report.text("No train records in metrics.jsonl.", note=True)
    modules_section(report, run)
    plan_section(report, run)
    report.heading("Config and versions")
    report.pre(yaml.safe_dump(run.config, sort_keys=False), summary="config.yaml")
    report.table(["package", "version"], [[k, v] for k, v in (s.get("versions") or {}).items()])
    report.text(f"run directory: {run.path}", note=True)


def stages_section(report: Report, stages: list[dict] | None) -> None:
    """A staged run (``trainer.stages``): each stage's steps, FLOPs per example, throughput and MFU."""
    if not stages:
        return
    report.heading("Training stages")
    rows = [
        [
            r["stage"],
            r["train"],
            "-" if r["first_step"] is None else f"{r['first_step']}..{r['last_step']}",
            r["steps_run"],
            None if r["flops_per_example"] is None else r["flops_per_example"]["train"] / 1e6,
            r["examples_per_s_per_rank"],
            percent(r["mfu"], 2),
        ]
        for r in stages
    ]
    report.table(["stage", "trains", "steps", "steps run", "MFLOP/ex", "examples/s per rank", "MFU"], rows)
    report.text(
        "Each stage runs a different model (stage 1 without experts, a frozen backbone in stage 2), so its FLOPs "
        "and MFU are its own; 'steps run' counts this run's process (a resumed run did not run the earlier ones). "
        "Throughput leaves out the warm-up and profiled steps.",
        note=True,
    )


def curves_section(report: Report, runs: list[RunData]) -> None:
    """Loss and AUC curves; throughput and MFU over time (one line per run)."""
    report.heading("Training curves")
    loss = [(r.name, [x["step"] for x in r.kind("train")], [x["loss"] for x in r.kind("train")]) for r in runs]
    auc = [(r.name, [x["step"] for x in r.kind("eval")], [x.get("auc") for x in r.kind("eval")]) for r in runs]
    logloss = [(r.name, [x["step"] for x in r.kind("eval")], [x.get("logloss") for x in r.kind("eval")]) for r in runs]
    report.image(
        "curves",
        plots.line_panels(
            [
                ("training loss", "loss", loss),
                ("validation AUC", "AUC", auc),
                ("validation logloss", "logloss", logloss),
            ]
        ),
        "loss and AUC curves",
    )
    tput = [
        (r.name, [x["step"] for x in r.kind("train")], [x.get("examples_per_s") for x in r.kind("train")]) for r in runs
    ]
    util = [(r.name, [x["step"] for x in r.kind("train")], [_pct(x.get("mfu")) for x in r.kind("train")]) for r in runs]
    report.image(
        "throughput_mfu",
        plots.line_panels([("throughput (global)", "examples/s", tput), ("MFU", "% of peak", util)]),
        "throughput and MFU over time",
    )
    report.text(
        "Each point is one logging window; windows that hold evaluation, checkpoints or profiled steps are slower.",
        note=True,
    )


def modules_section(report: Report, run: RunData) -> None:
    """FLOPs by part of the arch, and the profiled per-module time and MFU table (``--profile``)."""
    report.heading("Per module")
    breakdown = run.summary.get("flops_breakdown")
    if breakdown:
        report.image("flops", plots.flops_bars(breakdown), "training FLOPs per example by part")
    prof = run.profile
    if not prof:
        report.text("No profile: train with --profile for per-module time and MFU and a trace.", note=True)
        return
    report.image("modules", plots.module_bars(prof["rows"], prof["other_ms"]), "time per step by module")
    rows = [
        [
            r["module"],
            r["forward_ms"],
            r["backward_ms"],
            r["flops_train"] / 1e6,
            r.get("tflops"),
            percent(r.get("mfu")),
            ", ".join(r["flops_keys"]),
        ]
        for r in prof["rows"]
    ]
    rows.append(["other", prof["other_ms"], None, None, None, None, "outside the modules"])
    report.table(["module", "fwd ms", "bwd ms", "MFLOP/ex", "TFLOP/s", "MFU", "FLOPs keys"], rows)
    notes = [f"{r['module']}: {r['note']}" for r in prof["rows"] if r.get("note")]
    report.text(
        f"Profiled steps {prof['first_step']}..{prof['last_step']} on rank 0 ({prof['time_source']}), "
        f"{fmt(prof['step_ms'])} ms per profiled step. Backward time is that of the autograd nodes created by "
        "each module's forward ops; gradient accumulation, reduction hooks and the fused embedding update are in "
        f"'other' ({fmt(prof.get('unattributed_backward_ms'))} ms of backward no module owned). "
        f"Trace: profile/{prof['trace']} (Perfetto, or tensorboard --logdir profile). " + " ".join(notes),
        note=True,
    )


def plan_section(report: Report, run: RunData) -> None:
    """The sharding plan: memory per rank and where each table went."""
    plan = run.plan
    if not plan:
        return
    report.heading("Sharding plan")
    report.image("plan_memory", plots.memory_bars(plan.get("bytes_per_rank", [])), "embedding memory per rank")
    rows = [
        [
            t["table"],
            t["rows"],
            t["dim"],
            t["sharding_type"],
            t["compute_kernel"],
            ",".join(str(r) for r in sorted({s["rank"] for s in t["shards"]})),
        ]
        for t in plan.get("tables", [])
    ]
    report.table(["table", "rows", "dim", "sharding", "kernel", "ranks"], rows)
    report.text(
        f"{plan.get('source')} plan for {plan.get('world_size')} x {plan.get('device')}; planner's embedding step "
        f"estimate {fmt(plan.get('est_step_ms'))} ms (slowest rank).",
        note=True,
    )


def tasks_section(report: Report, final: dict[str, object]) -> None:
    """Per-task and per-domain metrics of the final evaluation (multi-task or multi-domain runs)."""
    rows = []
    for key in final:
        parts = key.split("/")
        if parts[0] not in ("auc", "mse") or len(parts) < 2:
            continue
        suffix = "/" + "/".join(parts[1:])
        rows.append(
            [
                parts[1],
                parts[2] if len(parts) > 2 else "all",
                final.get(f"num_examples/{parts[1]}") if len(parts) == 2 else None,
                final.get(f"auc{suffix}"),
                final.get(f"oracle_auc{suffix}"),
                final.get(f"auc_gap{suffix}"),
                final.get(f"logloss{suffix}"),
                final.get(f"ne{suffix}"),
                final.get(f"calibration{suffix}"),
                final.get(f"mse{suffix}"),
            ]
        )
    if not rows:
        return
    report.heading("Tasks and domains")
    report.table(
        ["task", "domain", "examples", "AUC", "oracle AUC", "gap", "logloss", "NE", "calibration", "MSE"], rows
    )
    report.text(
        "Final evaluation per task (on the rows where it applies: its domains, its `given` task's positives) "
        "and per domain; calibration = mean predicted probability / mean label. The summary's AUC and logloss are "
        "the task-weighted means of the per-task values.",
        note=True,
    )


def comparison_section(report: Report, runs: list[RunData], title: str) -> None:
    """Side-by-side table and overlaid curves of several runs."""
    report.heading(f"Comparison of {len(runs)} {title}")
    rows = []
    for r in runs:
        s, f = r.summary, r.final_eval
        rows.append(
            [
                r.name,
                r.world_size,
                s.get("batch_size"),
                (s.get("flops_per_example", {}).get("train") or 0) / 1e6,
                f.get("auc"),
                f.get("logloss"),
                r.examples_per_s,
                percent(s.get("mfu"), 2),
            ]
        )
    report.table(["run", "ranks", "batch", "MFLOP/ex", "AUC", "logloss", "examples/s", "MFU"], rows)
    curves_section(report, runs)
    report.heading("Where the time goes", level=3)
    splits = [step_breakdown(r) for r in runs]
    report.image(
        "time_split_runs", plots.stacked_bars([r.name for r in runs], splits, SHORT_NAMES, "ms per step"), "split"
    )


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else 1e3 * seconds


def _pct(value: float | None) -> float | None:
    return None if value is None else 100 * value
