"""The ``adarec`` command line: parses, loads the configuration, calls one function per command."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from adarec.config import Config, load_config
from adarec.errors import UserError


def _add_config_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML file layered over the built-in defaults")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one config key, e.g. train.lr=1e-3",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars or console log")


def _config(args: argparse.Namespace, **fixed: Any) -> Config:
    """Defaults < --config file < --set, then the command's own options (e.g. --dataset)."""
    overrides = list(args.overrides)
    overrides += [f"{key}={value}" for key, value in fixed.items() if value is not None]
    return load_config(args.config, overrides)


def _dataset_name(dataset: str) -> str:
    return Path(dataset).stem if ("/" in dataset or "." in dataset) else dataset


def cmd_data_stats(args: argparse.Namespace) -> int:
    from adarec.data.preprocess import prepare
    from adarec.data.stats import describe, format_stats

    cfg = _config(args, **{"data.dataset": args.dataset})
    data = prepare(cfg.data, cfg.seed, progress=not args.quiet)
    print(format_stats(describe(data)))
    return 0


def cmd_teacher(args: argparse.Namespace) -> int:
    from adarec.pipeline.teacher import train_teacher

    cfg = _config(args, **{"data.dataset": args.dataset, "model.name": args.model})
    out = args.out or f"runs/{_dataset_name(cfg.data.dataset)}/{cfg.model.name}"
    metrics = train_teacher(cfg, Path(out), quiet=args.quiet, resume=args.resume, phase=args.phase)
    if metrics:
        print(_metrics_table({cfg.model.name: metrics}))
        print(f"run directory: {out}")
    return 0


def _config_from_run(args: argparse.Namespace, run_dir: str) -> Config:
    """A stage that follows another starts from that run's resolved config (same data)."""
    from adarec.runs import load_run_config

    return load_run_config(Path(run_dir), args.config, list(args.overrides))


def _budget_override(args: argparse.Namespace) -> None:
    """``--budget B`` is ``--set search.budget=B``, layered last."""
    if args.budget is not None:
        args.overrides = [*args.overrides, f"search.budget={args.budget}"]


def _selection_overrides(args: argparse.Namespace) -> None:
    """``--keep`` and ``--budget`` of the front's selection as config keys (run.keep,
    run.select_budget), layered last, so a bad value is one UserError naming the key.
    ``--budget`` alone asks for the most accurate student within it: keep is dropped."""
    if args.keep is not None:
        args.overrides = [*args.overrides, f"run.keep={args.keep}"]
    if args.budget is not None:
        args.overrides = [*args.overrides, f"run.select_budget={args.budget}"]
        if args.keep is None:
            args.overrides.append("run.keep=null")


def _add_selection_options(parser: argparse.ArgumentParser, budget_help: str) -> None:
    parser.add_argument(
        "--keep",
        help="select the fastest student whose validation NDCG@10 is at least KEEP x the "
        "teacher's (config run.keep, default 0.99)",
    )
    parser.add_argument("--budget", help=budget_help)


def _add_budget_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--budget",
        help="student cost per history: a speed-up over the teacher ('5x', the default), "
        "MACs ('2.5M') or milliseconds at batch 1 on this machine ('1.5ms')",
    )


def cmd_search(args: argparse.Namespace) -> int:
    from adarec.pipeline.search import run_search

    _budget_override(args)
    cfg = _config_from_run(args, args.teacher)
    out = args.out or str(Path(args.teacher).parent / "search")
    run_search(cfg, Path(out), Path(args.teacher), quiet=args.quiet, resume=args.resume)
    print(f"derived cell:\n{(Path(out) / 'genotype.txt').read_text()}run directory: {out}")
    return 0


