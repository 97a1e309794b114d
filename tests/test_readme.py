"""The README's examples run as written: the runtime example (on its embedded
PostgreSQL) and the virtual-time one, so the code a newcomer copies stays true."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path
from typing import Any

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"


def _example() -> str:
    """The first python block of the README's "Using the runtime" section."""
    section = README.read_text().split("## Using the runtime", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert match, "the README lost its runtime example"
    return match.group(1)


class _Payments:
    """The example's payment provider: records the idempotency key it was given."""

    def __init__(self) -> None:
        self.keys: list[str] = []

    async def charge(self, order_id: str, *, idempotency_key: str) -> str:
        self.keys.append(idempotency_key)
        return f"receipt for {order_id}"


async def test_the_readme_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # open_journal(None) keeps its server in ./.retinue/pg
    payments = _Payments()
    body = textwrap.indent(_example() + "\nreturn locals()\n", "    ")
    namespace: dict[str, Any] = {"payments": payments}
    exec(f"async def example():\n{body}", namespace)  # noqa: S102 - our own README
    outcome = await namespace["example"]()
    assert outcome["created"] and outcome["found"]
    assert outcome["receipt"] == "receipt for order-1"
    assert len(payments.keys) == 1 and payments.keys[0].endswith(":1")


async def test_the_readme_virtual_time_example_runs() -> None:
    """The 7-day expiry a newcomer copies: its asserts run as written."""
    section = README.read_text().split("### Testing with virtual time", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert match, "the README lost its virtual-time example"
    body = textwrap.indent(match.group(1) + "\nreturn locals()\n", "    ")
    namespace: dict[str, Any] = {}
    exec(f"async def example():\n{body}", namespace)  # noqa: S102 - our own README
    outcome = await namespace["example"]()
    assert outcome["done"].status == "completed" and outcome["log"]
