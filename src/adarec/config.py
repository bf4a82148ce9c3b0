"""Layered, validated configuration: built-in defaults < YAML file < ``--set key=value``.

The configuration is data: nested dataclasses. Unknown keys are errors that name the
closest valid key, values are coerced to the declared type, and the resolved configuration
is saved into every run directory.
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from adarec.errors import UserError
from adarec.io import atomic_write_text, read_text

log = logging.getLogger("adarec")


@dataclass
class DataConfig:
    """Where the interactions come from and how they are turned into sequences."""

    dataset: str = "ml-100k"  # built-in name (ml-100k, ml-1m, synthetic) or a file path
    # auto | atomic | csv | ml2k | retailrocket | 30music | parquet (a file or a folder of
    # files; columns user_col, item_col, time_col, rating_col)
    format: str = "auto"
    sep: str = "auto"  # csv/tsv separator: auto | "," | "\t" | ...
    user_col: str = "user_id"
    item_col: str = "item_id"
    time_col: str = "timestamp"
    rating_col: str = ""  # empty: no rating column
    session_col: str = "SessionId"  # 30music: one sequence per session
    event_col: str = "event"  # retailrocket
    events: list[str] = field(default_factory=lambda: ["view"])  # retailrocket events kept
    rating_threshold: float | None = None  # keep rows with rating >= threshold
    duplicates: str = "drop"  # rows repeating (user, item, timestamp): drop | keep
    min_item_count: int = 5
    min_user_count: int = 5
    kcore: str = "iterative"  # iterative (until stable) | single (the paper's one pass)
    max_len: int = 50
    long_sequences: str = "windows"  # windows (paper: cut from the end) | recent
    min_window: int = 2  # training windows shorter than this are dropped
    num_negatives: int = 100  # sampled-evaluation negatives per user
    # synthetic generator (dataset: synthetic)
    synthetic_users: int = 200
    synthetic_items: int = 100
    synthetic_length: int = 30
    synthetic_pattern: str = "successor"  # successor | order (see adarec.data.synthetic)


@dataclass
class ModelConfig:
    """Teacher architecture. Fields a model does not use are ignored by it."""

    name: str = "sasrec"  # nextitnet | sasrec | bert4rec | pop
    hidden_size: int = 64
    num_blocks: int = 2  # nextitnet: residual blocks; sasrec/bert4rec: transformer blocks
    dilations: list[int] = field(default_factory=lambda: [1, 4])  # nextitnet pattern
    kernel_size: int = 3
    residual_scale: bool = True  # nextitnet: learnable residual scale initialised to 0
    num_heads: int = 2
    inner_size: int = 256  # transformer feed-forward width
    dropout: float = 0.2
    distill_every: int = 1  # expose every k-th block output for distillation
    mask_prob: float = 0.4  # bert4rec masked-item pretraining
    pretrain_epochs: int = 10  # bert4rec: masked-item epochs before causal fine-tuning


@dataclass
class LoopConfig:
    """Settings of the one training loop, shared by every stage."""

    epochs: int = 50
    batch_size: int = 128  # per process; the global batch is batch_size x world size
    lr: float = 1e-3
    weight_decay: float = 0.0
    optimizer: str = "adam"  # adam | adamw
    clip_grad: float = 5.0  # 0 disables clipping
    lr_step: int = 0  # step decay every lr_step epochs (0: none)
    lr_decay: float = 1.0
    patience: int = 5  # early stopping on validation NDCG@10 (full ranking); 0 disables
    eval_every: int = 1
    max_steps_per_epoch: int = 0  # 0: the whole epoch (a smaller value for smoke runs)


@dataclass
class TrainConfig(LoopConfig):
    """Teacher training."""


@dataclass
class DistillConfig:
    """The distillation objective ``(1 - gamma) CE + gamma (L_emb + L_hid + L_logit)``.

    One section read by every stage that distils a teacher: the search, retraining with
    ``student.loss: kd`` and the ``small_kd`` baseline (which turns off its own copy's
    embedding and hidden-layer terms). These keys were ``search.*`` before (``MOVED_KEYS``).
    """

    gamma: float = 0.5
    gamma_decay: float = 1.0  # gamma multiplied by this after each epoch
    use_ce: bool = True
    use_emb: bool = True
    use_hid: bool = True
    use_logit: bool = True
    hid_distance: str = "kl"  # kl (paper: channel-softmax KL) | mse
    layer_mapping: str = "emd"  # emd | skip (uniform one-to-one) | last
    kd_temperature: float = 1.0


@dataclass
class SearchConfig(LoopConfig):
    """Architecture search: space, relaxation, losses and the search loop."""

    epochs: int = 30
    batch_size: int = 64
    lr: float = 5e-3
    weight_decay: float = 5e-4
    optimizer: str = "adamw"
    patience: int = 0
    cells: int = 4
    nodes: int = 3
    width: int = 64
    ops: str = "causal"  # causal (default, leak-free) | paper (centred ops: leaks labels)
    dropout: float = 0.1
    # full (paper): every op of an edge runs, so alpha's gradient compares the ops;
    # single_path (GDAS): only the sampled op runs, but alpha then learns only whether to
    # scale that op up or down (measured on the order scene: it settles on pools).
    mode: str = "full"
    optimization: str = "single"  # single (paper) | bilevel (first-order, held-out batches)
    alpha_lr: float = 1e-2  # Adam, betas (0.5, 0.999); the paper's 2e-5 barely moves alpha
    # Both span search.epochs: a resume that changes epochs changes their schedule.
    warmup: float = 0.25  # fraction of the epochs with alpha frozen (uniform sampling)
    entropy: float = 2.0  # final weight of alpha's entropy term (ramped up after warm-up)
    alpha_weight_decay: float = 1e-4
    alpha_init_std: float = 1e-2
    tau_initial: float = 1.0
    tau_decay: float = 0.8
    tau_every: int = 5
    # The budget: a speed-up over the teacher ("5x", in the unit of `cost`), MACs per
    # history ("2.5M") or ms per history at batch 1 on this machine ("1.5ms").
    budget: str = "5x"
    cost_form: str = "budget"  # budget (MnasNet-style) | absolute (TuNAS) | paper (beta x table)
    cost_under: float = 0.0  # budget form: cost elasticity under the target (MnasNet hard)
    cost_over: float = 1.0  # budget/absolute forms: elasticity over the target
    cost_gate: str = "derived"  # budget form: which cost is compared with the target, the
    # derived (argmax) cell's or the expected cost under softmax(alpha); see nas/architect.py
    beta: float = 8.0  # paper form: weight of the one-hot cost table
    # The cost term on alpha (any cost form); false: no budget, no cost model. It belongs
    # to the search, not to the distillation objective: retraining never has it.
    use_cost: bool = True
    cost: str = "macs"  # unit of speed-up budgets and the paper's table: macs | latency


@dataclass
class StudentConfig(LoopConfig):
    """Retraining of the derived student."""

    epochs: int = 100
    batch_size: int = 64
    lr: float = 1e-4
    weight_decay: float = 5e-4
    optimizer: str = "adamw"
    lr_step: int = 10
    lr_decay: float = 0.9
    patience: int = 10
    init: str = "inherit"  # inherit (paper: searched weights) | scratch
    loss: str = "ce"  # ce (paper) | kd (the distill section's objective, as the search's)
    # A speed-up over the teacher ("15x") to derive the student under from the search's
    # architecture weights (repaired to fit; no new search); "" keeps the search's cell.
    budget: str = ""
    # none (the causal cells alone know the order: the student streams per event exactly,
    # at the same cost, past data.max_len) | absolute (a learned position embedding, as the
    # supernet has). none is the default because it lost nothing: test NDCG@10 none minus
    # absolute, same schedule and seed, +0.0073 +- 0.0040 on ml-100k and +0.0007 +- 0.0013
    # on ml-1m (paired standard errors; benchmarks/results/positions_*.json).
    positions: str = "none"


@dataclass
class EvalConfig:
    ks: list[int] = field(default_factory=lambda: [1, 5, 10, 20])
    batch_size: int = 512
    exclude_seen: bool = False  # drop the user's history items from the ranking


@dataclass
class SampledSoftmaxConfig:
    """Training losses over a sampled candidate set instead of the whole catalogue.

    Below ``min_items`` items every loss scores the whole catalogue (full softmax, exact);
    from ``min_items`` on, the teacher, the search and the retraining score each position's
    target and ``negatives`` items drawn once per step, shared by all positions, from the
    proposal, with the log-Q correction (adarec.train.sampled). Evaluation always ranks the
    whole catalogue.
    """

    # The catalogue size from which training samples (0: always; a huge value: never).
    # Measured on ml-1m (benchmarks/results/sampled_softmax_ml-1m*.json, SASRec teacher, 6
    # epochs each, paired test NDCG@10): sampling saves little at 3.4k items, so a catalogue
    # of that size stays on the exact full softmax. From 50,000 items the full softmax's
    # step is 12x the sampled one and its logits need gigabytes
    # (benchmarks/results/scale.json), so training samples there.
    min_items: int = 50_000
    # Shared negatives drawn per training step. On ml-1m: 1,024 cost 5.4% of NDCG@10
    # (-0.0072 +- 0.0019), 2,048 1.2% (-0.0016 +- 0.0017), 4,096 0.2%; a step at 1M items
    # over the full softmax's at 3.4k (1 thread): 1.1-1.4x, 1.8-2.1x, 2.9-3.5x (teacher,
    # student, logit KD); at 20 epochs 2,048 cost 0.9% (-0.0014 +- 0.0020). 2,048 keeps
    # both within issue 28's 2% and 3x.
    negatives: int = 2048
    proposal: str = "popularity"  # popularity (training counts ** power) | uniform
    power: float = 0.75  # popularity proposal: (count + 1) ** power


# How a trained model can be run for serving (adarec serve --backend, adarec bench).
SERVING_BACKENDS = ("eager", "torchscript", "onnx", "compiled")


@dataclass
class BenchConfig:
    """CPU latency measurement of teacher and student (same process, same inputs)."""

    batch_sizes: list[int] = field(default_factory=lambda: [1, 256])
    repeats: int = 30
    warmup: int = 5
    threads: int = 0  # 0: leave torch's default
    # The pipeline's report times every model under each (eager PyTorch, and the exported
    # TorchScript graph a service would load); adarec bench takes its own --backends.
    backends: list[str] = field(default_factory=lambda: ["eager", "torchscript", "compiled"])


@dataclass
class RunConfig:
    """What ``adarec run`` compares the student with (``adarec ablate`` runs them all)."""

    baselines: list[str] = field(default_factory=lambda: ["pop"])
    random_cells: int = 3  # how many random cells the random_arch_budget baseline retrains
    # After the search, build its front (adarec front: students at a sweep of budgets,
    # estimated, the ones that can be on the front retrained and measured) and make the
    # selected one the run's student/; report.json gains "front" and "selected". false:
    # one student, derived at the search's budget (or student.budget), as before.
    front: bool = True
    # The front's selection (adarec run/front --keep/--budget): the fastest student whose
    # validation NDCG@10 >= keep x the teacher's (null: no accuracy target), within
    # select_budget when given (a speed-up "10x", MACs "2.5M" or ms at batch 1 "1.5ms";
    # "" none; with keep null: the most accurate within it). Why 0.99: docs/results.md, "One
    # search, every budget".
    keep: float | None = 0.99
    select_budget: str = ""


@dataclass
class FrontConfig:
    """The front of one search (``adarec front``): students derived at a sweep of budgets."""

    budgets: int = 8  # speed-ups swept, geometric from 1.1x to the cheapest cell of the space
    # Epochs of the student's loop that each estimate runs from the inherited supernet
    # weights before its validation NDCG@10 is read (0: the inherited weights alone).
    estimate_epochs: int = 1
    # needed: with a keep, the cheapest candidate first, then the dearest, then the rest
    # cheapest first, none dearer than one that keeps (it could not be selected); with a
    # budget alone, every candidate within it, dearest first. all: every candidate that can
    # be on the front (the whole accuracy-latency curve, benchmarks/front.py).
    retrain: str = "needed"
    # The cap on needed's time: search plus front at most max_cost x (search + one
    # retraining), issue 27's bound; a candidate whose predicted retraining would pass it
    # is not retrained (the report says so). null: no cap. Why 2 and the order:
    # docs/results.md, "One search, every budget".
    max_cost: float | None = 2.0


@dataclass
class Config:
    seed: int = 42
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: bool = False  # mixed precision (CUDA only)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    student: StudentConfig = field(default_factory=StudentConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    bench: BenchConfig = field(default_factory=BenchConfig)
    run: RunConfig = field(default_factory=RunConfig)
    front: FrontConfig = field(default_factory=FrontConfig)
    sampled_softmax: SampledSoftmaxConfig = field(default_factory=SampledSoftmaxConfig)


STAGES = ("train", "search", "student")

# Keys that moved to another section ({old: new}). A saved run's config.yaml, a YAML file
# and --set may still give the old name: it is read as the new one, with a note in the log.
MOVED_KEYS: dict[str, str] = {
    f"search.{key}": f"distill.{key}"
    for key in (
        "gamma",
        "gamma_decay",
        "use_ce",
        "use_emb",
        "use_hid",
        "use_logit",
        "hid_distance",
        "layer_mapping",
        "kd_temperature",
    )
}

CHOICES: dict[str, tuple[str, ...]] = {
    "data.format": ("auto", "atomic", "csv", "ml2k", "retailrocket", "30music", "parquet"),
    "data.kcore": ("iterative", "single"),
    "data.synthetic_pattern": ("successor", "order"),
    "data.duplicates": ("drop", "keep"),
    "data.long_sequences": ("windows", "recent"),
    "model.name": ("nextitnet", "sasrec", "bert4rec", "pop"),
    "train.optimizer": ("adam", "adamw"),
    "search.optimizer": ("adam", "adamw"),
    "student.optimizer": ("adam", "adamw"),
    "search.ops": ("causal", "paper"),
    "search.mode": ("single_path", "full"),
    "search.optimization": ("single", "bilevel"),
    "distill.hid_distance": ("kl", "mse"),
    "distill.layer_mapping": ("emd", "skip", "last"),
    "search.cost": ("macs", "latency"),
    "search.cost_form": ("budget", "absolute", "paper"),
    "search.cost_gate": ("derived", "expected"),
    "student.init": ("inherit", "scratch"),
    "student.loss": ("ce", "kd"),
    "student.positions": ("absolute", "none"),
    "front.retrain": ("needed", "all"),
    "sampled_softmax.proposal": ("popularity", "uniform"),
}


@dataclass(frozen=True)
class Range:
    """The valid values of a numeric key (every element, for a list): ``low <= v <= high``,
    with ``>``/``<`` where the bound is open. Floats must also be finite."""

    low: float = -math.inf
    high: float = math.inf
    low_open: bool = False
    high_open: bool = False

    def __contains__(self, value: float) -> bool:
        if isinstance(value, float) and not math.isfinite(value):
            return False  # (math.isfinite would overflow on an int of 400 digits)
        above = value > self.low if self.low_open else value >= self.low
        below = value < self.high if self.high_open else value <= self.high
        return above and below

    def describe(self) -> str:
        low = "" if self.low == -math.inf else f"{self.low:g} {'<' if self.low_open else '<='} "
        high = "" if self.high == math.inf else f" {'<' if self.high_open else '<='} {self.high:g}"
        return f"{low}value{high}" if low or high else "a finite number"


AT_LEAST_0, AT_LEAST_1, AT_LEAST_2 = Range(0), Range(1), Range(2)
POSITIVE = Range(0, low_open=True)
FRACTION = Range(0, 1)  # [0, 1]
DROPOUT = Range(0, 1, high_open=True)  # 1 would zero every activation
ANY_NUMBER = Range()

# Every training loop section (train, search, student) has these.
LOOP_RANGES: dict[str, Range] = {
    "epochs": AT_LEAST_0,
    "batch_size": AT_LEAST_1,
    "lr": POSITIVE,
    "weight_decay": AT_LEAST_0,
    "clip_grad": AT_LEAST_0,  # 0 disables clipping
    "lr_step": AT_LEAST_0,  # 0: no decay
    "lr_decay": Range(0, 1, low_open=True),
    "patience": AT_LEAST_0,  # 0 disables early stopping
    "eval_every": AT_LEAST_1,
    "max_steps_per_epoch": AT_LEAST_0,  # 0: the whole epoch
}

# Every numeric key has a declared range (a test checks it): an out-of-range value is
# refused on load, before any data is read or any model is built.
RANGES: dict[str, Range] = {
    "seed": Range(0, 2**32 - 1),  # numpy's legacy seeding accepts no more
    "data.rating_threshold": ANY_NUMBER,
    "data.min_item_count": AT_LEAST_1,
    "data.min_user_count": AT_LEAST_1,
    "data.max_len": AT_LEAST_1,
    "data.min_window": AT_LEAST_2,  # a window needs an input item and a target
    "data.num_negatives": AT_LEAST_1,  # with none, every sampled metric would read 1.0
    "data.synthetic_users": AT_LEAST_1,
    "data.synthetic_items": AT_LEAST_2,
    "data.synthetic_length": Range(3),  # leave-one-out needs three items
    "model.hidden_size": AT_LEAST_1,
    "model.num_blocks": AT_LEAST_1,
    "model.dilations": AT_LEAST_1,
    "model.kernel_size": AT_LEAST_1,
    "model.num_heads": AT_LEAST_1,
    "model.inner_size": AT_LEAST_1,
    "model.dropout": DROPOUT,
    "model.distill_every": AT_LEAST_1,
    "model.mask_prob": Range(0, 1, low_open=True, high_open=True),
    "model.pretrain_epochs": AT_LEAST_0,
    **{f"{section}.{key}": r for section in STAGES for key, r in LOOP_RANGES.items()},
    "distill.gamma": FRACTION,
    "distill.gamma_decay": FRACTION,  # above 1, gamma would leave [0, 1]
    "distill.kd_temperature": POSITIVE,
    "search.cells": AT_LEAST_1,
    "search.nodes": AT_LEAST_1,
    "search.width": AT_LEAST_1,
    "search.dropout": DROPOUT,
    "search.alpha_lr": POSITIVE,
    "search.alpha_weight_decay": AT_LEAST_0,
    "search.alpha_init_std": AT_LEAST_0,
    "search.tau_initial": POSITIVE,
    "search.tau_decay": Range(0, 1, low_open=True),
    "search.tau_every": AT_LEAST_1,
    "search.beta": AT_LEAST_0,
    "search.warmup": Range(0, 1, high_open=True),  # some epochs must move alpha
    "search.entropy": AT_LEAST_0,
    "search.cost_under": AT_LEAST_0,
    "search.cost_over": AT_LEAST_0,
    "eval.ks": AT_LEAST_1,
    "eval.batch_size": AT_LEAST_1,
    "bench.batch_sizes": AT_LEAST_1,
    "bench.repeats": AT_LEAST_1,
    "bench.warmup": AT_LEAST_0,
    "bench.threads": AT_LEAST_0,  # 0: torch's default
    "run.random_cells": AT_LEAST_2,  # a mean and its spread need two
    "run.keep": Range(0, 1, low_open=True),  # a share of the teacher's validation NDCG@10
    "front.budgets": AT_LEAST_2,
    "front.estimate_epochs": AT_LEAST_0,
    "front.max_cost": AT_LEAST_1,  # the search and one retraining are always spent
    "sampled_softmax.min_items": AT_LEAST_0,
    "sampled_softmax.negatives": AT_LEAST_1,
    "sampled_softmax.power": AT_LEAST_0,  # 0: uniform over the items
}

DEVICE_PATTERN = re.compile(r"auto|cpu|cuda(:\d+)?")

# search.budget: the grammar is checked with the rest of the configuration, before any
# work starts; adarec.nas.budget turns a Budget into a cost model.
BUDGET_KINDS = ("speedup", "macs", "ms")
_MAC_SUFFIXES = {"": 1.0, "k": 1e3, "m": 1e6, "g": 1e9}
_BUDGET_RE = re.compile(
    r"^\s*(?P<value>[0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)\s*"
    r"(?P<unit>x|ms|[kmg]?(?:macs?)?)\s*$",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class Budget:
    """A user's budget: ``kind`` speedup (over the teacher), macs or ms (per history)."""

    kind: str
    value: float

    def __str__(self) -> str:
        if self.kind == "speedup":
            return f"{self.value:g}x"
        if self.kind == "ms":
            return f"{self.value:g}ms"
        return f"{self.value / 1e6:g}M MACs"


