"""Garbage-collector settings for a long-running proxy: short pauses, not fewer bytes.

Measured on a Redis-only hit at c64 (bench/results.md): with CPython's defaults the
collector's full passes over every object the process holds (aiohttp, redis-py, the rules,
prometheus-client...) stall the event loop for tens of milliseconds, and the p99 latency was
3.6x the p50. Two standard measures:

- `gc.freeze()` once the process is serving: what startup built lives as long as the
  process, so the collector stops walking it (the permanent generation);
- a larger first-generation threshold: a hit leaves little cyclic garbage, so collecting
  every 700 container allocations (the default) mostly walks live objects.

Reference counting still frees everything without cycles at once; only cyclic garbage
waits longer (bounded by the threshold, a few MiB).
"""

from __future__ import annotations

import gc

GEN0_THRESHOLD = 20_000  # CPython's default is 700
OLDER_THRESHOLDS = (20, 20)  # default (10, 10): older generations are swept less often


def tune() -> None:
    """Call once the listeners are up (startup's objects are then permanent)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(GEN0_THRESHOLD, *OLDER_THRESHOLDS)
