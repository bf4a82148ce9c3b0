"""Fuzzing the configuration layer: any ``key=value`` or YAML ends in a valid config or a
UserError, and every valid config survives a save and reload unchanged."""

from __future__ import annotations

from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adarec.config import Config, all_keys, load_config, save_config, validate
from adarec.errors import UserError

FUZZ = settings(
    max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
KEYS = st.one_of(st.sampled_from(all_keys()), st.text(max_size=12))
# Values a user might type, plus noise: numbers at and beyond every edge, YAML syntax.
VALUES = st.one_of(
    st.integers(-(2**70), 2**70).map(str),
    st.integers(-(10**400), 10**400).map(str),  # beyond what a float holds
    st.floats().map(repr),
    st.sampled_from(
        ["", "0", "-1", "1e-3", ".inf", "-.inf", ".nan", "null", "true", "[]", "[1,", "{a: 1}"]
    ),
    st.sampled_from(["[1, 2]", "[0]", "1,2", "cpu", "cuda:1", "tpu", "drop", "auto", "\t"]),
    st.text(max_size=10),
)
YAML_SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**40), 2**40), st.floats(), st.text(max_size=6)
)


def _load_or_refuse(path: str | Path | None, overrides: list[str]) -> Config | None:
    try:
        cfg = load_config(path, overrides)
    except UserError:
        return None
    validate(cfg)  # what load_config returns is valid
    return cfg


@FUZZ
@given(items=st.lists(st.tuples(KEYS, VALUES), max_size=4))
def test_random_overrides(tmp_path: Path, items: list[tuple[str, str]]):
    cfg = _load_or_refuse(None, [f"{key}={value}" for key, value in items])
    if cfg is not None:
        save_config(cfg, tmp_path / "config.yaml")
        assert load_config(tmp_path / "config.yaml") == cfg


@FUZZ
@given(
    document=st.dictionaries(
        st.sampled_from(["data", "model", "train", "search", "seed", "device", "nope"]),
        st.one_of(
            YAML_SCALARS,
            st.dictionaries(
                st.sampled_from(["max_len", "dropout", "lr", "epochs", "ks", "name", "x"]),
                st.one_of(YAML_SCALARS, st.lists(YAML_SCALARS, max_size=3)),
                max_size=3,
            ),
        ),
        max_size=4,
    )
)
def test_random_yaml_files(tmp_path: Path, document: dict):
    import yaml

    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(document))
    _load_or_refuse(path, [])


@FUZZ
@given(content=st.binary(max_size=200))
def test_random_bytes_as_config_file(tmp_path: Path, content: bytes):
    path = tmp_path / "c.yaml"
    path.write_bytes(content)
    _load_or_refuse(path, [])
