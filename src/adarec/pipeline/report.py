"""report.json and report.md: accuracy, size, MACs and latency of teacher, student, baselines."""

from __future__ import annotations

import datetime as dt
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from adarec.config import Config
from adarec.evaluate.latency import machine_description
from adarec.evaluate.metrics import per_example_gains
from adarec.io import atomic_write_json, atomic_write_text, read_json
from adarec.nas.genotype import genotype_from_dict, genotype_to_text
from adarec.plots import plot_accuracy_latency
from adarec.runs import read_metrics, read_test_ranks
from adarec.runtime import distributed as dist
from adarec.serve.measure import measure_runs

log = logging.getLogger("adarec")

# Targets of the method issue and the ml-1m issue, checked and printed in every report.
# Speed-ups are per batch size, met under any one backend timing both models alike.
TARGETS = {"ndcg_ratio": 0.95, "body_params_ratio": 10.0, "speedup": {"256": 5.0, "1": 2.0}}


def measure_models(cfg: Config, dirs: dict[str, Path]) -> dict[str, Any]:
    """MACs per history and latency of every model under every ``bench.backends``, on CPU,
    in this one process: ``{"macs", "latency": {backend: {model: {batch: stats}}}, ...}``."""
    b = cfg.bench
    # The histories come from the student, which this pipeline trained: a reused teacher
    # may be older than the histories that runs keep.
    measured = measure_runs(
        dirs,
        [int(x) for x in b.batch_sizes],
        b.repeats,
        b.warmup,
        b.threads,
        backends=b.backends,
        histories_from=dirs["student"],
    )
    return {
        "macs": measured.macs,
        "latency": {
            backend: {name: per[backend] for name, per in measured.latency.items()}
            for backend in b.backends
        },
        "threads": torch.get_num_threads() if b.threads <= 0 else b.threads,
    }


def write_report(
    cfg: Config,
    out: Path,
    teacher_dir: Path,
    search_dir: Path,
    student_dir: Path,
    baseline_dirs: dict[str, Path],
    front: dict[str, Any] | None = None,
    front_skipped: str | None = None,
) -> dict[str, Any]:
    """Measure, then write ``report.json`` (the contract) and ``report.md`` with plots.

    ``front``: the front's front.json content when it ran (``run.front``): report.json then
    adds "front" (the retrained students), "front_not_retrained", "selected" and
    "front_cost" (against one search plus one retraining). ``front_skipped``: why a run
    that asked for the front (``run.front``) has none (report.json "front_skipped")."""
    dirs = {"teacher": teacher_dir, "student": student_dir, **baseline_dirs}
    metrics = {name: read_metrics(d) for name, d in dirs.items()}
    log.info(
        "measuring latency of %s (batches %s, %d repeats)",
        ", ".join(dirs),
        cfg.bench.batch_sizes,
        cfg.bench.repeats,
    )
    # Rank 0 alone times the models (other ranks would compete for its cores) and shares it.
    measured = dist.broadcast_object(measure_models(cfg, dirs) if dist.is_main() else None)
    for name in metrics:
        metrics[name]["macs"] = measured["macs"][name]
    by_backend = {
        backend: {name: {b: v["median_ms"] for b, v in per.items()} for name, per in models.items()}
        for backend, models in measured["latency"].items()
    }
    speedup_by_backend = {
        backend: {
            b: round(latency["teacher"][b] / latency["student"][b], 3) for b in latency["teacher"]
        }
        for backend, latency in by_backend.items()
    }
    latency_ms, speedup = by_backend["eager"], speedup_by_backend["eager"]
    search_history = read_json(Path(search_dir) / "history.json")
    report = {
        "teacher": metrics["teacher"],
        "student": metrics["student"],
        "baselines": {name: metrics[name] for name in baseline_dirs},
        "latency_ms": {
            "teacher": latency_ms["teacher"],
            "student": latency_ms["student"],
            **{n: latency_ms[n] for n in baseline_dirs},
        },
        "latency_p95_ms": {
            name: {b: v["p95_ms"] for b, v in per.items()}
            for name, per in measured["latency"]["eager"].items()
        },
        "speedup": speedup,
        "latency_ms_by_backend": by_backend,
        "speedup_by_backend": speedup_by_backend,
        "seconds": {
            "teacher": metrics["teacher"]["train_seconds"],
            "search": read_metrics(search_dir)["train_seconds"],
            "student": metrics["student"]["train_seconds"],
        },
        "search": search_diagnostics(search_history),
        "budget": budget_summary(metrics["student"]),
        "searched_vs_random": _random_comparison(metrics, dirs),
        "targets": check_targets(metrics["teacher"], metrics["student"], speedup_by_backend),
        "machine": machine_description(),
        "threads": measured["threads"],
        "date": dt.datetime.now().isoformat(timespec="seconds"),
    }
    if front is not None:
        from adarec.pipeline.front import (
            FRONT_FIGURE,
            front_cost,
            front_not_retrained,
            front_summary,
        )

        report["front"] = front_summary(front)
        report["front_not_retrained"] = front_not_retrained(front)
        report["selected"] = front["selected"]
        report["front_cost"] = front_cost(front)
        report["front_figure"] = _rel(out / "front" / FRONT_FIGURE, out)
        if baseline_dirs and dist.is_main():
            # The baselines on the front's axes: latency in the serving path at its batch.
            from adarec.plots import plot_front

            batch = min(front["teacher"]["latency_ms"], key=int)
            serving = by_backend.get("compiled", latency_ms)
            others = {
                name: (serving[name][batch], metrics[name]["valid"]["full"]["NDCG@10"])
                for name in baseline_dirs
                if batch in serving.get(name, {})
            }
            plot_front(front, out / "front" / FRONT_FIGURE, others)
    if front_skipped:
        report["front_skipped"] = front_skipped
    if dist.is_main():
        largest = str(max(int(b) for b in speedup))
        points = {
            name: (latency_ms[name][largest], metrics[name]["test"]["full"]["NDCG@10"])
            for name in metrics
        }
        plot_accuracy_latency(points, out / "accuracy_latency.png", largest)
        atomic_write_json(out / "report.json", report)
        atomic_write_text(out / "report.md", render_markdown(report, out, search_dir))
    log.info("report written to %s", out / "report.md")
    return report


