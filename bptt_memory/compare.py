"""Side-by-side comparison of strategies on one problem, and planning before running.

`default_strategies` gives each registered strategy sensible parameters for a sequence
(truncated and uniform at k = √T, binomial and online with √T slots, optimal at 5% of
full()'s bytes); `compare` runs them on the same problem, timing them interleaved against
full() in the same process; `plan` answers, without running anything, which exact
strategy fits a memory budget and what it will cost.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .cell import Cell, Params
from .checkpoint import binomial, optimal
from .model import Model, Result
from .online import online
from .strategies import Strategy, best_uniform, full, truncated, uniform
from .timing import DEFAULT_THREADS, interleaved, round_orders

__all__ = ["default_strategies", "compare", "round_orders", "Row", "plan", "Plan", "parse_bytes",
           "format_bytes", "parse_count", "grad_error", "memory_needed", "memory_available",
           "check_memory", "NotEnoughMemory"]

#: optimal()'s default budget, as a fraction of full()'s peak bytes.
OPTIMAL_FRACTION = 0.05


def default_strategies(cell: Cell, n_steps: int, batch: int,
                       dtype: np.dtype | type = np.float64) -> dict[str, Strategy]:
    """One instance of every registered strategy, parametrised for this sequence:
    truncated and uniform at k = √T (uniform's segment named, as `uniform()` would choose
    it), binomial with √T slots, optimal at 5% of full()'s bytes.

    >>> import bptt_memory as bm
    >>> s = default_strategies(bm.lstm(4, 8), 100, 2)
    >>> sorted(s) == sorted(bm.STRATEGIES), s["uniform"].name
    (True, 'uniform(every=10)')
    """
    k = max(1, round(math.sqrt(n_steps)))
    rb = cell.residual_bytes(batch, dtype)
    budget = max(rb, int(OPTIMAL_FRACTION * cell.recorded_bytes(n_steps, batch, dtype)))
    return {
        "full": full(),
        "truncated": truncated(k, k),
        "uniform": uniform(every=uniform().segment(n_steps)),
        "binomial": binomial(slots=k),
        "optimal": optimal(budget_bytes=budget),
        "online": online(slots=k),
    }


def grad_error(grads: Params, exact: Params, keys: Any = None) -> tuple[float, float]:
    """(relative error ‖g − g*‖ / ‖g*‖, cosine similarity) over the parameters `keys`
    (all of `exact`'s by default) taken as one vector: the one gradient-error metric of
    `compare` and the studies.

    >>> g = {"a": np.array([3.0, 4.0])}
    >>> grad_error({"a": np.array([3.0, 0.0])}, g)
    (0.8, 0.6)
    """
    names = sorted(exact) if keys is None else sorted(keys)
    g = np.concatenate([np.asarray(grads[k]).ravel() for k in names]).astype(np.float64)
    e = np.concatenate([np.asarray(exact[k]).ravel() for k in names]).astype(np.float64)
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
    # allocated before. full(), which holds the most, is the one that pays it most often.
    # User-mode CPU time leaves that out; `page_faults` shows whether it happened.
    # None where the platform has no `resource` module.
    cpu_seconds: float | None = None  # median user-mode CPU seconds (all threads)
    cpu_ratio: float | None = None  # cpu_seconds / full()'s
    page_faults: int | None = None  # median minor page faults per run
    # the spread of time_ratio: the lowest and highest of the per-round ratios (each
    # round's time over full()'s in the same round)
    time_ratio_low: float | None = None
    time_ratio_high: float | None = None


def compare(model: Model, params: Params, xs: np.ndarray, ys: np.ndarray,
            strategies: dict[str, Strategy], *, mask: np.ndarray | None = None,
            repeats: int = 5, trace_memory: bool = True, threads: int | None = DEFAULT_THREADS,
            progress: Callable[..., Any] | None = None) -> list[Row]:
    """Run every strategy on the same problem; time them interleaved, medians of `repeats`.

    full() is always run as the baseline, even when not listed. Timing is
    `bptt_memory.timing.interleaved`: one untimed warm-up run per strategy (whose result
    is reported), then `repeats` rounds in `round_orders`' order, on `threads` BLAS threads
    (one by default; None leaves the process's setting). With trace_memory, one extra run
    per strategy is made under tracemalloc (not timed). `progress(total=n)` may return a
    bar with `update()` and `close()`.
    """
    names = list(strategies)
    runs = {"full": full(), **strategies}
    T = xs.shape[0]
    total = len(runs) * (repeats + 1 + trace_memory)
    bar = progress(total=total) if progress else None

    def runner(s: Strategy) -> Callable[[], Result]:
        return lambda: s.run(model, params, xs, ys, mask=mask)

    timings = interleaved({n: runner(s) for n, s in runs.items()}, repeats, threads=threads,
                          progress=bar.update if bar else None)
    traced: dict[str, int | None] = {n: None for n in runs}
    if trace_memory:
        for name, s in runs.items():
            stats = s.run(model, params, xs, ys, mask=mask, trace_memory=True).stats
            traced[name] = stats.traced_peak_bytes
            if bar:
                bar.update()
    if bar:
        bar.close()
    base = timings["full"]
    exact: Result = base.value
    rows = []
    for name in names:
        t = timings[name]
        r: Result = t.value
        rel, cos = grad_error(r.grads, exact.grads)
        cpu_sec, base_cpu = t.cpu_median, base.cpu_median
        ratios = t.ratios(base)
        rows.append(Row(
            strategy=runs[name].name, peak_bytes=r.stats.peak_bytes,
            traced_peak_bytes=traced[name],
            memory_fraction=r.stats.peak_bytes / exact.stats.peak_bytes,
            forward_steps=r.stats.forward_steps, forward_factor=r.stats.forward_steps / T,
            seconds=t.median, time_ratio=t.median / base.median, grad_rel_error=rel,
            grad_cosine=cos, loss=r.loss,
            cpu_seconds=cpu_sec,
            cpu_ratio=cpu_sec / base_cpu if cpu_sec is not None and base_cpu else None,
            page_faults=t.faults_median,
            time_ratio_low=min(ratios), time_ratio_high=max(ratios),
        ))
    return rows


# -- will it fit? -------------------------------------------------------------------------


class NotEnoughMemory(RuntimeError):
    """What a run needs does not fit in the memory this process may use."""


def memory_needed(cell: Cell, n_steps: int, batch: int, n_in: int, n_out: int,
                  dtype: np.dtype | type = np.float64) -> int:
    """Bytes `compare` needs at least: full()'s exact peak (it is always the baseline)
    and the problem's inputs and targets; the parameters, their gradients and one step's
    temporaries are small beside them and left to the margin of `check_memory`.

    >>> import bptt_memory as bm
    >>> cell = bm.lstm(32, 128)
    >>> memory_needed(cell, 1000, 32, 32, 10) - cell.recorded_bytes(1000, 32, "float64")
    10752000
    """
    problem = n_steps * batch * (n_in + n_out) * np.dtype(dtype).itemsize
    return cell.recorded_bytes(n_steps, batch, dtype) + problem


def _cgroup_room() -> int | None:
    """What the cgroup (v2) this process runs in may still allocate, if it is limited."""
    base = Path("/sys/fs/cgroup")
    try:
        limit = (base / "memory.max").read_text().strip()
        if limit == "max":
            return None
        return int(limit) - int((base / "memory.current").read_text())
    except (OSError, ValueError):
        return None


def memory_available() -> tuple[int | None, str]:
    """(bytes this process may still allocate, what limits it): the smallest of the
    system's available memory, the address-space rlimit less what the process has
    mapped, and its cgroup's room. (None, ...) when none of them can be read."""
    found: list[tuple[int, str]] = []
    try:
        import psutil

        found.append((int(psutil.virtual_memory().available), "available memory"))
        vms = int(psutil.Process(os.getpid()).memory_info().vms)
    except ImportError:
        vms = 0
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_AS)
        if soft != resource.RLIM_INFINITY:
            found.append((soft - vms, f"the address-space limit (ulimit -v, {format_bytes(soft)})"))
    except ImportError:  # Windows
        pass
    room = _cgroup_room()
    if room is not None:
        found.append((room, "the cgroup's memory limit"))
    if not found:
        return None, "unknown"
    return min(found)


#: check_memory asks for this much more than `memory_needed`: a run also holds its
#: gradients, the executor's chunk buffers and a step's temporaries, and the allocator
#: rounds up (tracemalloc sees about 5% more than full()'s exact peak at the defaults)
MEMORY_MARGIN = 1.25


def check_memory(cell: Cell, n_steps: int, batch: int, n_in: int, n_out: int,
                 dtype: np.dtype | type = np.float64) -> None:
    """Raise NotEnoughMemory, saying what to change, when `compare` cannot fit."""
    need = int(MEMORY_MARGIN * memory_needed(cell, n_steps, batch, n_in, n_out, dtype))
    room, limit = memory_available()
    if room is None or need <= room:
        return
    per_step = int(MEMORY_MARGIN * memory_needed(cell, 2, batch, n_in, n_out, dtype)
                   - MEMORY_MARGIN * memory_needed(cell, 1, batch, n_in, n_out, dtype))
    fits = max(1, room // per_step) if room > 0 else 0
    raise NotEnoughMemory(
        f"T={n_steps} needs about {format_bytes(need)}: full(), the baseline every "
        f"strategy is compared with, stores every step; {limit} leaves "
        f"{format_bytes(max(room, 0))}. Use --steps {fits} or fewer (or a smaller "
        f"--batch/--hidden), or `bptt-memory plan` to price a long sequence without "
        f"running it.")


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
                       "exact" if k2 >= T
                       else f"biased: cuts every dependency longer than {k2} steps"))
    out = []
    for strategy, exact, note in offers:
        c = strategy.cost(T, **sizes)
        peak = c.peak_bytes or 0
        out.append(Plan(strategy.name, exact, peak <= budget_bytes, peak, c.forward_steps,
                        c.recompute_factor, note))
    out.sort(key=lambda p: (not p.fits, not p.exact, p.forward_steps, p.peak_bytes))
    return out
