"""The serving commands of the CLI: ``export``, ``bench``, ``serve`` and ``recommend``."""

from __future__ import annotations

import argparse
import json
import math
import os
from pathlib import Path
from typing import Any

from adarec.errors import UserError

BACKEND_CHOICES = ("eager", "torchscript", "onnx", "compiled")


def _int_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected integers separated by commas, got {text!r}"
        ) from None
    if not values or any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def _name_list(text: str) -> tuple[str, ...]:
    names = tuple(v.strip() for v in text.split(",") if v.strip())
    unknown = [n for n in names if n not in BACKEND_CHOICES]
    if not names or unknown:
        raise argparse.ArgumentTypeError(
            f"expected a comma-separated subset of {','.join(BACKEND_CHOICES)}, got {text!r}"
        )
    return names


def cmd_export(args: argparse.Namespace) -> int:
    from adarec.serve.export import MODEL_FILES, export_run

    out = export_run(
        Path(args.run_dir), args.format, Path(args.out) if args.out else None, args.device
    )
    print(
        f"exported {args.format} artefact: {out} ({MODEL_FILES[args.format]}, items.json, "
        "popularity.json, metadata.json)"
    )
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from adarec.io import atomic_write_json
    from adarec.serve.bench import bench_runs, format_bench_table

    result = bench_runs(
        [Path(r) for r in args.run_dirs],
        threads=args.threads,
        batch_sizes=args.batch_sizes,
        repeats=args.repeats,
        warmup=args.warmup,
        backends=args.backends,
        device=args.device,
    )
    print(format_bench_table(result))
    if args.out:
        atomic_write_json(Path(args.out), result)
        print(f"results: {args.out}")
    return 0


def event_service(predictor: Any, args: argparse.Namespace) -> tuple[Any, str]:
    """The per-event service of ``serve`` (None: ``/events`` off) and a line saying so.

    Without --state, a model that can stream gets the in-process store and one that
    cannot serves ``/recommend`` only; an explicit --state on such a model is an error.
    """
    from adarec.serve.catalogue import make_catalogue
    from adarec.serve.events import EventService
    from adarec.serve.state_store import model_tag, open_store
    from adarec.serve.streaming import CompiledStudentStreamer, streamer_for

    check_state_options(args)
    # Options that only /events uses are refused where /events is off, never ignored.
    asked = [
        option
        for option, given in (
            ("--state", args.state is not None),
            ("--index", args.index != "auto"),
        )
        if given
    ]
    if predictor.model is None:
        if asked:
            raise UserError(
                f"{asked[0]} needs the eager or compiled backend (a run directory, not an export)"
            )
        return None, "/events off (it needs the eager or compiled backend)"
    try:
        if predictor.compiled is not None:
            streamer = CompiledStudentStreamer(predictor.model, predictor.compiled.step)
        else:
            streamer = streamer_for(predictor.model)
    except UserError as exc:
        if asked:
            raise UserError(f"{asked[0]} needs /events, which is off: {exc}") from None
        return None, f"/events off ({exc})"
    tag = model_tag(predictor.model, streamer.layout)
    device = predictor.model.output_layer.weight.device
    max_bytes = int(args.max_state_mb * 1024 * 1024)
    # Several workers: a user's events reach any of them, so a local copy of the Redis
    # states would mostly be stale (see RedisStore).
    local_copy = getattr(args, "workers", 1) == 1
    store = open_store(args.state or "memory", tag, args.max_users, max_bytes, device, local_copy)
    catalogue = make_catalogue(predictor.model, args.index)
    service = EventService(predictor, streamer, store, catalogue)
    return service, f"/events with the {store.kind} store and {catalogue.kind} top-k"


def check_state_options(args: argparse.Namespace) -> None:
    """UserError for a bad --max-users, --max-state-mb or --state URL (before any worker
    process starts or any model loads)."""
    from adarec.serve.resp import RespClient

    if args.max_users < 1 or not _positive(args.max_state_mb):
        raise UserError(
            f"--max-users and --max-state-mb must be positive; got {args.max_users} and "
            f"{args.max_state_mb}"
        )
    if args.state is not None and args.state.startswith(("redis://", "rediss://", "unix://")):
        RespClient.from_url(args.state)  # parses it: a malformed URL is a UserError


