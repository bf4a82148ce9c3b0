import pytest


@pytest.fixture(autouse=True)
def _one_engine_thread(monkeypatch):
    # The machine running the tests is shared: DuckDB takes one core, not all of them.
    monkeypatch.setenv("ADAREC_DATA_THREADS", "1")