def cmd_finetune(args: argparse.Namespace) -> int:
    from adarec.pipeline.student import run_student

    cfg = _config_from_run(args, args.search)
    out = args.out or str(Path(args.search).parent / "student")
    metrics = run_student(cfg, Path(out), Path(args.search), quiet=args.quiet, resume=args.resume)
    print(_metrics_table({"student": metrics}))
    print(f"run directory: {out}")
    return 0


def cmd_run(args: argparse.Namespace, ablate: bool = False) -> int:
    from adarec.pipeline.run import BASELINES, run_pipeline

    if args.teacher and (args.dataset or args.teacher_model):
        raise UserError(
            "--teacher fixes the dataset and teacher model; drop --dataset and "
            "--teacher-model, or drop --teacher"
        )
    # --budget both centres the search and bounds the front's selection (run.front).
    _budget_override(args)
    _selection_overrides(args)
    if args.teacher:
        cfg = _config_from_run(args, args.teacher)
    else:
        cfg = _config(args, **{"data.dataset": args.dataset, "model.name": args.teacher_model})
    out = args.out or f"runs/{_dataset_name(cfg.data.dataset)}/adarec-{cfg.model.name}"
    baselines = list(BASELINES) if ablate else None
    report = run_pipeline(
        cfg,
        Path(out),
        Path(args.teacher) if args.teacher else None,
        baselines=baselines,
        quiet=args.quiet,
    )
    rows = {"teacher": report["teacher"], "student": report["student"], **report["baselines"]}
    print(_metrics_table(rows))
    print(
        "speed-up of the student over the teacher (median latency): "
        + ", ".join(f"batch {b}: {v:.1f}x" for b, v in report["speedup"].items())
    )
    print(f"report: {Path(out) / 'report.md'}")
    return 0


