"""Side-by-side comparison of strategies on one problem, and planning before running.

`default_strategies` gives each registered strategy sensible parameters for a sequence
(truncated and uniform at k = √T, binomial and online with √T slots, optimal at 5% of
full()'s bytes); `compare` runs them on the same problem, timing them interleaved against
full() in the same process; `plan` answers, without running anything, which exact
strategy fits a memory budget and what it will cost.
"""

from __future__ import annotations

import math
import re
import statistics
import time
from dataclasses import dataclass
from typing import Sequence, TypeVar

try:
    import resource  # Unix: user CPU time and page faults of this process
except ImportError:  # Windows
    resource = None

import numpy as np

from .cell import Cell, Params
from .checkpoint import binomial, optimal
from .model import Model, Result
from .online import online
from .strategies import Strategy, best_uniform, full, truncated, uniform

__all__ = ["default_strategies", "compare", "round_orders", "Row", "plan", "Plan", "parse_bytes",
           "format_bytes", "parse_count", "grad_error"]

T_ = TypeVar("T_")

#: optimal()'s default budget, as a fraction of full()'s peak bytes.
OPTIMAL_FRACTION = 0.05


def default_strategies(cell: Cell, n_steps: int, batch: int,
                       dtype: np.dtype | type = np.float64) -> dict[str, Strategy]:
    """One instance of every registered strategy, parametrised for this sequence.

    >>> import bptt_memory as bm
    >>> sorted(default_strategies(bm.lstm(4, 8), 100, 2)) == sorted(bm.STRATEGIES)
    True
    """
    k = max(1, round(math.sqrt(n_steps)))
    rb = cell.residual_bytes(batch, dtype)
    budget = max(rb, int(OPTIMAL_FRACTION * cell.recorded_bytes(n_steps, batch, dtype)))
    return {
        "full": full(),
        "truncated": truncated(k, k),
        "uniform": uniform(),
        "binomial": binomial(slots=k),
        "optimal": optimal(budget_bytes=budget),
        "online": online(slots=k),
    }


def grad_error(grads: Params, exact: Params) -> tuple[float, float]:
    """(relative error ‖g − g*‖ / ‖g*‖, cosine similarity) over all parameters at once."""
    g = np.concatenate([grads[k].ravel() for k in sorted(exact)]).astype(np.float64)
    e = np.concatenate([exact[k].ravel() for k in sorted(exact)]).astype(np.float64)
    ne, ng = float(np.linalg.norm(e)), float(np.linalg.norm(g))
    rel = float(np.linalg.norm(g - e)) / ne if ne > 0 else float(np.linalg.norm(g))
    cos = float(g @ e) / (ng * ne) if ng > 0 and ne > 0 else float("nan")
    return rel, cos


@dataclass
class Row:
    """One strategy's line in a comparison; ratios are against full() in the same run."""

    strategy: str
    peak_bytes: int
    traced_peak_bytes: int | None
    memory_fraction: float  # peak_bytes / full()'s
    forward_steps: int
    forward_factor: float  # forward_steps / T
    seconds: float  # median over repeats
    time_ratio: float  # median seconds / full()'s median seconds
    grad_rel_error: float
    grad_cosine: float
    loss: float
    # NOTE [cpu time] Wall time also counts the system's work of handing a run fresh
    # pages, and whether a run pays it depends on the allocator's state, not on the
    # strategy: glibc keeps freed memory or gives it back depending on what the process
    # allocated before. full(), which holds the most, is the one that pays: in one
    # process it took 18.5k page faults per timed run (≈ 8% of its time), in another
    # none. User-mode CPU time leaves that out; `page_faults` shows whether it happened.
    # None where the platform has no `resource` module.
    cpu_seconds: float | None = None  # median user-mode CPU seconds (all threads)
    cpu_ratio: float | None = None  # cpu_seconds / full()'s
    page_faults: int | None = None  # median minor page faults per run


def _usage() -> tuple[float, int]:
    """(user-mode CPU seconds, minor page faults) of this process so far."""
    if resource is None:
        return float("nan"), 0
    u = resource.getrusage(resource.RUSAGE_SELF)
    return u.ru_utime, u.ru_minflt


