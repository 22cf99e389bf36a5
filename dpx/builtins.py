"""The providers that ship with the core, registered like any plugin's."""

from __future__ import annotations

from dpx.hookspecs import hookimpl
from dpx.plugins import Component


@hookimpl
def dpx_runners():
    return {
        "inprocess": Component("dpx.core.runners:InProcessRunner", "environments in the pipeline's own process"),
        "multiprocess": Component(
            "dpx.core.multiprocess:MultiprocessRunner", "environments in worker processes over authenticated sockets"
        ),
    }


@hookimpl
def dpx_storage_backends():
    return {
        "memmap": Component("dpx.core.storage:MemmapStorage", "memory-mapped NumPy partitions, crash-safe (default)"),
    }


@hookimpl
def dpx_stats_writers():
    return {
        "csv": Component("dpx.core.stats:CsvStatsWriter", "training curves in stats/curves.csv (no dependency)"),
    }
