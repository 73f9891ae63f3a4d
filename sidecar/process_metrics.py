"""`process_*` for every process of `SIDECAR_WORKERS` > 1, on the supervisor's one scrape.

prometheus-client's `ProcessCollector` reads one process and its multiprocess mode has no
process metrics at all, so the supervisor reads `/proc/<pid>` of itself and of each live
worker and labels the series `worker` ("supervisor", "0", "1", ...). The label is the
worker's slot, not its pid: bounded by `SIDECAR_WORKERS` and stable across restarts (a pid
label would add series at every restart). `sum by (pod)` gives the pod's totals.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from functools import partial

from prometheus_client import ProcessCollector
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

Processes = Callable[[], Iterable[tuple[str, int]]]  # (worker label, pid) of live processes


class WorkerProcesses(Collector):
    def __init__(self, processes: Processes) -> None:
        self._processes = processes

    def collect(self) -> Iterable[Metric]:
        families: dict[str, Metric] = {}
        for worker, pid in self._processes():
            reader = ProcessCollector(pid=partial(int, pid), registry=None)
            for family in reader.collect():  # nothing for a process gone meanwhile
                merged = families.get(family.name)
                if merged is None:
                    merged = families[family.name] = Metric(
                        family.name, family.documentation, family.type)
                for sample in family.samples:
                    merged.add_sample(sample.name, {**sample.labels, "worker": worker},
                                      sample.value)
        return list(families.values())
