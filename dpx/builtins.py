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


@hookimpl
def dpx_samplers():
    return {
        "random": Component("dpx.core.sampling:RandomSampler", "independent uniform draws, seeded per sample id (default)"),
        "lhs": Component("dpx.core.sampling:LatinHypercubeSampler", "Latin hypercube of the run's size (scipy.stats.qmc)"),
        "sobol": Component("dpx.core.sampling:SobolSampler", "scrambled Sobol' sequence (scipy.stats.qmc)"),
        "halton": Component("dpx.core.sampling:HaltonSampler", "scrambled Halton sequence (scipy.stats.qmc)"),
        "grid": Component("dpx.core.sampling:GridSampler", "full factorial grid, cell centres (levels=...)"),
    }
