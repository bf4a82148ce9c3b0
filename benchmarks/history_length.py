"""How much of each history does a model use? Test accuracy when it sees only the last W items.

Usage: python benchmarks/history_length.py RUN_DIR [RUN_DIR ...] [--lengths 50 25 17 10 5]
       [--json benchmarks/results/history_length_DATASET.json]

Every test history is cut to its last W items (the earlier ones become padding) before the
model scores it; full-ranking test NDCG@10 with its standard error per W, for every run.
A teacher that loses nothing when cut to the student's receptive field shows that the
student's bounded window is not what separates them.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch import nn

from adarec.errors import UserError
from adarec.evaluate.evaluator import evaluate
from adarec.evaluate.latency import machine_description
from adarec.io import atomic_write_json
from adarec.pipeline.common import load_stage_data
from adarec.runs import load_run_config, load_run_model

ROOT = Path(__file__).resolve().parents[1]


class LastItems(nn.Module):
    """``model`` scoring only the last ``length`` items of each (left-padded) history."""

    def __init__(self, model: nn.Module, length: int):
        super().__init__()
        self.model, self.length = model, length

    def full_sort_predict(self, items: torch.Tensor) -> torch.Tensor:
        cut = items.clone()
        cut[:, : max(items.shape[1] - self.length, 0)] = 0
        return self.model.full_sort_predict(cut)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("runs", nargs="+")
    parser.add_argument("--lengths", nargs="+", type=int, default=[50, 25, 17, 10, 5])
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    try:
        if any(w < 1 for w in args.lengths):
            raise UserError("--lengths must be positive")
        results = {}
        data, dataset = None, None
        for run in args.runs:
            cfg = load_run_config(Path(run))
            if data is None:
                data, dataset = load_stage_data(cfg), cfg.data.dataset
            elif cfg.data.dataset != dataset:
                raise UserError(f"{run} is on {cfg.data.dataset}, the first run on {dataset}")
            model, spec = load_run_model(Path(run), "cpu")
            per_length = {}
            for w in args.lengths:
                r = evaluate(LastItems(model, w), data.test, [10], cfg.eval.batch_size, "cpu")
                per_length[str(w)] = {
                    "ndcg10": round(r["full"]["NDCG@10"], 4),
                    "se": round(r["standard_error"]["full"]["NDCG@10"], 4),
                }
                print(run, w, per_length[str(w)], flush=True)
            name = spec["model"]["name"] if "model" in spec else spec.get("kind", "model")
            results[run] = {"model": name, **per_length}
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    path = Path(args.json or ROOT / "benchmarks" / "results" / f"history_length_{dataset}.json")
    atomic_write_json(
        path,
        {
            "dataset": dataset,
            "command": " ".join(["python benchmarks/history_length.py", *sys.argv[1:]]),
            "machine": machine_description(),
            "metric": "test full-ranking NDCG@10 (standard error over users)",
            "runs": results,
        },
    )
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
