"""Three `python server.py` nodes on one PostgreSQL, thousands of invites without keys:
every invite workflow runs once (`bench exactly_once`, smaller). Run with -s for the figures.
"""

from __future__ import annotations

import pytest

from bench.exactly_once import measure


@pytest.mark.soak
@pytest.mark.timeout(900)
async def test_three_nodes_run_every_keyless_invite_exactly_once(pg_dsn: str) -> None:
    figures = await measure(pg_dsn, invites=5000, nodes=3, concurrency=48, settle_within=300)
    print(f"\n{figures}")
    assert set(figures["answers"]) <= {"200", "202"}, figures["answers"]
    assert figures["customers_with_second_invite_run"] == 0, figures
    assert figures["customers_without_one_invited"] == 0, figures
    assert figures["invite_failed_events"] == 0, figures
    assert figures["duplicate_completed_steps"] == 0, figures
    assert figures["unsettled_workflows"] == 0, figures
    assert figures["server_exit_codes"] == [0, 0, 0], figures
