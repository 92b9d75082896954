"""Report sections about studies: a sweep's scaling efficiency, a scaling-law fit, a projection."""

from __future__ import annotations

from typing import Any

from recscale.reports import law, plots
from recscale.reports.projection import project
from recscale.reports.render import Report, fmt, percent
from recscale.reports.rundata import PROJECTION, RunData, StudyData, read_json
from recscale.reports.scaling import SHORT_NAMES, efficiency_table, shown_categories
from recscale.reports.sections import curves_section


def study_section(report: Report, study: StudyData) -> None:
    """A sweep (scaling efficiency, time split, projection) or a scaling-law study."""
    if study.kind == "sweep":
        sweep_section(report, study)
    elif study.kind == "scaling_law":
        law_section(report, study)
    projection = study.projection
    if projection is None and (study.path / PROJECTION).is_file():
        projection = read_json(study.path / PROJECTION)
    if projection is not None:
        projection_section(report, projection)


def sweep_section(report: Report, study: StudyData) -> None:
    """Weak or strong scaling efficiency and the time split per world size."""
    mode = study.index.get("mode", "weak")
    table = efficiency_table(study.runs, mode)
    report.heading(f"Scaling efficiency ({mode} scaling)")
    report.text(
        f"config {study.index.get('config')}; scheduler {study.index.get('scheduler')}; "
        + (
            f"per-rank batch fixed at {study.index.get('batch_size_per_rank')}"
            if mode == "weak"
            else f"global batch fixed at {study.index.get('global_batch')}"
        )
        + f"; {study.index.get('steps')} steps per run; device {_device(study.runs)}."
    )
    if not table:
        report.text("The sweep lists no finished runs.", note=True)
        return
    report.image(
        "efficiency",
        plots.efficiency_panels(
            [r["world_size"] for r in table],
            [r["examples_per_s"] for r in table],
            [r["efficiency"] for r in table],
            mode,
        ),
        "scaling efficiency",
    )
    report.table(
        ["ranks", "global batch", "per-rank batch", "examples/s", "per rank", "speed-up", "efficiency", "MFU"],
        [
            [
                r["world_size"],
                r["batch_size"],
                r["batch_size_per_rank"],
                r["examples_per_s"],
                r["examples_per_s_per_rank"],
                r["speedup"],
                percent(r["efficiency"]),
                percent(r["mfu"], 2),
            ]
            for r in table
        ],
    )
    report.text(
        "Efficiency = per-rank throughput / the smallest world size's (weak), = speed-up x N0 / N (strong). Runs: "
        + (study.index.get("note") or ""),
        note=True,
    )
    report.heading("Where the time goes", level=3)
    labels = [f"{r['world_size']} ranks" for r in table]
    report.image(
        "time_split_sweep",
        plots.stacked_bars(labels, [r["step_ms"] for r in table], SHORT_NAMES, "ms per step"),
        "time split per world size",
    )
    shown = shown_categories([r["step_ms"] for r in table])
    report.table(
        ["ranks", *[label for _, label in shown]],
        [[r["world_size"], *[r["step_ms"].get(k, 0.0) for k, _ in shown]] for r in table],
    )
    curves_section(report, sorted(study.runs, key=lambda r: r.world_size))