def searched_vs_random(
    searched: dict[str, Any],
    randoms: list[dict[str, Any]],
    metric: str = "NDCG@10",
    ranks: tuple[list[int], list[list[int]]] | None = None,
) -> dict[str, Any]:
    """Does the search beat chance? The searched student's test ``metric`` (full ranking)
    against the mean of random cells under the same budget, retrained identically.

    Two sources of noise, each with its standard error:
    - ``random_se``: the spread over the random cells (sample standard deviation /
      sqrt(n)), i.e. how much the draw of architectures moves their mean;
    - ``test_se``: the test users. All models are scored on the same users, so with the
      per-user ``ranks`` (searched, one list per random cell) this is the standard error
      of the per-user difference searched - mean of the random cells (paired: users that
      are hard for every model cancel out). Without them it falls back to the searched
      student's own standard error over users, which overstates it.
    ``difference_se`` adds both in quadrature; ``beats`` says whether the searched value
    exceeds the random mean, ``significant`` whether by more than two ``difference_se``.
    """
    if len(randoms) < 2:
        raise ValueError("comparing with chance needs at least two random cells")
    values = [r["test"]["full"][metric] for r in randoms]
    n = len(values)
    mean = math.fsum(values) / n
    spread = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))
    random_se = spread / math.sqrt(n)
    value = searched["test"]["full"][metric]
    searched_se = searched["test"].get("standard_error", {}).get("full", {}).get(metric, 0.0)
    test_se, paired = searched_se, False
    if ranks is not None:
        test_se, paired = paired_standard_error(ranks[0], ranks[1], metric), True
    diff_se = math.sqrt(random_se**2 + test_se**2)
    return {
        "metric": metric,
        "searched": value,
        "searched_se": searched_se,
        "random": values,
        "random_mean": mean,
        "random_se": random_se,
        "difference": value - mean,
        "test_se": test_se,
        "paired": paired,
        "difference_se": diff_se,
        "beats": value > mean,
        "significant": value - mean > 2 * diff_se,
    }


def paired_standard_error(
    searched: list[int], randoms: list[list[int]], metric: str = "NDCG@10"
) -> float:
    """Standard error over users of (searched gain - mean random gain), from 0-based ranks."""
    k = int(metric.split("@")[1])
    if any(len(r) != len(searched) for r in randoms):
        raise ValueError("per-user ranks of different lengths: not scored on the same users")
    gains = [per_example_gains(np.asarray(r, dtype=np.float64), [k])[metric] for r in randoms]
    own = per_example_gains(np.asarray(searched, dtype=np.float64), [k])[metric]
    difference = own - np.mean(gains, axis=0)
    return float(difference.std(ddof=1) / math.sqrt(len(difference))) if len(own) > 1 else 0.0


