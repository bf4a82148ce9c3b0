"""A stage's run directory from start to metrics.json, written once for every stage.

A stage file (teacher, search, student, distill_baseline) says only what is particular to
it: its model, its training stage, its extra metrics. ``StageRun`` does what they share:

- start: check the run directory (a finished run is read-only, a resume keeps its
  configuration), set up device, process group, seed and logging; load the data, check it
  against the run the stage follows, write the data files; start the clock;
- train: the one training loop on the run's data, resumable;
- finish: the training curves, the model file with its spec, the final metrics and
  metrics.json, which marks the stage finished.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from adarec.config import Config, LoopConfig
from adarec.data.splits import item_counts
from adarec.models.base import SequentialRecommender
from adarec.pipeline.common import (
    check_same_data,
    final_metrics,
    load_stage_data,
    start_run,
    write_data_files,
    write_metrics,
)
from adarec.plots import plot_training_curves
from adarec.runs import MODEL_FILE, save_model
from adarec.train.loop import Stage, TrainingContext, TrainResult, run_training
from adarec.train.sampled import NegativeSampler, make_sampler


class StageRun:
    """One stage in ``run_dir``: ``train`` as often as the stage needs, then ``finish``.

    ``data_of``: the run directory whose item catalogue this stage must share (the teacher
    a search distils, the search a student is derived from).
    """

    def __init__(
        self,
        cfg: Config,
        run_dir: Path,
        resume: bool,
        quiet: bool,
        data_of: Path | None = None,
    ):
        self.cfg, self.run_dir, self.resume, self.quiet = cfg, Path(run_dir), resume, quiet
        self.device = start_run(cfg, self.run_dir, resume, quiet)
        self.data = load_stage_data(cfg, quiet)
        if data_of is not None:
            check_same_data(data_of, self.data)
        write_data_files(self.run_dir, self.data.data)
        self.epochs = 0  # of every loop this stage ran (BERT4Rec: pretraining + fine-tuning)
        self.history: list[dict[str, Any]] = []  # of the last loop, the one plotted
        self.start_clock()

    def sampler(self) -> NegativeSampler | None:
        """The sampled softmax's negatives for this run's catalogue (``sampled_softmax``),
        or None: every training loss over the whole catalogue."""
        return make_sampler(self.cfg.sampled_softmax, item_counts(self.data.data))

    def start_clock(self) -> None:
        """Count ``train_seconds`` from now (by default from the end of the set-up)."""
        self.started = time.perf_counter()

    def train(
        self,
        stage: Stage,
        loop: LoopConfig,
        desc: str,
        train_set: Dataset | None = None,
        run_dir: Path | None = None,
        select_on_valid: bool = True,
    ) -> TrainResult:
        """Run the training loop on the run's training windows (or ``train_set``), validated
        on its valid split, checkpointed in the run directory (or ``run_dir``)."""
        context = TrainingContext(
            run_dir=self.run_dir if run_dir is None else Path(run_dir),
            valid=self.data.valid,
            eval_cfg=self.cfg.eval,
            seed=self.cfg.seed,
            device=self.device,
            quiet=self.quiet,
            resume=self.resume,
        )
        train_data = self.data.train if train_set is None else train_set
        result = run_training(
            stage, loop, train_data, context, desc=desc, select_on_valid=select_on_valid
        )
        self.epochs += result.epochs
        self.history = result.history
        return result

    def finish(
        self,
        model: SequentialRecommender,
        name: str,
        title: str,
        extra: dict[str, Any] | None = None,
        filename: str = MODEL_FILE,
    ) -> dict[str, Any]:
        """Plot the last training (``title``), save ``model`` with its spec, evaluate it and
        write metrics.json (``name`` is its "model", ``extra`` more keys); returns the metrics."""
        plot_training_curves(self.history, self.run_dir / "curves.png", title)
        model.to(self.device)
        save_model(self.run_dir, model, filename)
        seconds = time.perf_counter() - self.started
        metrics = final_metrics(
            model, self.cfg, self.data, self.device, name, seconds, self.epochs, extra
        )
        write_metrics(self.run_dir, metrics)
        return metrics
