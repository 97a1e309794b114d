"""The README's performance table is made from bench/results/: it names the newest
result of each benchmark, and a table typed by hand or left behind fails here."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import msgspec
import pytest

from bench import report
from bench.common import save

ROOT = Path(__file__).resolve().parent.parent


def test_the_readme_table_is_the_one_the_newest_results_make() -> None:
    readme = (ROOT / "README.md").read_text()
    assert report.readme_table(readme) == report.render(report.latest(report.load())), (
        "README.md's performance table disagrees with bench/results/: run "
        "`python -m bench.report --write` (or `make bench`)"
    )


def _workflow(wf_per_s: float, measured_at: str | None) -> dict[str, Any]:
    result: dict[str, Any] = {
        "bench": "workflow", "steps_per_workflow": 4, "journal_appends_per_workflow": 6.0,
        "runs": [{"concurrency": 64, "workflows_per_s": wf_per_s, "p50_ms": 20.0,
                  "p99_ms": 35.5}],
        "machine": {"revision": "abc1234", "cpus": 2, "loadavg_1m_at_start": 0.5},
    }
    if measured_at is not None:
        result["measured_at"] = measured_at
    return result


def _file(path: Path, result: dict[str, Any]) -> None:
    path.write_bytes(msgspec.json.encode(result))


def test_the_newest_stamped_result_wins(tmp_path: Path) -> None:
    (tmp_path / "old.jsonl").write_text(
        "\n".join(msgspec.json.encode(_workflow(n, None)).decode() for n in (1, 2)) + "\n")
    _file(tmp_path / "b.json", _workflow(3100, "2026-12-01T00:10:00+00:00"))
    _file(tmp_path / "a.json", _workflow(900, "2026-11-30T23:00:00+00:00"))
    newest = report.latest(report.load(tmp_path))
    assert newest["workflow"]["runs"][0]["workflows_per_s"] == 3100
    assert newest["workflow"]["_file"] == "b.json"
    table = report.render(newest)
    assert "**3,100 wf/s**" in table and "`abc1234` 2026-12-01 00:10Z" in table
    assert "| `floor` (`python -m bench floor`) | not measured yet |" in table


def test_an_unstamped_result_is_older_than_any_stamped_one(tmp_path: Path) -> None:
    (tmp_path / "z-old.jsonl").write_text(msgspec.json.encode(_workflow(5, None)).decode())
    _file(tmp_path / "a.json", _workflow(7, "2020-01-01T00:00:00+00:00"))
    assert report.latest(report.load(tmp_path))["workflow"]["runs"][0]["workflows_per_s"] == 7


def test_save_stamps_the_result_with_its_time_revision_and_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("sys.argv", ["bench/__main__.py", "workflow", "--workflows", "10"])
    stamped = save(_workflow(42, None), tmp_path)
    (path,) = tmp_path.iterdir()
    assert path.name.startswith("workflow-") and path.name.endswith("-abc1234.json")
    assert msgspec.json.decode(path.read_bytes()) == stamped
    assert stamped["command"] == "python -m bench workflow --workflows 10"
    assert report.latest(report.load(tmp_path))["workflow"]["measured_at"] == stamped["measured_at"]


def test_write_replaces_only_the_table_and_check_sees_a_stale_one(tmp_path: Path) -> None:
    readme = f"# Title\n\nbefore\n{report.BEGIN}\n| old |\n{report.END}\nafter\n"
    table = report.render({})
    written = report.with_table(readme, table)
    assert written.startswith("# Title\n\nbefore\n") and written.endswith(f"{report.END}\nafter\n")
    assert report.readme_table(written) == table
    assert report.readme_table(readme) != table
    with pytest.raises(ValueError, match="no performance table markers"):
        report.readme_table("# no table here\n")


def test_every_benchmark_of_the_table_renders_from_its_committed_result() -> None:
    newest = report.latest(report.load())
    for name in report.TARGETS:
        if name in newest:
            assert report.FIGURES[name](newest[name])


@pytest.mark.parametrize(("args", "status"), [(["--help"], 0), (["flor"], 2)])
def test_bench_with_an_argument_that_names_no_benchmark_runs_none(
    args: list[str], status: int
) -> None:
    """`python -m bench --help` (or a typo) says what there is; it once ran them all."""
    done = subprocess.run([sys.executable, "-m", "bench", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == status
    assert "usage: python -m bench" in done.stdout + done.stderr
    assert '"bench"' not in done.stdout  # no benchmark's JSON line
