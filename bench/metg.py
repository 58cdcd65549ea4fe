"""Measurements, efficiency and METG (minimum effective task granularity).

granularity = wall time x cores / tasks; efficiency = the work rate a run
reached / the best work rate any run reached on this machine for that kernel
(the peak); METG(50%) is the granularity at which efficiency falls to 50%,
interpolated (in log granularity) between the last size at or above 50% and
the next smaller one.
"""

from __future__ import annotations

import itertools
import math
import statistics
from dataclasses import asdict, dataclass, field

__all__ = ["Measurement", "Metg", "efficiencies", "metg"]


@dataclass
class Measurement:
    """Repeated runs of one system on one graph set and kernel size."""

    system: str
    pattern: str
    kernel: str
    iterations: int
    width: int
    steps: int
    graphs: int
    workers: int
    ntasks: int
    seconds: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    @property
    def us_per_task(self) -> float:
        return self.median / self.ntasks * 1e6

    @property
    def tasks_per_second(self) -> float:
        return self.ntasks / self.median

    @property
    def granularity_us(self) -> float:
        return self.median * self.workers / self.ntasks * 1e6

    @property
    def work_rate(self) -> float:
        return self.iterations * self.ntasks / self.median

    def to_json(self) -> dict:
        d = asdict(self)
        d.update(median_s=self.median, min_s=min(self.seconds), max_s=max(self.seconds),
                 us_per_task=self.us_per_task, tasks_per_second=self.tasks_per_second,
                 granularity_us=self.granularity_us)
        return d


@dataclass
class Metg:
    """METG(50%) of one system: ``value_us`` with how it was found."""

    system: str
    value_us: float | None
    bound: str  # "interpolated", "at most" (never fell below 50%), "above" (never reached 50%)

    def describe(self) -> str:
        if self.value_us is None:
            return "n/a"
        prefix = {"interpolated": "", "at most": "<= ", "above": "> "}[self.bound]
        return f"{prefix}{self.value_us:.1f} us"


def efficiencies(measurements: list[Measurement]) -> dict[int, float]:
    """Efficiency of each measurement (keyed by id) against the peak work rate among them."""
    peak = max((m.work_rate for m in measurements if m.iterations), default=0.0)
    return {id(m): (m.work_rate / peak if peak else 0.0) for m in measurements}


def metg(system: str, measurements: list[Measurement], eff: dict[int, float], threshold=0.5) -> Metg:
    """METG of ``system`` from its measurements (any order) and their efficiencies."""
    points = sorted(((m.granularity_us, eff[id(m)]) for m in measurements
                     if m.system == system and m.iterations), reverse=True)
    if not points:
        return Metg(system, None, "above")
    if points[0][1] < threshold:
        return Metg(system, points[0][0], "above")
    for (g_hi, e_hi), (g_lo, e_lo) in itertools.pairwise(points):
        if e_hi >= threshold > e_lo:
            # interpolate log(granularity) linearly in efficiency
            frac = (e_hi - threshold) / (e_hi - e_lo)
            value = math.exp(math.log(g_hi) + frac * (math.log(g_lo) - math.log(g_hi)))
            return Metg(system, value, "interpolated")
    return Metg(system, points[-1][0], "at most")