def round_orders(names: Sequence[T_], rounds: int) -> list[list[T_]]:
    """The order in which each of `rounds` timed rounds runs `names`.

    NOTE [round order] Timed rounds interleave the contenders so that drift and a
    neighbour's load hit all of them alike. Round r starts with name r (mod n), so nobody
    always runs first; and odd rounds run the next rotation backwards, so nobody always
    runs right after the same one: a run can pay for what its predecessor left in the
    caches and the allocator. (Rotation alone keeps every predecessor; in
    reports/speed_vs_torch, at toy sizes, whoever followed torch's checkpointed loop took
    about 0.3 ms more, found by swapping two contenders' places.) `compare` and the
    timing studies all use this order.

    >>> round_orders("abc", 4)
    [['a', 'b', 'c'], ['b', 'a', 'c'], ['c', 'a', 'b'], ['a', 'c', 'b']]
    """
    names = list(names)
    n = len(names)
    if n == 0:
        return [[] for _ in range(rounds)]
    rotated = [names[k % n:] + names[: k % n] for k in range(rounds + 1)]
    return [rotated[r + 1][::-1] if r % 2 else rotated[r] for r in range(rounds)]


def compare(model: Model, params: Params, xs: np.ndarray, ys: np.ndarray,
            strategies: dict[str, Strategy], *, mask: np.ndarray | None = None,
            repeats: int = 5, trace_memory: bool = True, progress=None) -> list[Row]:
    """Run every strategy on the same problem; time them interleaved, medians of `repeats`.

    full() is always run as the baseline, even when not listed. One untimed warm-up run
    per strategy; then `repeats` rounds, each running every strategy once in the order
    `round_orders` gives, so machine noise hits all of them alike. Each timed run's wall
    time, user-mode CPU time and page faults are measured (NOTE [cpu time]). With
    trace_memory, one extra run per strategy is made under tracemalloc (not timed).
    """
    names = list(strategies)
    runs = {"full": full(), **strategies}
    T = xs.shape[0]
    results: dict[str, Result] = {}
    times: dict[str, list[float]] = {n: [] for n in runs}
    cpu: dict[str, list[float]] = {n: [] for n in runs}
    faults: dict[str, list[int]] = {n: [] for n in runs}
    total = len(runs) * (repeats + 1 + trace_memory)
    bar = progress(total=total) if progress else None
    for name, s in runs.items():  # warm-up, and the result we report
        results[name] = s.run(model, params, xs, ys, mask=mask)
        bar and bar.update()
    for order in round_orders(runs, repeats):
        for name in order:
            s = runs[name]
            u0, f0 = _usage()
            t0 = time.perf_counter()
            s.run(model, params, xs, ys, mask=mask)
            times[name].append(time.perf_counter() - t0)
            u1, f1 = _usage()
            cpu[name].append(u1 - u0)
            faults[name].append(f1 - f0)
            bar and bar.update()
    traced: dict[str, int | None] = {n: None for n in runs}
    if trace_memory:
        for name, s in runs.items():
            traced[name] = s.run(model, params, xs, ys, mask=mask, trace_memory=True).stats.traced_peak_bytes
            bar and bar.update()
    bar and bar.close()
    exact = results["full"]
    base_t = statistics.median(times["full"])
    base_cpu = statistics.median(cpu["full"])
    measured = resource is not None
    rows = []
    for name in names:
        r = results[name]
        rel, cos = grad_error(r.grads, exact.grads)
        sec, cpu_sec = statistics.median(times[name]), statistics.median(cpu[name])
        rows.append(Row(
            strategy=runs[name].name, peak_bytes=r.stats.peak_bytes,
            traced_peak_bytes=traced[name],
            memory_fraction=r.stats.peak_bytes / exact.stats.peak_bytes,
            forward_steps=r.stats.forward_steps, forward_factor=r.stats.forward_steps / T,
            seconds=sec, time_ratio=sec / base_t, grad_rel_error=rel, grad_cosine=cos,
            loss=r.loss,
            cpu_seconds=cpu_sec if measured else None,
            cpu_ratio=cpu_sec / base_cpu if measured and base_cpu > 0 else None,
            page_faults=round(statistics.median(faults[name])) if measured else None,
        ))
    return rows


