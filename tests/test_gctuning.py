"""The collector settings the server applies at start (runtime/gctuning.py)."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import anyio
import pytest

from runtime.gctuning import THRESHOLDS, tune_gc


@pytest.fixture
def collector_restored() -> Iterator[None]:
    """This test process's own settings back afterwards, whatever a test did."""
    thresholds = gc.get_threshold()
    try:
        yield
    finally:
        gc.unfreeze()
        gc.set_threshold(*thresholds)


@pytest.mark.usefixtures("collector_restored")
def test_tuning_raises_the_thresholds_and_freezes_what_is_alive() -> None:
    gc.unfreeze()
    assert tune_gc({}) is True
    assert gc.get_threshold() == THRESHOLDS
    assert gc.get_freeze_count() > 0  # this process's modules, at least


@pytest.mark.usefixtures("collector_restored")
def test_retinue_gc_python_keeps_cpythons_settings() -> None:
    gc.unfreeze()
    before = gc.get_threshold()
    assert tune_gc({"RETINUE_GC": "python"}) is False
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0


@pytest.mark.usefixtures("collector_restored")
def test_a_wrong_setting_is_refused_with_the_values_it_takes() -> None:
    before = gc.get_threshold()
    with pytest.raises(ValueError, match="RETINUE_GC='off': use 'tuned'.*or 'python'"):
        tune_gc({"RETINUE_GC": "off"})
    assert gc.get_threshold() == before


@pytest.mark.usefixtures("collector_restored")
def test_the_server_tunes_the_collector_before_it_serves(monkeypatch: pytest.MonkeyPatch) -> None:
    import server

    seen: list[tuple[int, int, int]] = []

    def serve_nothing(*args: object, **kwargs: object) -> None:
        seen.append(gc.get_threshold())

    monkeypatch.delenv("RETINUE_GC", raising=False)
    monkeypatch.setattr(anyio, "run", serve_nothing)
    assert server.main(["--port", "0"]) == 0
    assert seen == [THRESHOLDS]


@pytest.mark.usefixtures("collector_restored")
def test_the_server_refuses_a_wrong_setting_before_starting(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import server

    monkeypatch.setenv("RETINUE_GC", "off")
    assert server.main(["--port", "0"]) == 2
    assert "RETINUE_GC='off'" in capsys.readouterr().err