def cmd_front(args: argparse.Namespace) -> int:
    from adarec.pipeline.front import FRONT_FILE, build_front, format_front, front_dir_of

    _selection_overrides(args)
    cfg = _config_from_run(args, args.search)
    out = Path(args.out) if args.out else front_dir_of(Path(args.search))
    front = build_front(cfg, Path(args.search), out, quiet=args.quiet)
    print(format_front(front))
    print(f"front: {out / FRONT_FILE}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from adarec.pipeline.evaluate import evaluate_run

    metrics = evaluate_run(Path(args.run_dir), exclude_seen=args.exclude_seen)
    print(_metrics_table({metrics["model"]: metrics}))
    return 0


def _metrics_table(rows: dict[str, dict[str, Any]]) -> str:
    """A plain-text table of the headline (full ranking) and sampled test metrics."""
    header = (
        f"{'model':<14}{'NDCG@10':>9}{'HR@10':>8}{'MRR@10':>8}"
        f"{'s-NDCG@10':>11}{'s-HR@10':>9}{'body params':>13}"
    )
    lines = [header, "-" * len(header)]
    for name, m in rows.items():
        full, sampled = m["test"]["full"], m["test"]["sampled"]
        lines.append(
            f"{name:<14}{full['NDCG@10']:>9.4f}{full['HR@10']:>8.4f}{full['MRR@10']:>8.4f}"
            f"{sampled['NDCG@10']:>11.4f}{sampled['HR@10']:>9.4f}{m['params']['body']:>13,}"
        )
    lines.append("test split; full ranking over all items (s- columns: 100 sampled negatives)")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="adarec",
        description="Compress a sequential recommender into a small, fast student (AdaRec).",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="inspect datasets")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    stats = data_sub.add_parser("stats", help="users, items, lengths and what each filter removed")
    stats.add_argument("dataset", help="ml-100k, ml-1m, synthetic, or a data file")
    _add_config_options(stats)
    stats.set_defaults(func=cmd_data_stats)

    teacher = sub.add_parser("teacher", help="train and evaluate a teacher (or pop baseline)")
    teacher.add_argument("--model", choices=["nextitnet", "sasrec", "bert4rec", "pop"])
    teacher.add_argument("--dataset", help="ml-100k, ml-1m, synthetic, or a data file")
    teacher.add_argument("--out", help="run directory (default runs/DATASET/MODEL)")
    teacher.add_argument("--resume", action="store_true", help="continue an interrupted run")
    teacher.add_argument(
        "--phase",
        choices=["all", "pretrain", "finetune"],
        default="all",
        help="bert4rec: masked-item pretraining, causal fine-tuning, or both",
    )
    _add_config_options(teacher)
    teacher.set_defaults(func=cmd_teacher)

    search = sub.add_parser("search", help="search a student cell guided by a trained teacher")
    search.add_argument("--teacher", required=True, help="a finished teacher run directory")
    search.add_argument("--out", help="run directory (default: beside the teacher, search/)")
    search.add_argument("--resume", action="store_true", help="continue an interrupted search")
    _add_budget_option(search)
    _add_config_options(search)
    search.set_defaults(func=cmd_search)

    for name in ("finetune", "student"):
        finetune = sub.add_parser(
            name,
            help="retrain the derived student of a search"
            + (" (alias of finetune)" if name == "student" else ""),
        )
        finetune.add_argument("--search", required=True, help="a finished search run directory")
        finetune.add_argument("--out", help="run directory (default: beside the search)")
        finetune.add_argument("--resume", action="store_true", help="continue an interrupted run")
        _add_config_options(finetune)
        finetune.set_defaults(func=cmd_finetune)

    for name, helptext in (
        ("run", "the whole pipeline, ending in report.md/report.json"),
        ("ablate", "the pipeline plus every baseline and ablation"),
    ):
        run = sub.add_parser(name, help=helptext)
        run.add_argument("--dataset", help="ml-100k, ml-1m, synthetic, or a data file")
        run.add_argument("--teacher-model", choices=["nextitnet", "sasrec", "bert4rec"])
        run.add_argument("--teacher", help="reuse a finished teacher run directory")
        run.add_argument("--out", help="run directory (default runs/DATASET/adarec-MODEL)")
        _add_selection_options(
            run,
            "the search's budget and the selection's bound: a speed-up over the teacher "
            "('5x'), MACs ('2.5M') or ms at batch 1 ('1.5ms'); alone: the most accurate "
            "student of the front within it, with --keep: the fastest within it that keeps",
        )
        _add_config_options(run)
        run.set_defaults(func=(lambda a, ab=(name == "ablate"): cmd_run(a, ablate=ab)))

    front = sub.add_parser(
        "front",
        help="students of one search at every budget: estimate, retrain the front, select",
    )
    front.add_argument("search", help="a finished search run directory")
    front.add_argument("--out", help="front directory (default: beside the search, front/)")
    _add_selection_options(
        front,
        "select within this budget: a speed-up ('10x'), MACs ('2.5M') or ms at batch 1 "
        "('1.5ms'); alone: the most accurate within it, with --keep: the fastest that keeps",
    )
    _add_config_options(front)
    front.set_defaults(func=cmd_front)

    evaluate = sub.add_parser("evaluate", help="re-evaluate a finished run on valid and test")
    evaluate.add_argument("run_dir")
    evaluate.add_argument(
        "--exclude-seen", action="store_true", help="drop the user's history items from the ranking"
    )
    evaluate.set_defaults(func=cmd_evaluate)

    from adarec.serve.commands import add_serve_commands

    add_serve_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if int(os.environ.get("RANK", "0")) != 0:
        # Under torchrun every rank runs the command; only rank 0 prints results.
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115
    try:
        return args.func(args)
    except UserError as exc:
        print(f"adarec: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        if exc.filename is None:
            raise  # not about a path of the user's: a bug, with its traceback
        # A folder or file of the user's that the stages did not check (an unreadable
        # checkpoints/, a symlink loop): the path and the cause, as for a UserError.
        print(f"adarec: error: cannot access {exc.filename}: {exc.strerror}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("adarec: interrupted; rerun with --resume to continue", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