# --------------------------------------------------------------------------------------

_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9,
          "gb": 10**9, "t": 10**12, "tb": 10**12, "kib": 2**10, "mib": 2**20, "gib": 2**30,
          "tib": 2**40}


def parse_bytes(text: str | int) -> int:
    """'64MiB', '1.5 GB', '2e6', 1024 -> bytes.

    >>> parse_bytes("64MiB"), parse_bytes("1.5GB"), parse_bytes("512")
    (67108864, 1500000000, 512)
    """
    if isinstance(text, (int, np.integer)) and not isinstance(text, bool):
        return int(text)
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([A-Za-z]*)\s*", str(text))
    if not m or m.group(2).lower() not in _UNITS:
        raise ValueError(f"budget {text!r}: write a size like 64MiB, 1.5GB or 1048576")
    value = float(m.group(1)) * _UNITS[m.group(2).lower()]
    if value < 1:
        raise ValueError(f"budget {text!r}: must be at least 1 byte")
    return int(value)


def parse_count(text: str | int) -> int:
    """'100000', '1e5', '100k', '2M' -> an int >= 1.

    >>> parse_count("1e5"), parse_count("100k")
    (100000, 100000)
    """
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([kKmM]?)\s*", str(text))
    if not m:
        raise ValueError(f"{text!r}: write a count like 100000, 1e5 or 100k")
    value = float(m.group(1)) * {"": 1, "k": 10**3, "m": 10**6}[m.group(2).lower()]
    if value != int(value) or value < 1:
        raise ValueError(f"{text!r}: must be a whole number >= 1")
    return int(value)


def format_bytes(n: float) -> str:
    """Binary units, 3 significant figures.

    >>> format_bytes(67108864)
    '64.0 MiB'
    """
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


@dataclass
class Plan:
    """One option in a `plan` answer."""

    strategy: str
    exact: bool
    fits: bool
    peak_bytes: int
    forward_steps: int
    recompute_factor: float
    note: str


def plan(cell: Cell, n_steps: int, batch: int, budget_bytes: int,
         dtype: np.dtype | type = np.float64) -> list[Plan]:
    """What each strategy would cost for this sequence and budget, without running it.

    Returns the options best first: exact strategies that fit, by forward steps;
    then truncation (fits by choosing k2, but biased); then what does not fit. Every
    option is priced by its own `Strategy.cost` (closed forms, or optimal's planner), so
    any T answers in about a second, and optimal is planned wherever it can run.
    """
    T = n_steps
    sizes = cell.sizes(batch, dtype)
    sb, rb = sizes["state_bytes"], sizes["residual_bytes"]
    # (strategy, exact?, note): what to offer; each prices itself below
    offers: list[tuple[Strategy, bool, str]] = [(full(), True, "stores every step's residuals")]
    if budget_bytes >= rb:
        slots = (budget_bytes - rb) // sb
        if slots >= 1:
            offers.append((binomial(slots), True,
                           "states only; provably fewest recomputations for its slots"))
        u = best_uniform(T, budget_bytes, **sizes)
        if u is not None:
            offers.append((u, True, "Chen et al.'s segments"))
        offers.append((optimal(budget_bytes), True, "mixes stored states and residuals"))
        k2 = min(T, budget_bytes // rb)
        offers.append((truncated(k2, k2), k2 >= T,
                       "exact" if k2 >= T else f"biased: cuts every dependency longer than {k2} steps"))
    out = []
    for strategy, exact, note in offers:
        c = strategy.cost(T, **sizes)
        peak = c.peak_bytes or 0
        out.append(Plan(strategy.name, exact, peak <= budget_bytes, peak, c.forward_steps,
                        c.recompute_factor, note))
    out.sort(key=lambda p: (not p.fits, not p.exact, p.forward_steps, p.peak_bytes))
    return out