def budget_summary(student: dict[str, Any]) -> dict[str, Any] | None:
    """Target and achieved cost per history of the student (None without a budget).

    ``modelled`` is the search's cost model (every op over a full window); ``counted`` is
    what the real network costs, counted on its ``full_sort_predict`` (MACs budgets only).
    """
    budget = student.get("cost", {}).get("budget")
    if not budget:
        return None
    summary = dict(budget)
    if budget["unit"] == "macs" and "macs" in student:
        summary["counted"] = student["macs"]
        summary["counted_within"] = student["macs"] <= budget["target"] * (1 + 1e-9)
    return summary


def search_diagnostics(history: list[dict[str, Any]]) -> dict[str, Any]:
    """Did the search actually search? Entropy and drift of alpha, first and last epoch."""
    records = [h for h in history if "alpha_entropy" in h]
    if not records:
        return {}
    first, last = records[0], records[-1]
    return {
        "epochs": len(records),
        "uniform_entropy": first["alpha_uniform_entropy"],
        "entropy_first": first["alpha_entropy"],
        "entropy_last": last["alpha_entropy"],
        "max_prob_last": last["alpha_max_prob"],
        "decided_edges_last": last.get("alpha_decided_edges"),
        "edges": len(last.get("alpha_probs", [])),
        "drift_last": last["alpha_drift"],
    }


def _random_comparison(metrics: dict[str, Any], dirs: dict[str, Path]) -> dict[str, Any] | None:
    names = [name for name in metrics if name.startswith("random_arch_budget_")]
    if len(names) < 2:
        return None
    ranks = [read_test_ranks(dirs[name]) for name in ["student", *names]]
    paired = None if any(r is None for r in ranks) else (ranks[0], ranks[1:])
    return searched_vs_random(metrics["student"], [metrics[n] for n in names], ranks=paired)


def check_targets(
    teacher: dict, student: dict, speedup_by_backend: dict[str, dict[str, float]]
) -> dict[str, Any]:
    """The targets, each beside its value. A speed-up target is checked at every measured
    batch size that has one, with the backend (timing both models) that does best."""
    t_ndcg = teacher["test"]["full"]["NDCG@10"]
    ndcg_ratio = student["test"]["full"]["NDCG@10"] / t_ndcg if t_ndcg > 0 else 0.0
    params_ratio = teacher["params"]["body"] / max(student["params"]["body"], 1)
    result: dict[str, Any] = {
        "ndcg_ratio": round(ndcg_ratio, 4),
        "ndcg_ratio_met": ndcg_ratio >= TARGETS["ndcg_ratio"],
        "body_params_ratio": round(params_ratio, 2),
        "body_params_ratio_met": params_ratio >= TARGETS["body_params_ratio"],
    }
    speedups_met = []
    for batch, target in TARGETS["speedup"].items():
        measured = {k: v[batch] for k, v in speedup_by_backend.items() if batch in v}
        if not measured:
            continue
        backend = max(measured, key=measured.get)
        met = measured[backend] >= target
        result[f"speedup_{batch}"] = measured[backend]
        result[f"speedup_{batch}_backend"] = backend
        result[f"speedup_{batch}_target"] = target
        result[f"speedup_{batch}_met"] = met
        speedups_met.append(met)
    result["speedup_met"] = bool(speedups_met) and all(speedups_met)
    return result


def _row(name: str, m: dict[str, Any], lat: dict[str, float], teacher_lat: dict[str, float]) -> str:
    full, sampled = m["test"]["full"], m["test"]["sampled"]
    se = m["test"].get("standard_error", {}).get("full", {})
    ndcg = f"{full['NDCG@10']:.4f}" + (f" ± {se['NDCG@10']:.4f}" if se else "")
    cells = [
        name,
        ndcg,
        f"{full['HR@10']:.4f}",
        f"{sampled['NDCG@10']:.4f}",
        f"{m['params']['body']:,}",
        f"{m['macs'] / 1e6:.2f}",
    ]
    for b in lat:
        cells.append(f"{lat[b]:.2f}")
    for b in lat:
        cells.append(f"{teacher_lat[b] / lat[b]:.1f}x")
    return "| " + " | ".join(cells) + " |"