def _positive(value: float) -> bool:
    """A positive finite number (argparse's float() also accepts nan and inf)."""
    return math.isfinite(value) and value > 0


def cmd_serve(args: argparse.Namespace) -> int:
    from adarec.serve.app import bind_socket, create_app, serve
    from adarec.serve.predictor import Predictor

    if not 0 <= args.port <= 65535:
        raise UserError(f"--port must be between 0 and 65535; got {args.port}")
    if args.threads < 0:
        raise UserError(f"--threads must be 0 (the default) or more; got {args.threads}")
    if not _positive(args.max_body_mb):
        raise UserError(f"--max-body-mb must be positive; got {args.max_body_mb}")
    from adarec.serve.workers import check_workers

    check_workers(args.workers, args.state)
    check_state_options(args)
    if args.workers > 1:
        return serve_workers(args)
    try:
        predictor = Predictor.from_run(Path(args.run_dir), args.backend, args.device, args.threads)
        events, events_note = event_service(predictor, args)
        sock = bind_socket(args.host, args.port)
        host, port = sock.getsockname()[:2]
        url = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
        print(
            f"serving {predictor.info.get('model')} ({predictor.info.get('kind')}, "
            f"{predictor.info['backend']}) on {url}; {events_note}; Ctrl-C stops",
            flush=True,
        )
        app = create_app(predictor, events, int(args.max_body_mb * 1024 * 1024), events_note)
        serve(app, sock, access_log=not args.no_access_log)
    except KeyboardInterrupt:
        pass  # stopped before the server was up: nothing to shut down
    print("server stopped", flush=True)
    return 0


def format_recommendations(response: dict[str, Any]) -> str:
    """A ranked list with the notes of the response (unknown items, fallback, truncation)."""
    lines = [f"{'rank':>4}  {'item':<20}{'score':>12}"]
    for rank, (item, score) in enumerate(
        zip(response["items"], response["scores"], strict=True), 1
    ):
        lines.append(f"{rank:>4}  {item!s:<20}{score:>12.4f}")
    if response["unknown_items"]:
        lines.append("ignored unknown items: " + ", ".join(map(str, response["unknown_items"])))
    if response["fallback"]:
        lines.append("no known item in the history: most popular items instead")
    if response["truncated"]:
        lines.append("history longer than the model's max_len: only the most recent items used")
    return "\n".join(lines)


def serve_workers(args: argparse.Namespace) -> int:
    """``serve --workers N``: the socket bound here, each worker loads the model and serves."""
    from adarec.serve.app import bind_socket, create_app, serve
    from adarec.serve.predictor import Predictor
    from adarec.serve.workers import run_workers

    sock = bind_socket(args.host, args.port)
    host, port = sock.getsockname()[:2]
    url = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    def worker() -> None:
        predictor = Predictor.from_run(Path(args.run_dir), args.backend, args.device, args.threads)
        events, events_note = event_service(predictor, args)
        print(f"worker {os.getpid()}: {events_note}", flush=True)
        app = create_app(predictor, events, int(args.max_body_mb * 1024 * 1024), events_note)
        serve(app, sock, access_log=not args.no_access_log)

    print(f"serving {args.run_dir} on {url}; {args.workers} workers; Ctrl-C stops", flush=True)
    code = run_workers(worker, args.workers)
    sock.close()
    print("server stopped", flush=True)
    return code


def cmd_recommend(args: argparse.Namespace) -> int:
    from adarec.serve.predictor import Predictor

    history = [item.strip() for item in args.history.split(",") if item.strip()]
    predictor = Predictor.from_run(Path(args.run_dir), args.backend, args.device)
    response = predictor.recommend(history, args.k, args.exclude_seen)
    print(json.dumps(response, indent=2) if args.json else format_recommendations(response))
    return 0


def _add_backend(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--backend",
        choices=BACKEND_CHOICES,
        help="compiled (a student's one-call compiled step), eager PyTorch, TorchScript or "
        "ONNX Runtime (default: compiled for a student run directory on the CPU, eager for "
        "other runs, the export's format for an artefact)",
    )
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N or auto")


