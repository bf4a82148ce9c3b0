"""adarec bench: every run gets its own label, so none overwrites another's results."""

from __future__ import annotations

from pathlib import Path

from adarec.serve.bench import _labels


def test_labels_are_unique_even_for_runs_in_folders_of_the_same_name():
    dirs = [Path("r/teacher"), Path("a/student"), Path("b/student"), Path("c/small")]
    names = ["sasrec", "student", "student", "student"]
    labels = _labels(names, dirs)
    assert labels == ["sasrec", "student:student#2", "student:student#3", "student:small"]
    assert len(set(labels)) == len(labels)