def render_markdown(report: dict[str, Any], out: Path, search_dir: Path) -> str:
    teacher_lat = report["latency_ms"]["teacher"]
    batches = list(teacher_lat)
    header = (
        ["model", "NDCG@10", "HR@10", "sampled NDCG@10", "body params", "MMACs/history"]
        + [f"ms @{b}" for b in batches]
        + [f"speed-up @{b}" for b in batches]
    )
    lines = [
        f"# AdaRec report: {report['teacher']['dataset']}",
        "",
        f"Machine: {report['machine']}; {report['threads']} threads; {report['date']}.",
        "Metrics: test split, leave-one-out, full ranking over all items (ties count against",
        "the target); the sampled column ranks the target among 100 fixed negatives.",
        "± is the standard error over test users: gaps smaller than about twice it are noise.",
        "Latency: median of repeated `full_sort_predict` calls (last-position scores), all",
        "models in one process on the same real test histories; the table is eager PyTorch,",
        "the speed-ups below also the exported TorchScript graph (`adarec export`).",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    models = {
        "teacher (" + report["teacher"]["model"] + ")": ("teacher", report["teacher"]),
        "AdaRec student": ("student", report["student"]),
    }
    models.update({name: (name, m) for name, m in report["baselines"].items()})
    for label, (key, m) in models.items():
        lines.append(_row(label, m, report["latency_ms"][key], teacher_lat))
    t = report["targets"]
    speed_lines = [
        f"- Latency speed-up at batch {b}: {t[f'speedup_{b}']:.2f}x with "
        f"{t[f'speedup_{b}_backend']} (target >= {t[f'speedup_{b}_target']:g}x: "
        f"{'met' if t[f'speedup_{b}_met'] else 'MISSED'}); by backend: "
        + ", ".join(f"{backend} {s[b]:.2f}x" for backend, s in report["speedup_by_backend"].items())
        for b in TARGETS["speedup"]
        if f"speedup_{b}" in t
    ]
    lines += [
        "",
        "## Student against teacher",
        "",
        f"- Test NDCG@10 ratio: {t['ndcg_ratio']:.3f} (target >= 0.95: "
        f"{'met' if t['ndcg_ratio_met'] else 'MISSED'})",
        f"- Body parameters: {t['body_params_ratio']:.1f}x fewer (target >= 10x: "
        f"{'met' if t['body_params_ratio_met'] else 'MISSED'})",
        *speed_lines,
        f"- Wall time: teacher {report['seconds']['teacher']:.0f} s, search "
        f"{report['seconds']['search']:.0f} s, student {report['seconds']['student']:.0f} s",
        "",
        *_budget_lines(report),
        "## Cost table of the search space (mean 1; from MACs and parameters)",
        "",
        "| op | cost |",
        "|---|---|",
        *[f"| {op} | {c:.3f} |" for op, c in report["student"]["cost"]["table"].items()],
        "",
        *_cell_lines(report, out, search_dir),
    ]
    diag = report["search"]
    if diag:
        lines += [
            "## Did the search search?",
            "",
            f"Mean entropy of softmax(alpha) per edge: {diag['entropy_first']:.3f} after the "
            f"first epoch, {diag['entropy_last']:.3f} after the last (uniform: "
            f"{diag['uniform_entropy']:.3f}); largest probability {diag['max_prob_last']:.3f}; "
            f"edges with one op at probability >= 0.5: {diag.get('decided_edges_last')} of "
            f"{diag.get('edges')}; largest alpha drift {diag['drift_last']:.3f}.",
            "",
            f"![alpha over epochs]({_rel(Path(search_dir) / 'alphas.png', out)})",
            "",
        ]
    lines += _front_lines(report)
    lines += [
        "## Plots",
        "",
        "![accuracy against latency](accuracy_latency.png)",
        "",
        f"![search curves]({_rel(Path(search_dir) / 'curves.png', out)})",
        "",
    ]
    return "\n".join(lines) + "\n"


def _cell_lines(report: dict[str, Any], out: Path, search_dir: Path) -> list[str]:
    """The served student's cell, and the search's own derivation (at ``search.budget``)
    when the student is another cell (one the front or ``student.budget`` derived)."""
    searched = (Path(search_dir) / "genotype.txt").read_text().rstrip()
    architecture = report["student"].get("architecture")
    served = genotype_to_text(genotype_from_dict(architecture)) if architecture else searched
    lines = ["## The student's cell", "", "```", served, "```", ""]
    if served == searched:
        return [*lines, f"![derived cell]({_rel(Path(search_dir) / 'genotype.png', out)})", ""]
    return [
        *lines,
        "The search's own derivation, at its budget (the front derives the student above",
        "from the same architecture weights at the selected budget):",
        "",
        "```",
        searched,
        "```",
        "",
    ]


def _budget_lines(report: dict[str, Any]) -> list[str]:
    """The budget (target beside achieved) and the comparison with random cells."""
    lines = []
    budget = report.get("budget")
    if budget:
        unit = budget["unit"]
        scale, label = (1e6, "MMACs") if unit == "macs" else (1.0, "ms")
        achieved = f"modelled {budget['modelled'] / scale:.3f} {label}"
        if "counted" in budget:
            achieved += f", counted on the network {budget['counted'] / scale:.3f} {label}"
        teacher = "" if budget["teacher"] is None else f" (teacher {budget['teacher'] / scale:.3f})"
        lines += [
            "## Budget",
            "",
            f"- Budget {budget['budget']}: target {budget['target'] / scale:.3f} {label} per "
            f"history{teacher}; achieved: {achieved} "
            f"({'within' if budget['within'] else 'OVER'} the budget)",
            "",
        ]
    comparison = report.get("searched_vs_random")
    if comparison:
        c = comparison
        lines += [
            "## Searched cell against random cells under the same budget",
            "",
            f"- {c['metric']}: searched {c['searched']:.4f} ± {c['searched_se']:.4f}; "
            f"random cells {', '.join(f'{v:.4f}' for v in c['random'])} (mean "
            f"{c['random_mean']:.4f} ± {c['random_se']:.4f} over cells); difference "
            f"{c['difference']:+.4f} ± {c['difference_se']:.4f} (cells and "
            f"{'paired ' if c.get('paired') else ''}test users: ± {c.get('test_se', 0):.4f}): "
            f"{_verdict(c)}",
            "",
        ]
    return lines


def _front_lines(report: dict[str, Any]) -> list[str]:
    """The front's table and figure (``run.front``), with the selection and its reason."""
    if "front_skipped" in report:
        return ["## The front of the search", "", f"No front: {report['front_skipped']}.", ""]
    if "front" not in report:
        return []
    rows = report["front"]
    batches = list(rows[0]["speedup"]) if rows else []
    header = ["budget", "valid NDCG@10", "test NDCG@10", "MMACs"] + [
        f"speed-up @{b}" for b in batches
    ]
    selected = report["selected"]
    lines = [
        "## The front of the search (one search, every budget)",
        "",
        "Students derived from the search at a sweep of speed-ups and retrained where they",
        "can be on the front; speed-ups measured in the serving path (compiled step; the",
        "teacher on its TorchScript graph). Selection reads validation only.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for r in rows:
        mark = " (selected)" if r["budget"] == selected["name"] else ""
        cells = [
            r["budget"] + mark,
            f"{r['valid_ndcg10']:.4f}",
            f"{r['test_ndcg10']:.4f}",
            f"{r['macs'] / 1e6:.3f}",
            *[f"{r['speedup'][b]:.1f}x" for b in batches],
        ]
        lines.append("| " + " | ".join(cells) + " |")
    others = report.get("front_not_retrained", [])
    if others:
        lines += [
            "",
            "Not retrained (the estimate: validation NDCG@10 after "
            "`front.estimate_epochs` of fine-tuning the inherited weights):",
            "",
            "| budget | MMACs | estimated valid NDCG@10 | why not |",
            "|---|---|---|---|",
            *[
                f"| {r['budget']} | {r['macs'] / 1e6:.3f} | {r['estimate_valid_ndcg10']:.4f} "
                f"| {r['reason']} |"
                for r in others
            ],
        ]
    cost = report["front_cost"]
    lines += [
        "",
        f"- Selected: {selected['reason']}",
        f"- Cost: search {cost['search_seconds']:.0f} s, front {cost['front_seconds']:.0f} s "
        f"(estimates, {len(rows)} retraining{'s' if len(rows) != 1 else ''}, timing): search "
        f"+ front = {cost['search_plus_front_over_search_plus_one_retraining']:.2f} x "
        "(search + one retraining).",
        "",
        f"![the front]({report['front_figure']})",
        "",
    ]
    return lines


def _verdict(c: dict[str, Any]) -> str:
    if not c["beats"]:
        return "the search does NOT beat chance"
    if c.get("significant"):
        return "the search beats chance (by more than two standard errors)"
    return "the search is above the random mean, but within two standard errors"


def _rel(path: Path, root: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(Path(root).resolve()))
    except ValueError:
        return str(Path(path).resolve())