def parse_budget(text: str) -> Budget:
    """``"5x"`` (speed-up), ``"2.5M"`` / ``"2500000macs"`` / ``"3.1 MMACs"`` or ``"1.5ms"``."""
    match = _BUDGET_RE.match(str(text))
    if match is None:
        raise UserError(
            f"budget {text!r} is not understood; write a speed-up over the teacher "
            "('5x'), MACs per history ('2.5M', '2500000macs') or milliseconds per "
            "history at batch 1 ('1.5ms')"
        )
    value = float(match["value"])
    unit = match["unit"].lower()
    if value <= 0 or not math.isfinite(value):
        raise UserError(f"budget {text!r} must be positive")
    if unit == "x":
        if value <= 1:
            raise UserError(f"budget {text!r}: a speed-up over the teacher must exceed 1x")
        return Budget("speedup", value)
    if unit == "ms":
        return Budget("ms", value)
    prefix = unit[0] if unit and unit[0] in "kmg" and not unit.startswith("mac") else ""
    return Budget("macs", value * _MAC_SUFFIXES[prefix])


def _parse_yaml(text: str, key: str) -> Any:
    """A ``--set`` value read as YAML (so 1e-3, [1, 2] and null have their types)."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        raise UserError(f"config key '{key}': cannot read the value {text!r}") from None


def _coerce(value: Any, annotation: Any, key: str) -> Any:
    """Coerce a YAML or command-line value to the declared type, or raise UserError."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            return None
        return _coerce(value, args[0], key)
    if origin is list:
        (inner,) = typing.get_args(annotation)
        if isinstance(value, str):
            value = _parse_yaml(value, key) if value.strip().startswith("[") else value.split(",")
        if not isinstance(value, list):
            value = [value]
        return [_coerce(v, inner, key) for v in value]
    try:
        if annotation is bool:
            if isinstance(value, str):
                low = value.lower()
                if low in ("true", "1", "yes", "on"):
                    return True
                if low in ("false", "0", "no", "off"):
                    return False
                raise ValueError(value)
            if isinstance(value, bool | int):
                return bool(value)
            raise ValueError(value)
        if annotation is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            if isinstance(value, bool):
                raise ValueError(value)
            return int(value)
        if annotation is float:
            if isinstance(value, bool):
                raise ValueError(value)
            return float(value)
        if annotation is str:
            return str(value)
    except (TypeError, ValueError, OverflowError):
        name = getattr(annotation, "__name__", str(annotation))
        raise UserError(f"config key '{key}': expected {name}, got {value!r}") from None
    return value


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _unknown_key(key: str, valid: list[str]) -> UserError:
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    hint = f"; did you mean '{close[0]}'?" if close else f"; valid keys: {', '.join(valid)}"
    return UserError(f"unknown config key '{key}'{hint}")


