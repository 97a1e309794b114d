"""Which event loop runs the server: uvloop when it is installed (`retinue[fast]`),
else asyncio's own.

uvloop's loop is written in C: the profile of an invite (docs/performance.md) spends
about a quarter of the server's CPU in asyncio's loop (scheduling callbacks, timers,
socket reads). RETINUE_EVENT_LOOP=asyncio keeps the standard loop even when uvloop
is installed (to compare the two, or to rule uvloop out).
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Mapping
from typing import Any

__all__ = ["event_loop", "run_options"]


def event_loop(env: Mapping[str, str] = os.environ) -> str:
    """"uvloop" or "asyncio": the loop `run_options` picks."""
    wanted = env.get("RETINUE_EVENT_LOOP", "").strip().lower()
    if wanted not in ("", "uvloop", "asyncio"):
        raise ValueError(f"RETINUE_EVENT_LOOP={wanted!r}: use 'uvloop', 'asyncio' or leave it "
                         "unset (uvloop when installed)")
    if wanted == "asyncio":
        return "asyncio"
    if importlib.util.find_spec("uvloop") is None:
        if wanted == "uvloop":
            raise ValueError("RETINUE_EVENT_LOOP=uvloop but uvloop is not installed: "
                             "pip install 'retinue[fast]'")
        return "asyncio"
    return "uvloop"


def run_options(env: Mapping[str, str] = os.environ) -> dict[str, Any]:
    """Keyword arguments for `anyio.run` that select the loop `event_loop` names."""
    return {"backend": "asyncio",
            "backend_options": {"use_uvloop": event_loop(env) == "uvloop"}}
