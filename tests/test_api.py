"""The Python API: the README's example runs as written, and a teacher of the user's own
(defined here, not one of adarec's) is distilled end to end."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from adarec import api
from adarec.errors import UserError
from adarec.models.base import SeqOutput
from tests.conftest import TINY, tiny_config

REPO = Path(__file__).resolve().parents[1]


def readme_python_blocks() -> list[str]:
    """The Python code blocks of the README's "Python API" section, in order."""
    readme = (REPO / "README.md").read_text()
    section = readme.split("\n## Python API\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, flags=re.DOTALL)


def test_readme_python_api_example_runs(tmp_path, monkeypatch, capsys):
    blocks = readme_python_blocks()
    assert len(blocks) == 2
    real_config = api.config

    def tiny(file=None, overrides=(), run=None):
        # The README's settings, then the tiny ones: the example runs as written, in seconds.
        return real_config(REPO / file if file else None, [*overrides, *TINY], run)

    monkeypatch.setattr(api, "config", tiny)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "readme"}
    for block in blocks:
        exec(compile(block, "README.md", "exec"), namespace)
    for run in ("teacher", "search", "student"):
        assert (tmp_path / "runs" / "py" / run / "metrics.json").is_file()
    assert (tmp_path / "runs" / "py" / "student" / "export" / "onnx" / "model.onnx").is_file()
    assert (tmp_path / "runs" / "conv" / "student" / "metrics.json").is_file()
    assert "test NDCG@10" in capsys.readouterr().out


class PrefixMeanTeacher(nn.Module):
    """A teacher adarec does not ship: residual MLP layers over the mean of the history's
    item embeddings so far (a prefix mean, so causal)."""

    def __init__(self, num_items: int, hidden_size: int = 24, layers: int = 3):
        super().__init__()
        self.hidden_size = hidden_size
        self.embed = nn.Embedding(num_items + 1, hidden_size, padding_idx=0)
        self.layers = nn.ModuleList(nn.Linear(hidden_size, hidden_size) for _ in range(layers))
        self.out = nn.Linear(hidden_size, num_items + 1)

    def forward(self, items: torch.Tensor) -> SeqOutput:
        embedding = self.embed(items)
        seen = (items > 0).cumsum(1).clamp_min(1).unsqueeze(-1)
        x = embedding.cumsum(1) / seen
        hidden = []
        for layer in self.layers:
            x = x + torch.tanh(layer(x))
            hidden.append(x)
        return SeqOutput(embedding, hidden, x)

    def logits(self, output: torch.Tensor) -> torch.Tensor:
        return self.out(output)

    def full_sort_predict(self, items: torch.Tensor) -> torch.Tensor:
        return self.logits(self.forward(items).output[:, -1])


def train_briefly(teacher: nn.Module, data: api.StageData, steps: int = 5) -> None:
    """A few next-item steps on the API's training windows."""
    optimizer = torch.optim.Adam(teacher.parameters(), lr=1e-2)
    for step, window in enumerate(DataLoader(data.train, batch_size=32, shuffle=True)):
        if step == steps:
            break
        logits = teacher.logits(teacher(window[:, :-1]).output)
        loss = F.cross_entropy(logits.flatten(0, 1), window[:, 1:].flatten(), ignore_index=0)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def test_a_teacher_of_ones_own_is_distilled_end_to_end(tmp_path):
    cfg = tiny_config("search.epochs=1", "student.epochs=1")
    data = api.load_data(cfg)
    torch.manual_seed(0)
    teacher = PrefixMeanTeacher(data.data.num_items)
    train_briefly(teacher, data)

    searched = api.search(cfg, tmp_path / "search", teacher=teacher)
    assert searched["architecture"]["cells"] == cfg.search.cells
    recorded = json.loads((tmp_path / "search" / "teacher.json").read_text())
    assert recorded == {"run_dir": None, "module": "PrefixMeanTeacher"}
    student = api.retrain(cfg, tmp_path / "student", search=tmp_path / "search")
    assert api.evaluate(tmp_path / "student")["test"] == student["test"]

    # Distilling again while retraining needs the module, which the search cannot reload.
    cfg.student.loss = "kd"
    with pytest.raises(UserError, match="needs that module again"):
        api.retrain(cfg, tmp_path / "kd", search=tmp_path / "search")
    kd = api.retrain(cfg, tmp_path / "kd-again", search=tmp_path / "search", teacher=teacher)
    assert 0 <= kd["test"]["full"]["NDCG@10"] <= 1


def test_a_module_that_is_no_teacher_is_refused(tmp_path):
    cfg = tiny_config("search.epochs=1")
    with pytest.raises(UserError, match="lacks hidden_size, logits, full_sort_predict"):
        api.search(cfg, tmp_path / "search", teacher=nn.Linear(4, 4))


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: api.config(overrides="train.epochs=1"), 'overrides must be a list of "key=value"'),
        (lambda: api.config(overrides=[1]), 'overrides must hold "key=value" strings; got int'),
        (lambda: api.config(file=3), "file must be a path"),
        (lambda: api.config(run=b"runs/x"), "run must be a path"),
        (lambda: api.load_data({"data": {}}), "cfg must be a Config"),
        (lambda: api.train_teacher(tiny_config(), None), "out must be a path"),
        (lambda: api.train_teacher(tiny_config(), "", resume=True), "out must name a path"),
        (lambda: api.train_teacher(tiny_config(), Path(" ")), "out must name a path"),
        (lambda: api.train_teacher(tiny_config(), "x", resume="yes"), "resume must be True"),
        (lambda: api.search(tiny_config(), "x", teacher=3), "teacher must be a teacher run"),
        (lambda: api.search(tiny_config(), "x", teacher="t", quiet=0), "quiet must be True"),
        (lambda: api.retrain(tiny_config(), "x", search=None), "search must be a path"),
        (lambda: api.retrain(tiny_config(), "x", "s", teacher="t"), "teacher must be a torch"),
        (lambda: api.evaluate(["runs/x"]), "run_dir must be a path"),
        (lambda: api.evaluate("runs/x", exclude_seen=None), "exclude_seen must be True"),
        (lambda: api.export("runs/x", fmt=None), "fmt must be a string"),
        (lambda: api.export("runs/x", out=5), "out must be a path"),
        (lambda: api.export("runs/x", device="meta"), "unknown device 'meta'"),
        (lambda: api.load_teacher("runs/x", device=0), "device must be a string"),
        (lambda: api.predictor("runs/x", backend=1), "backend must be a string"),
        (lambda: api.predictor(None), "path must be a path"),
    ],
)
def test_wrong_argument_types_are_user_errors_naming_the_argument(
    call, message, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)  # a call that went through would write here, not in the repo
    with pytest.raises(UserError, match=re.escape(message)):
        call()
    assert list(tmp_path.iterdir()) == []


def test_retraining_with_kd_checks_the_teacher_module(tmp_path):
    cfg = tiny_config("search.epochs=1", "student.epochs=1", "student.loss=kd")
    data = api.load_data(cfg)
    teacher = PrefixMeanTeacher(data.data.num_items)
    api.search(cfg, tmp_path / "search", teacher=teacher)

    class LooksAhead(PrefixMeanTeacher):
        def forward(self, items):
            return super().forward(torch.roll(items, -1, dims=1))

    with pytest.raises(UserError, match="teacher is not causal"):
        api.retrain(cfg, tmp_path / "kd", search=tmp_path / "search", teacher=LooksAhead(30))
