"""process_* per worker: one labelled series per live process, nothing for a gone one."""

from __future__ import annotations

import os
import subprocess
import sys

from sidecar.process_metrics import WorkerProcesses


def test_each_process_is_one_labelled_series_and_a_gone_one_is_skipped() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()  # reaped: its pid names no process now
    me = os.getpid()
    families = {f.name: f for f in WorkerProcesses(
        lambda: [("supervisor", me), ("0", child.pid), ("1", me)]).collect()}
    cpu = families["process_cpu_seconds"]
    assert cpu.type == "counter"
    assert [(s.name, s.labels) for s in cpu.samples] == [
        ("process_cpu_seconds_total", {"worker": "supervisor"}),
        ("process_cpu_seconds_total", {"worker": "1"})]
    assert {s.labels["worker"] for s in families["process_open_fds"].samples} == {
        "supervisor", "1"}
