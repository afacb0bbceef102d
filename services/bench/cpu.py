"""Where a phase's CPU went: seconds used by each part of the stack (intake, router, notifier,
postgres, tansu and the bench itself), read from the kernel with psutil.

A part is a set of root processes and all their descendants (a PostgreSQL server's backends, the
uvicorn workers of a multi-process intake). A descendant that exited is still counted: its parent
reaped it, so its time is in the parent's `children_*` times. On two cores, 2,000 ms of CPU per
second is the ceiling, so `ceiling_per_s` is how many cases per second the measured cost allows.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import psutil

CORES = psutil.cpu_count() or 1


def part_of(process_name: str) -> str:
    """The part a named process belongs to: `router-2` is a router, `postgres` is postgres."""
    return process_name.rsplit("-", 1)[0] if process_name.rsplit("-", 1)[-1].isdigit() else process_name


def cpu_seconds(roots: Mapping[str, list[int]]) -> dict[str, float]:
    """CPU seconds (user + system) used so far by each part's processes and their descendants."""
    used: dict[str, float] = {}
    for part, pids in roots.items():
        total = 0.0
        for pid in pids:
            try:
                root = psutil.Process(pid)
                times = root.cpu_times()
                total += times.user + times.system + times.children_user + times.children_system
                for child in root.children(recursive=True):
                    with contextlib.suppress(psutil.Error):  # exited meanwhile: its parent counts it
                        child_times = child.cpu_times()
                        total += child_times.user + child_times.system
            except psutil.Error:
                continue
        used[part] = total
    return used


@dataclass(frozen=True)
class CpuCost:
    """CPU per case of one phase, by part."""

    ms_per_case: dict[str, float]
    cores_busy: float  # mean cores in use over the phase

    @property
    def total_ms_per_case(self) -> float:
        return round(sum(self.ms_per_case.values()), 3)

    def ceiling_per_s(self, cores: int) -> float | None:
        """Cases per second `cores` could carry at this cost, if nothing else limited them."""
        total = self.total_ms_per_case
        return round(cores * 1000 / total, 1) if total else None

    def to_dict(self, cores: int) -> dict[str, object]:
        return {
            "ms_per_case": self.ms_per_case,
            "total_ms_per_case": self.total_ms_per_case,
            "cores_busy": self.cores_busy,
            "cores": cores,
            "ceiling_cases_per_s": self.ceiling_per_s(cores),
        }


def cost_between(
    before: Mapping[str, float], after: Mapping[str, float], *, cases: int, seconds: float
) -> CpuCost | None:
    """The CPU each part spent per case between two `cpu_seconds` readings; None without cases."""
    if cases <= 0 or seconds <= 0:
        return None
    spent = {part: max(0.0, after.get(part, 0.0) - before.get(part, 0.0)) for part in after}
    return CpuCost(
        ms_per_case={part: round(1000 * s / cases, 3) for part, s in spent.items()},
        cores_busy=round(sum(spent.values()) / seconds, 2),
    )


Meter = Callable[[], dict[str, float]]
