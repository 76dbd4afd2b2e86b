"""One timing harness for `compare` and every study: interleaved rounds after a warm-up,
on pinned BLAS threads, summarised by medians with their spread.

Contenders run once each untimed (the warm-up: caches, allocator, compiled kernels), then
in `rounds` rounds, each running every contender once in `round_orders`' order, so that
drift and a neighbour's load hit all of them alike. Each timed run records its wall time,
its user-mode CPU time and its minor page faults (NOTE [cpu time] in compare.py). Ratios
to a baseline are taken round by round, so their spread is the spread of like-for-like
comparisons, not of the machine's load over the whole measurement.
"""

from __future__ import annotations

import contextlib
import gc
import statistics
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping, Sequence, TypeVar

try:
    import resource  # Unix: user CPU time and page faults of this process
except ImportError:  # Windows
    resource = None  # type: ignore[assignment]

__all__ = ["Timing", "interleaved", "pinned_threads", "round_orders", "blas_threads_line",
           "DEFAULT_THREADS"]

T_ = TypeVar("T_")

#: BLAS threads every timing runs on unless told otherwise: one, so that a run on a busy
#: machine is not slowed by threads fighting for its cores, and timings compare across
#: machines with different core counts.
DEFAULT_THREADS = 1


@contextlib.contextmanager
def pinned_threads(threads: int | None = DEFAULT_THREADS) -> Iterator[int | None]:
    """Limit BLAS (and OpenMP) thread pools to `threads` inside the block; None leaves them.

    >>> with pinned_threads(1) as n:
    ...     n
    1
    """
    if threads is None:
        yield None
        return
    if threads < 1:
        raise ValueError(f"pinned_threads({threads}): needs at least 1 thread")
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=threads):
        yield threads


def blas_threads_line(threads: int | None) -> str:
    """How a timing's output says what it ran on."""
    if threads is None:
        return "BLAS threads not pinned"
    return f"BLAS pinned to {threads} thread{'s' * (threads != 1)} (threadpoolctl)"


def round_orders(names: Sequence[T_], rounds: int) -> list[list[T_]]:
    """The order in which each of `rounds` timed rounds runs `names`.

    NOTE [round order] Timed rounds interleave the contenders so that drift and a
    neighbour's load hit all of them alike. Round r starts with name r (mod n), so nobody
    always runs first; and odd rounds run the next rotation backwards, so nobody always
    runs right after the same one: a run can pay for what its predecessor left in the
    caches and the allocator (rotation alone keeps every predecessor).

    >>> round_orders("abc", 4)
    [['a', 'b', 'c'], ['b', 'a', 'c'], ['c', 'a', 'b'], ['a', 'c', 'b']]
    """
    names = list(names)
    n = len(names)
    if n == 0:
        return [[] for _ in range(rounds)]
    rotated = [names[k % n:] + names[: k % n] for k in range(rounds + 1)]
    return [rotated[r + 1][::-1] if r % 2 else rotated[r] for r in range(rounds)]


def _usage() -> tuple[float, int]:
    """(user-mode CPU seconds, minor page faults) of this process so far."""
    if resource is None:
        return float("nan"), 0
    u = resource.getrusage(resource.RUSAGE_SELF)
    return u.ru_utime, u.ru_minflt


def _system() -> float:
    """Kernel-mode CPU seconds of this process so far (NaN without `resource`)."""
    if resource is None:
        return float("nan")
    return resource.getrusage(resource.RUSAGE_SELF).ru_stime


@dataclass(frozen=True)
class Timing:
    """One contender's timed runs, in round order, and what its warm-up run returned."""

    wall: tuple[float, ...]  # seconds
    cpu: tuple[float, ...] | None  # user-mode CPU seconds; None without `resource`
    faults: tuple[int, ...] | None  # minor page faults
    value: Any = None  # the warm-up run's return value
    system: tuple[float, ...] | None = None  # kernel-mode CPU seconds

    @property
    def median(self) -> float:
        return statistics.median(self.wall)

    @property
    def spread(self) -> tuple[float, float]:
        """(fastest, slowest) timed run."""
        return min(self.wall), max(self.wall)

    @property
    def cpu_median(self) -> float | None:
        return None if self.cpu is None else statistics.median(self.cpu)

    @property
    def faults_median(self) -> int | None:
        return None if self.faults is None else round(statistics.median(self.faults))

    def ratios(self, baseline: Timing, cpu: bool = False) -> list[float]:
        """Round by round, this contender's time over the baseline's in the same round."""
        mine, theirs = (self.cpu, baseline.cpu) if cpu else (self.wall, baseline.wall)
        if mine is None or theirs is None:
            return []
        return [a / b if b > 0 else float("nan") for a, b in zip(mine, theirs)]


def interleaved(runners: Mapping[str, Callable[[], Any]], rounds: int, *, warmup: bool = True,
                threads: int | None = DEFAULT_THREADS, collect_garbage: bool = False,
                progress: Callable[[], None] | None = None) -> dict[str, Timing]:
    """Time every runner: one warm-up run each, then `rounds` interleaved rounds.

    Args:
        runners: name -> a function of no arguments that does one run.
        rounds: timed runs per contender (>= 1); medians are over these.
        warmup: run each runner once, untimed, first; its return value is kept in
            `Timing.value`.
        threads: BLAS threads for the whole measurement (`pinned_threads`); None leaves
            the process's own setting.
        collect_garbage: leave Python's cyclic garbage collector on during timed runs;
            by default it is collected before the rounds and off inside each run, as
            `timeit` does, so that no run pays for another's cycles.
        progress: called once after every run, warm-up included.

    >>> t = interleaved({"a": lambda: 1, "b": lambda: 2}, rounds=3)
    >>> len(t["a"].wall), t["b"].value
    (3, 2)
    """
    if rounds < 1:
        raise ValueError(f"interleaved(rounds={rounds}): needs at least one timed round")
    names = list(runners)
    values: dict[str, Any] = {n: None for n in names}
    wall: dict[str, list[float]] = {n: [] for n in names}
    cpu: dict[str, list[float]] = {n: [] for n in names}
    faults: dict[str, list[int]] = {n: [] for n in names}
    system: dict[str, list[float]] = {n: [] for n in names}
    with pinned_threads(threads):
        if warmup:
            for name in names:
                values[name] = runners[name]()
                if progress:
                    progress()
        gc.collect()
        for order in round_orders(names, rounds):
            for name in order:
                off = not collect_garbage and gc.isenabled()
                if off:
                    gc.disable()
                try:
                    u0, f0 = _usage()
                    s0 = _system()
                    t0 = time.perf_counter()
                    runners[name]()
                    wall[name].append(time.perf_counter() - t0)
                    u1, f1 = _usage()
                    system[name].append(_system() - s0)
                finally:
                    if off:
                        gc.enable()
                cpu[name].append(u1 - u0)
                faults[name].append(f1 - f0)
                if progress:
                    progress()
    measured = resource is not None
    return {n: Timing(tuple(wall[n]), tuple(cpu[n]) if measured else None,
                      tuple(faults[n]) if measured else None, values[n],
                      tuple(system[n]) if measured else None) for n in names}