def add_serve_commands(subparsers: Any) -> None:
    """Register ``export``, ``bench``, ``serve`` and ``recommend`` on the CLI's subparsers."""
    run_help = "a run directory (or, for serve/recommend, an exported artefact directory)"

    export = subparsers.add_parser("export", help="write a self-contained TorchScript/ONNX model")
    export.add_argument("run_dir", help="a finished run directory")
    export.add_argument("--format", required=True, choices=("torchscript", "onnx"))
    export.add_argument("--out", help="artefact directory (default RUN_DIR/export/FORMAT)")
    export.add_argument(
        "--device",
        default="cpu",
        help="torchscript only: the device it will run on (cpu, cuda, cuda:N); default cpu",
    )
    export.set_defaults(func=cmd_export)

    bench = subparsers.add_parser(
        "bench", help="parameters, MACs and latency of runs under every serving backend"
    )
    bench.add_argument(
        "run_dirs",
        nargs="+",
        metavar="RUN_DIR",
        help="finished runs of one dataset; speed-ups are over the first",
    )
    bench.add_argument("--threads", type=int, default=1, help="CPU threads (default 1)")
    bench.add_argument(
        "--batch-sizes",
        type=_int_list,
        default=(1, 32, 256),
        help="comma-separated (default 1,32,256)",
    )
    bench.add_argument("--repeats", type=int, default=30, help="timed calls per batch size")
    bench.add_argument("--warmup", type=int, default=5, help="untimed calls first")
    bench.add_argument(
        "--backends",
        type=_name_list,
        default=BACKEND_CHOICES,
        help="comma-separated (default eager,torchscript,onnx,compiled; a model without a "
        "compiled step is timed on its TorchScript graph under compiled)",
    )
    bench.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N or auto")
    bench.add_argument("--out", help="write the results as JSON here")
    bench.set_defaults(func=cmd_bench)

    serve = subparsers.add_parser("serve", help="serve recommendations over HTTP")
    serve.add_argument("run_dir", help=run_help)
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on")
    serve.add_argument("--port", type=int, default=8000, help="port (0: any free port)")
    serve.add_argument("--threads", type=int, default=0, help="CPU threads (0: the default)")
    serve.add_argument("--no-access-log", action="store_true", help="do not log every request")
    serve.add_argument(
        "--state",
        help="where /events keeps per-user states: memory (default when the model can "
        "stream) or redis://host:port/db",
    )
    serve.add_argument(
        "--max-users",
        type=int,
        default=1_000_000,
        help="users whose states this process keeps (LRU): the memory store, or with Redis "
        "the local copy of the states it wrote",
    )
    serve.add_argument(
        "--max-state-mb",
        type=float,
        default=1024,
        help="MiB of states this process keeps (LRU; as --max-users)",
    )
    serve.add_argument(
        "--index",
        default="auto",
        choices=("auto", "exact", "faiss"),
        help="top-k of /events: exact matmul, faiss (approximate, for millions of items) "
        "or auto (exact below 200,000 items)",
    )
    serve.add_argument(
        "--max-body-mb", type=float, default=4, help="largest request body in MiB (413 above)"
    )
    serve.add_argument(
        "--workers",
        type=int,
        default=1,
        help="server processes on one port (above 1: needs --state redis://...)",
    )
    _add_backend(serve)
    serve.set_defaults(func=cmd_serve)

    recommend = subparsers.add_parser("recommend", help="recommend items for one history")
    recommend.add_argument("run_dir", help=run_help)
    recommend.add_argument(
        "--history", required=True, help='comma-separated raw item ids, oldest first: "i1,i2,i3"'
    )
    recommend.add_argument("--k", type=int, default=10, help="how many items (default 10)")
    recommend.add_argument(
        "--exclude-seen", action="store_true", help="never recommend an item of the history"
    )
    recommend.add_argument("--json", action="store_true", help="print the response as JSON")
    _add_backend(recommend)
    recommend.set_defaults(func=cmd_recommend)