def law_section(report: Report, study: StudyData) -> None:
    """Quality against compute with both fits and their confidence (refitted from the runs)."""
    idx = study.index
    metric = idx.get("metric", "logloss")
    labels = [r["label"] for r in idx.get("runs", [])]
    pts = law.points(study.runs, labels, metric) if len(labels) == len(study.runs) else idx["points"]
    power, loglin = law.fit(pts, bootstrap=idx.get("bootstrap", 500))
    floor = pts[0].get(f"oracle_{metric}") if pts else None
    report.heading(f"Scaling law: {metric} against compute")
    x, y, names = [p["mflop_train"] for p in pts], [p["y"] for p in pts], [p["label"] for p in pts]
    chart = plots.scaling_law_chart(x, y, names, metric, "MFLOP", power, loglin, floor)
    report.image("scaling_law", chart, "scaling law")
    report.table(
        ["size", "MFLOP/ex (train)", "dense params", metric, "AUC", "oracle AUC", "examples/s"],
        [
            [
                p["label"],
                p["mflop_train"],
                p.get("dense_parameters"),
                p["y"],
                p.get("auc"),
                p.get("oracle_auc"),
                p.get("examples_per_s"),
            ]
            for p in pts
        ],
    )
    rows = []
    if power is not None:
        rows += [[f"power law {k}", getattr(power, k), *getattr(power, f"{k}_ci")] for k in ("a", "b", "c")]
    if loglin is not None:
        rows += [["log-linear y0", loglin.y0, *loglin.y0_ci], ["log-linear eta", loglin.eta, *loglin.eta_ci]]
    report.table(["parameter", "estimate", "95% low", "95% high"], rows)
    text = [f"x = training MFLOP per example; y = final validation {metric}; " + "; ".join(idx.get("notes", [])) + "."]
    if floor is not None:
        text.append(f"The dotted line is the oracle's {metric} on the same validation data (the best reachable).")
    if loglin is not None:
        text.append(
            f"Kunlun-style scaling efficiency: eta = {loglin.eta:.4g} {metric} per e-fold of compute "
            f"({loglin.eta * 0.6931:.4g} per doubling), 95% [{loglin.eta_ci[0]:.3g}, {loglin.eta_ci[1]:.3g}], "
            f"R^2 = {loglin.r2:.3f}."
        )
    if power is not None and power.identified:
        text.append(
            f"Power law (Wukong form): y = {power.a:.4g} + {power.b:.4g} x^{power.c:.4g}; the band is the "
            f"2.5-97.5% range of {0 if power.boot is None else len(power.boot)} residual-bootstrap refits."
        )
    elif power is not None:
        text.append(f"Power law not drawn: {power.note}.")
    report.text(" ".join(text), note=True)


def projection_section(report: Report, projection: dict[str, Any]) -> None:
    """Projected throughput and efficiency beyond this machine, with every assumption."""
    result = project(projection)
    rows = result["rows"]
    m = projection["measured"]
    report.heading("Projection to larger topologies")
    report.text(
        f"Measured per-device step: {fmt(m['dense_step_ms'])} ms at {m['batch_size_per_rank']} examples per rank "
        f"({m.get('source')}: {m.get('device')}). Planner device {projection.get('planner_device')}, "
        f"{projection['ranks_per_node']} ranks per node; bandwidths "
        f"{fmt(projection['bandwidth']['intra_node_gb_per_s'])} GB/s intra-node, "
        f"{fmt(projection['bandwidth']['inter_node_gb_per_s'])} GB/s inter-node per rank "
        f"({projection['bandwidth'].get('source')}); dense gradient {fmt(projection['gradient_bytes'] / 2**20)} "
        "MiB (+ the data-parallel tables of each topology's plan)."
    )
    report.image("projection", plots.projection_panels(rows), "projection")
    report.table(
        [
            "nodes",
            "ranks",
            "per-rank batch",
            "dense ms",
            "embedding ms",
            "all-reduce ms",
            "step ms",
            "examples/s",
            "efficiency",
            "max embedding MiB/rank",
        ],
        [
            [
                r["nodes"],
                r["world_size"],
                r["batch_size_per_rank"],
                r["dense_ms"],
                r["embedding_ms"],
                r["allreduce_ms"],
                r["step_ms"],
                r["examples_per_s"],
                percent(r["efficiency"]),
                (r["embedding_max_rank_bytes"] or 0) / 2**20,
            ]
            for r in rows
        ],
    )
    report.heading("Assumptions", level=3)
    report.bullets(result["assumptions"])


def _device(runs: list[RunData]) -> str:
    return str(runs[0].summary.get("device_name")) if runs else "?"