def _leaf_types(cls: type = Config, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, annotation in _field_types(cls).items():
        if dataclasses.is_dataclass(annotation):
            out.update(_leaf_types(annotation, f"{prefix}{name}."))
        else:
            out[f"{prefix}{name}"] = annotation
    return out


def all_keys() -> list[str]:
    """Every dotted leaf key of the configuration."""
    return list(_leaf_types())


def _merge(obj: Any, updates: dict[str, Any], prefix: str = "") -> None:
    types_ = _field_types(type(obj))
    for name, value in updates.items():
        key = f"{prefix}{name}"
        if name not in types_:
            # Siblings first (a misspelt section or key of this section), then any key.
            siblings = [f"{prefix}{n}" for n in types_]
            close = difflib.get_close_matches(key, siblings, n=1, cutoff=0.5)
            raise _unknown_key(key, close or all_keys())
        annotation = types_[name]
        if dataclasses.is_dataclass(annotation):
            if not isinstance(value, dict):
                raise UserError(f"config key '{key}' is a section; give it a mapping")
            _merge(getattr(obj, name), value, f"{key}.")
        else:
            setattr(obj, name, _coerce(value, annotation, key))


def _dotted_to_nested(key: str, value: Any) -> dict[str, Any]:
    nested: dict[str, Any] = {}
    cursor = nested
    parts = key.split(".")
    for part in parts[:-1]:
        cursor = cursor.setdefault(part, {})
    cursor[parts[-1]] = value
    return nested


def numeric_keys() -> list[str]:
    """Every key whose value is a number or a list of numbers."""
    numeric = (int, float, int | None, float | None, list[int], list[float])
    return [key for key, annotation in _leaf_types().items() if annotation in numeric]


def _value(cfg: Config, key: str) -> Any:
    value: Any = cfg
    for part in key.split("."):
        value = getattr(value, part)
    return value


def validate(cfg: Config) -> None:
    """Check choices and ranges; raise UserError naming the first bad key."""
    for key, choices in CHOICES.items():
        value = _value(cfg, key)
        if value not in choices:
            raise UserError(
                f"config key '{key}' must be one of {', '.join(choices)}; got {value!r}"
            )
    for key, valid in RANGES.items():
        value = _value(cfg, key)
        values = value if isinstance(value, list) else [value]
        bad = [v for v in values if v is not None and v not in valid]
        if bad:
            raise UserError(f"config key '{key}' must satisfy {valid.describe()}; got {bad[0]!r}")
    for key in ("model.dilations", "eval.ks", "bench.batch_sizes"):
        if not _value(cfg, key):
            raise UserError(f"config key '{key}' must hold at least one value")
    if 10 not in cfg.eval.ks:
        # Early stopping, the front's selection, the logs and the report all read the
        # @10 metrics (NDCG@10, HR@10, MRR@10): other cut-offs are added to 10, not put
        # in its place.
        raise UserError(
            f"config key 'eval.ks' must include 10 (training selects and the report compares "
            f"on NDCG@10); got {cfg.eval.ks!r}, e.g. use {sorted({*cfg.eval.ks, 10})!r}"
        )
    backends = cfg.bench.backends
    if "eager" not in backends or any(b not in SERVING_BACKENDS for b in backends):
        raise UserError(
            "config key 'bench.backends' must list eager and, if wanted, torchscript and "
            f"onnx; got {backends!r}"
        )
    if not DEVICE_PATTERN.fullmatch(cfg.device):
        raise UserError(
            f"config key 'device' must be auto, cpu, cuda or cuda:N; got {cfg.device!r}"
        )
    if cfg.data.sep != "auto" and len(cfg.data.sep) != 1:
        raise UserError(
            f"config key 'data.sep' must be auto or one character; got {cfg.data.sep!r}"
        )
    if cfg.model.name in ("sasrec", "bert4rec") and cfg.model.hidden_size % cfg.model.num_heads:
        raise UserError(
            f"config: model.hidden_size ({cfg.model.hidden_size}) must be divisible by "
            f"model.num_heads ({cfg.model.num_heads})"
        )
    try:
        parse_budget(cfg.search.budget)
    except UserError as error:
        raise UserError(f"config key 'search.budget': {error}") from None
    if cfg.run.select_budget:
        try:
            parse_budget(cfg.run.select_budget)
        except UserError as error:
            raise UserError(f"config key 'run.select_budget': {error}") from None
    if cfg.student.budget:
        try:
            kind = parse_budget(cfg.student.budget).kind
        except UserError as error:
            raise UserError(f"config key 'student.budget': {error}") from None
        if kind != "speedup":
            raise UserError(
                "config key 'student.budget' takes a speed-up over the teacher ('15x'); "
                f"got {cfg.student.budget!r}"
            )
    if cfg.model.name != "pop" and cfg.model.distill_every > cfg.model.num_blocks:
        raise UserError(
            f"config key 'model.distill_every' must be at most model.num_blocks "
            f"({cfg.model.num_blocks}); got {cfg.model.distill_every}"
        )


def differences(old: Config, new: Config) -> dict[str, tuple[Any, Any]]:
    """``{key: (old value, new value)}`` for every leaf key whose value differs."""
    return {
        key: (_value(old, key), _value(new, key))
        for key in all_keys()
        if _value(old, key) != _value(new, key)
    }


def migrate(mapping: dict[str, Any], where: str, saved: bool = False) -> dict[str, Any]:
    """``mapping`` (a YAML file's or a saved run's configuration) with every moved key under
    its new name (``MOVED_KEYS``); the caller's mapping is not changed. One note in the
    log lists the keys moved (info for a saved run, which needs no change; a warning for
    a file the user can update). A key given under both names with two values is refused."""
    out = {name: dict(v) if isinstance(v, dict) else v for name, v in mapping.items()}
    moved = []
    for old, new in MOVED_KEYS.items():
        old_section, key = old.split(".")
        new_section, new_key = new.split(".")
        section = out.get(old_section)
        if not isinstance(section, dict) or key not in section:
            continue
        value = section.pop(key)
        target = out.setdefault(new_section, {})
        if not isinstance(target, dict):
            raise UserError(f"config key '{new_section}' is a section; give it a mapping")
        if new_key in target and target[new_key] != value:
            raise UserError(
                f"{where}: '{old}' ({value!r}) is the old name of '{new}' ({target[new_key]!r}), "
                f"and the two disagree; keep only '{new}'"
            )
        target.setdefault(new_key, value)
        moved.append(f"{old} -> {new}")
    if moved:
        note = "a run from before the keys moved" if saved else "rename them there"
        (log.info if saved else log.warning)(
            "%s: read moved config keys under their new names (%s); %s",
            where,
            ", ".join(moved),
            note,
        )
    return out


def load_config(
    path: str | Path | None = None,
    overrides: list[str] | None = None,
    base: dict[str, Any] | None = None,
) -> Config:
    """Build a Config from defaults, an optional saved dict, a YAML file and ``key=value`` items."""
    cfg = Config()
    if base:
        _merge(cfg, migrate(base, "saved configuration", saved=True))
    if path is not None:
        path = Path(path)
        text = read_text(path, "config file")
        try:
            loaded = yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            raise UserError(f"config file {path} is not valid YAML: {exc}") from None
        if not isinstance(loaded, dict):
            raise UserError(f"config file {path} must hold a mapping at the top level")
        _merge(cfg, migrate(loaded, f"config file {path}"))
    for item in overrides or []:
        if "=" not in item:
            raise UserError(f"--set expects key=value, got {item!r}")
        key, raw = item.split("=", 1)
        key = key.strip()
        if key in MOVED_KEYS:
            log.warning("--set %s: the key is now %s (read as that)", key, MOVED_KEYS[key])
            key = MOVED_KEYS[key]
        if key not in all_keys():
            raise _unknown_key(key, all_keys())
        value = _parse_yaml(raw, key) if raw.strip() else raw
        _merge(cfg, _dotted_to_nested(key, raw if isinstance(value, dict) else value))
    validate(cfg)
    return cfg


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def save_config(cfg: Config, path: str | Path) -> None:
    """Write the resolved configuration as YAML, atomically."""
    atomic_write_text(Path(path), yaml.safe_dump(to_dict(cfg), sort_keys=False))
