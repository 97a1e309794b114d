"""The garbage collector's settings for a process that runs the runtime.

CPython collects its youngest generation every 700 net allocations and, as the
heap grows, the whole heap again and again (once the objects that survived since
the last full collection are a quarter of it). A node that recovers 10,000
workflows allocates millions of objects within seconds (rows, histories, actors,
records), almost all of them alive until their runs end: the collector walks them
over and over and frees nothing. Measured (`python -m bench recovery --workflows
10000`, docs/performance.md): the recovering process spent 3.3 s of a 7.4 s
recovery in the collector, 2.7 s of it in 15 full collections; with the settings
below, 0.4 s and none.

Reference counting still frees everything that is not in a cycle at once; only
cyclic garbage waits longer (the youngest generation holds up to 50,000 objects).
Objects alive when `tune_gc` runs (modules, classes, the application's wiring) are
frozen: permanent, never walked again.

The server applies this at start. An application embedding the runtime decides for
its own process: call `tune_gc()` once its imports and wiring are done.
RETINUE_GC=python keeps CPython's own settings.
"""

from __future__ import annotations

import gc
import os
from collections.abc import Mapping
from typing import Final

__all__ = ["THRESHOLDS", "tune_gc"]

# gc.set_threshold: collect the youngest generation every 50,000 net allocations
# (CPython: 700), the middle one every 20 of those (10), the oldest every 10 of
# those (10) at most, and then only past CPython's own quarter-of-the-heap rule.
THRESHOLDS: Final = (50_000, 20, 10)

_SETTING: Final = "RETINUE_GC"


def tune_gc(env: Mapping[str, str] = os.environ) -> bool:
    """Freeze what is alive now and raise the collection thresholds (`THRESHOLDS`);
    True if applied, False if RETINUE_GC=python keeps CPython's settings. Raises
    ValueError on another value."""
    wanted = env.get(_SETTING, "").strip().lower()
    if wanted not in ("", "tuned", "python"):
        raise ValueError(f"{_SETTING}={wanted!r}: use 'tuned' (the default) or 'python' "
                         "(CPython's own collector settings)")
    if wanted == "python":
        return False
    gc.freeze()
    gc.set_threshold(*THRESHOLDS)
    return True
