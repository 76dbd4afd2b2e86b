"""Memory against sequence length: how the bytes kept for the backward pass grow with T.

Every strategy runs on every cell for T from 10 to 10⁵ on a tiny problem (B = 4, H = 16),
and the peak of what it holds for the backward pass is read three ways: exactly (the
executor's count of the arrays it keeps, `Stats.peak_bytes`), by tracemalloc
(`Stats.traced_peak_bytes`, which also sees gradients, temporaries and Python objects),
and by the kernel (peak RSS of a fresh process, `resource.getrusage`). Where a run would
take too long the peak is *predicted* by `simulate` from the schedule alone, and labelled
so. Fitted log-log slopes show the orders: O(T) for full(), O(k2) = O(1) for
truncated(k, k), O(√T) for uniform(), O(slots) = O(1) for binomial(slots), at most the
budget for optimal(budget_bytes). A second part samples RSS over time in fresh processes
at a size where residuals dominate, to show what recomputation looks like from outside.

References: Williams & Peng 1990 (TBPTT); Chen et al. 2016, "Training Deep Nets with
Sublinear Memory Cost" (√T checkpoints); Griewank & Walther 2000, "Algorithm 799:
Revolve" (binomial); Gruslys et al. 2016, "Memory-Efficient Backpropagation Through
Time" (BPTT-MSM, optimal).

Run: ``bptt-memory study memory_scaling [--small] [--out DIR]``.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Callable, Sequence

import matplotlib.pyplot as plt
import numpy as np
from memory_profiler import memory_usage

import bptt_memory as bm
from bptt_memory.compare import format_bytes
from bptt_memory.tasks import random_problem

from . import _common

NAME = "memory_scaling"
COLORS = _common.STRATEGY_COLORS  # one palette for the strategies in every study
#: The order each family's peak should grow in, as a log-log slope, and how to say it.
EXPECTED = {"full": (1.0, "O(T)"), "truncated": (0.0, "O(k2) = O(1)"),
            "uniform": (0.5, "O(√T)"), "binomial": (0.0, "O(slots) = O(1)"),
            "optimal": (0.0, "≤ budget = O(1)"),
            "binomial_log": (0.0, "O(log T)")}


# -- the scaling sweep: a tiny problem, so T = 10⁵ is a matter of per-step overhead -------
CELLS = ("vanilla", "lstm", "gru")
BATCH = 4  # B
HIDDEN = 16  # H
N_IN = 8  # I
N_OUT = 4  # outputs read out at every step, mse against standard-normal targets
DTYPE = np.float64
SEED = 0
STEPS = (10, 30, 100, 300, 1_000, 3_000, 10_000, 30_000, 100_000)  # T, half-decades
K_TRUNCATED = 32  # truncated(k1=32, k2=32): a ring of 32 recorded steps, whatever T
SLOTS = 16  # binomial(slots=16)
OPTIMAL_BUDGET_STEPS = 32  # optimal's budget: 32 steps' residuals, truncated's bytes but exact
LOG_SLOTS_PER_DOUBLING = 1  # binomial_log: slots = this × ⌈log2 T⌉
# Run for real, under tracemalloc, up to this T; above it the peak is predicted by
# `simulate` (tracemalloc makes a step 2-5x slower; binomial(16) at T = 10⁵ does 7·T steps)
RUN_MAX_T = 10_000
# optimal's programme is O(T²·m) (m: the budget in units): about a second at T = 1000,
# hours at T = 10⁵; it is neither run nor predicted above this T
OPTIMAL_MAX_T = 1_000
FIT_MIN_T = 1_000  # slopes are fitted on T >= this: past every fixed-size strategy's knee
# optimal's, as it stops at OPTIMAL_MAX_T: past its knee, where full() would outgrow the
# budget (`_optimal_knee`): T = 33 (gru) to 64 (vanilla, whose linked steps add rb/2 each)
OPTIMAL_FIT_MIN_T = 100
# -- fresh processes: what the kernel sees (RSS), sampled by memory_profiler ----------------
# Memory over time, at a size where residuals dominate the process: one recorded LSTM step
# keeps 7·B·H = 28 672 float64 numbers (224 KiB), 6·B·H (192 KiB) once its c_prev links to
# the step before (NOTE [linked steps] in bptt_memory/cells/_gated.py); full() at T = 600
# holds 113 MiB
TIMELINE = dict(cell="lstm", batch=32, hidden=128, n_in=8, T=600)
# The strategies swept (online's memory is binomial's at the same slots), and binomial given
# slots growing with log T (LOG_SLOTS_PER_DOUBLING·⌈log2 T⌉), the O(log T)-memory,
# O(T log T)-time point of Griewank's trade-off
FAMILIES = ("full", "truncated", "uniform", "binomial", "optimal", "binomial_log")
TIMELINE_STRATEGIES = ("full", "uniform", "binomial", "truncated")
# The sweep's own LSTM problem at its largest T, each strategy in its own process: the
# exact peak measured (not predicted) at T = 10⁵, and the kernel's peak RSS beside it
LONG = dict(cell="lstm", batch=BATCH, hidden=HIDDEN, n_in=N_IN, T=STEPS[-1])
LONG_STRATEGIES = ("full", "truncated", "uniform", "binomial")
SAMPLE_INTERVAL = 0.005  # seconds between memory_profiler's RSS samples
# NOTE [mmap threshold] glibc serves large blocks with mmap, but raises its threshold each
# time such a block is freed, so after the first few frees a process keeps freed memory and
# its RSS shows only the high-water mark. Fixing the threshold (MALLOC_MMAP_THRESHOLD_)
# returns every freed array of >= 16 KiB to the kernel at once, so RSS follows what is held
# (TIMELINE's smallest residual array is B·H float64 = 32 KiB). It costs page faults (runs
# are slower) and changes nothing for smaller arrays.
MALLOC_MMAP_THRESHOLD = 16_384
# -- toy sizes for --small (seconds) --------------------------------------------------------
SMALL = dict(STEPS=(10, 30, 100, 300), K_TRUNCATED=8, SLOTS=4, OPTIMAL_BUDGET_STEPS=8,
             RUN_MAX_T=100, OPTIMAL_MAX_T=100, FIT_MIN_T=10, OPTIMAL_FIT_MIN_T=30,
             TIMELINE=dict(cell="lstm", batch=4, hidden=32, n_in=8, T=100),
             TIMELINE_STRATEGIES=("full", "binomial", "truncated"),
             LONG=dict(cell="lstm", batch=BATCH, hidden=HIDDEN, n_in=N_IN, T=300),
             LONG_STRATEGIES=("full",))


def _settings(small: bool) -> SimpleNamespace:
    names = ("CELLS", "BATCH", "HIDDEN", "N_IN", "N_OUT", "SEED", "STEPS", "K_TRUNCATED",
             "SLOTS", "OPTIMAL_BUDGET_STEPS", "LOG_SLOTS_PER_DOUBLING", "RUN_MAX_T",
             "OPTIMAL_MAX_T", "FIT_MIN_T",
             "OPTIMAL_FIT_MIN_T", "TIMELINE", "TIMELINE_STRATEGIES", "LONG", "LONG_STRATEGIES",
             "SAMPLE_INTERVAL", "MALLOC_MMAP_THRESHOLD")
    s = _common.settings(globals(), names, small)
    return s


def _cell(kind: str, n_in: int, hidden: int) -> bm.Cell:
    return bm.CELLS[kind](n_in, hidden)


def _log_slots(s: SimpleNamespace, T: int) -> int:
    return max(1, s.LOG_SLOTS_PER_DOUBLING * math.ceil(math.log2(max(T, 2))))


def _kwargs(s: SimpleNamespace, family: str, residual_bytes: int, T: int = 1) -> dict:
    """Each family's parameters: fixed in T, so the slope shows the strategy's own order,
    except binomial_log's, whose slots grow with log T."""
    return {"full": {}, "truncated": dict(k1=s.K_TRUNCATED, k2=s.K_TRUNCATED), "uniform": {},
            "binomial": dict(slots=s.SLOTS), "online": dict(slots=s.SLOTS),
            "optimal": dict(budget_bytes=s.OPTIMAL_BUDGET_STEPS * residual_bytes),
            "binomial_log": dict(slots=_log_slots(s, T))}[family]


def _factory(family: str) -> Callable[..., bm.Strategy]:
    return bm.STRATEGIES[family.split("_")[0]]


def _optimal_knee(s: SimpleNamespace, kind: str) -> int:
    """The first T at which full() would hold more than optimal's budget: below it optimal
    records every step, from it on its peak stays within the budget."""
    cell = _cell(kind, s.N_IN, s.HIDDEN)
    budget = _kwargs(s, "optimal", cell.residual_bytes(s.BATCH, DTYPE))["budget_bytes"]
    return next(T for T in itertools.count(1) if cell.recorded_bytes(T, s.BATCH, DTYPE) > budget)


def _label(s: SimpleNamespace, family: str) -> str:
    """A family's strategy as the sweep builds it, the same for every cell."""
    return {"full": "full()", "truncated": f"truncated(k1={s.K_TRUNCATED}, k2={s.K_TRUNCATED})",
            "uniform": "uniform(), every round(√T)", "binomial": f"binomial(slots={s.SLOTS})",
            "online": f"online(slots={s.SLOTS})",
            "optimal": f"optimal({s.OPTIMAL_BUDGET_STEPS} steps' residual bytes)",
            "binomial_log": f"binomial(slots={s.LOG_SLOTS_PER_DOUBLING}·⌈log2 T⌉)"}[family]


def _predicted_peak(strategy: bm.Strategy, T: int, sizes: dict[str, int]) -> int:
    """The peak bytes a strategy will hold on T steps, without running it.

    `sizes` is ``cell.sizes(B, dtype)``: with its link_bytes, `simulate` prices linked
    steps as the executor holds them (NOTE [linked steps] in bptt_memory/cells/_gated.py);
    every strategy prices itself (`Strategy.cost`), truncated's ring included.
    """
    return int(strategy.cost(T, **sizes).peak_bytes or 0)


# -- part 1: the sweep, in this process -------------------------------------------------------


def sweep(s: SimpleNamespace, quiet: bool) -> list[dict]:
    """One row per (cell, strategy, T): measured under tracemalloc where T <= RUN_MAX_T."""
    points = [(kind, family, T) for kind in s.CELLS for T in s.STEPS for family in FAMILIES
              if family != "optimal" or T <= s.OPTIMAL_MAX_T]
    # the bar counts the steps of the runs; predicted points are instant
    bar = _common.progress(total=sum(T for *_, T in points if T <= s.RUN_MAX_T), quiet=quiet,
                           desc=f"{NAME} sweep", unit="step", unit_scale=True)
    rows: list[dict] = []
    problem: tuple = ()
    with _common.pinned_blas(1):
        for kind, family, T in points:
            cell = _cell(kind, s.N_IN, s.HIDDEN)
            model = bm.Model(cell, n_out=s.N_OUT)
            sizes = cell.sizes(s.BATCH, DTYPE)
            strategy = _factory(family)(**_kwargs(s, family, sizes["residual_bytes"], T))
            row = dict(cell=kind, family=family, strategy=strategy.name, T=T, source="predicted",
                       peak_bytes=None, traced_peak_bytes=None, traced_allowance=None,
                       predicted_peak_bytes=_predicted_peak(strategy, T, sizes),
                       forward_steps=None, seconds_traced=None)
            if T <= s.RUN_MAX_T:
                if problem[:2] != (kind, T):
                    rng = np.random.default_rng(s.SEED)
                    params = model.init(rng, DTYPE)
                    problem = (kind, T, params, *random_problem(model, T, s.BATCH, rng, DTYPE))
                _, _, params, xs, ys = problem
                st = strategy.run(model, params, xs, ys, trace_memory=True).stats
                row.update(source="measured", peak_bytes=st.peak_bytes,
                           traced_peak_bytes=st.traced_peak_bytes,
                           traced_allowance=st.traced_allowance, forward_steps=st.forward_steps,
                           seconds_traced=st.seconds)
            rows.append(row)
            bar.set_postfix_str(f"{kind} {strategy.name} T={T}", refresh=False)
            bar.update(T if T <= s.RUN_MAX_T else 0)
    bar.close()
    return rows


def slopes(s: SimpleNamespace, rows: Sequence[dict]) -> list[dict]:
    """Fitted log-log slope of peak against T for T >= FIT_MIN_T, per (cell, family).

    optimal's from OPTIMAL_FIT_MIN_T, as it is only run up to OPTIMAL_MAX_T.
    Three fits: the exact peak at measured points, tracemalloc's peak at the same points,
    and the exact peak over every point, predicted ones included; and the slope expected
    at the measured points (`_expected_slope`).
    """
    out = []
    for kind in s.CELLS:
        for family in FAMILIES:
            fit_min = s.OPTIMAL_FIT_MIN_T if family == "optimal" else s.FIT_MIN_T
            rs = [r for r in rows if r["cell"] == kind and r["family"] == family
                  and r["T"] >= fit_min]
            meas = [r for r in rs if r["source"] == "measured"]
            out.append(dict(
                cell=kind, family=family, order=EXPECTED[family][1],
                expected=_expected_slope(s, kind, family, [r["T"] for r in meas or rs]),
                slope_measured=_slope([r["T"] for r in meas], [r["peak_bytes"] for r in meas]),
                slope_traced=_slope([r["T"] for r in meas], [r["traced_peak_bytes"] for r in meas]),
                slope_traced_minus_floor=_slope(
                    [r["T"] for r in meas], _minus_floor([r["traced_peak_bytes"] for r in meas],
                                                         [r["peak_bytes"] for r in meas])),
                measured_T=_span(meas),
                slope_with_predicted=_slope([r["T"] for r in rs],
                                            [r["predicted_peak_bytes"] for r in rs]),
                all_T=_span(rs),
            ))
    return out


def _minus_floor(traced: Sequence[int], exact: Sequence[int]) -> list[float]:
    """tracemalloc's peaks less its fixed floor, the smallest excess over the exact peak
    over the points (grads, chunk buffers, interpreter objects: whatever does not grow
    with T), so that a growing O(1) or O(log T) figure is not hidden under a flat one."""
    if not traced:
        return []
    floor = min(a - b for a, b in zip(traced, exact))
    return [max(a - floor, 1.0) for a in traced]


def _expected_slope(s: SimpleNamespace, kind: str, family: str, Ts: Sequence[int]) -> float:
    """The log-log slope a family's peak should show over these T.

    full() holds rb + (T − 1)·(rb − lb) (`Cell.recorded_bytes`): each step after the first
    adds rb − lb, as it shares lb with the step before (NOTE [linked steps] in
    bptt_memory/cells/_gated.py), so its slope is 1 only as T grows; that of the exact formula over
    the same T is expected. The others, their order's slope.
    """
    if family not in ("full", "binomial_log") or len(Ts) < 2:
        return EXPECTED[family][0]
    cell = _cell(kind, s.N_IN, s.HIDDEN)
    if family == "binomial_log":  # slots states and one step's residuals
        sb, rb = cell.state_bytes(s.BATCH, DTYPE), cell.residual_bytes(s.BATCH, DTYPE)
        return _slope(Ts, [min(_log_slots(s, T), T) * sb + rb for T in Ts])
    return _slope(Ts, [cell.recorded_bytes(T, s.BATCH, DTYPE) for T in Ts])


def _slope(T: Sequence[int], y: Sequence[float]) -> float:
    return _common.fit_loglog_slope(T, y) if len(T) >= 2 else float("nan")


def _span(rows: Sequence[dict]) -> str:
    return f"{rows[0]['T']}–{rows[-1]['T']} ({len(rows)} pts)" if rows else "none"


# -- part 2: fresh processes -----------------------------------------------------------------

# NOTE [fresh process] Run in a new interpreter that imports only numpy and bptt_memory, so
# its RSS is this run's and nothing else's. Two traps for the kernel's peak RSS (ru_maxrss):
# - exec keeps the high-water mark of the image it replaces, and subprocess spawns with
#   vfork, sharing this (large) process's memory until exec: a child started directly
#   reports this process's peak as its own (a trivial `python -c` child of a process that
#   once held 400 MiB reports 407 MiB). So the child is forked by /bin/sh, whose image is
#   small, and is sampled as sh's child.
# - random_problem makes a transient copy of xs, so building the problem could stand in
#   for the run's peak: the child resets its high-water mark once the problem is built
#   (writing 5 to /proc/self/clear_refs, Linux >= 4.0) and says whether that worked.
# The child prints one JSON line; the parent samples its RSS meanwhile with memory_profiler.
_CHILD = r"""
import gc, json, resource, sys, time
import numpy as np, psutil
import bptt_memory as bm
from bptt_memory.tasks import random_problem

a = json.loads(sys.argv[1])
cell = bm.CELLS[a["cell"]](a["n_in"], a["hidden"])
model = bm.Model(cell, n_out=a["n_out"])
rng = np.random.default_rng(a["seed"])
params = model.init(rng)
xs, ys = random_problem(model, a["T"], a["batch"], rng)
strategy = bm.STRATEGIES[a["family"]](**a["kwargs"])
gc.collect()
to_bytes = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: KiB on Linux, bytes on macOS
try:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    hwm_reset = True
except OSError:
    hwm_reset = False
rss_before = psutil.Process().memory_info().rss
maxrss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * to_bytes
t_start = time.time()
stats = strategy.run(model, params, xs, ys).stats
t_end = time.time()
print(json.dumps(dict(
    strategy=strategy.name, t_start=t_start, t_end=t_end, hwm_reset=hwm_reset,
    rss_before=rss_before, maxrss_before=maxrss_before,
    maxrss_after=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * to_bytes,
    peak_bytes=stats.peak_bytes, forward_steps=stats.forward_steps, seconds=stats.seconds)))
"""


def fresh_run(s: SimpleNamespace, problem: dict, family: str) -> dict:
    """Run one strategy in a fresh process; RSS samples and the kernel's peak RSS."""
    cell = _cell(problem["cell"], problem["n_in"], problem["hidden"])
    rb = cell.residual_bytes(problem["batch"], DTYPE)
    args = dict(problem, n_out=s.N_OUT, seed=s.SEED, family=family,
                kwargs=_kwargs(s, family, rb))
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
               MALLOC_MMAP_THRESHOLD_=str(s.MALLOC_MMAP_THRESHOLD))
    # sh forks the child rather than exec'ing it: see NOTE [fresh process]
    command = ["/bin/sh", "-c", '"$@"; exit $?', "sh", sys.executable, "-c", _CHILD,
               json.dumps(args)]
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(command, stdout=out, stderr=err, env=env, text=True)
        try:
            # multiprocess=True: each sample is [(sh's MiB, time), the child's MiB, ...]
            samples = memory_usage(proc, interval=s.SAMPLE_INTERVAL, timestamps=True,
                                   multiprocess=True)
            proc.wait()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if proc.returncode != 0 or not stdout.strip():
        raise RuntimeError(f"fresh-process run of {family} on {problem} failed "
                           f"(exit {proc.returncode}):\n{stderr}")
    r = json.loads(stdout.strip().splitlines()[-1])
    # samples before the child started or as it exits have no child, or read 0: dropped
    r["samples"] = []
    for sample in samples:
        (_, ts), child_mib = sample[0], sum(sample[1:])
        if child_mib > 0:
            r["samples"].append((ts - r["t_start"], child_mib))
    return r


def fresh_runs(s: SimpleNamespace, quiet: bool) -> tuple[list[dict], list[dict]]:
    """(rss rows, timeline samples) of every fresh-process run."""
    jobs = [("timeline", s.TIMELINE, f) for f in s.TIMELINE_STRATEGIES]
    jobs += [("long", s.LONG, f) for f in s.LONG_STRATEGIES]
    rss, timeline = [], []
    bar = _common.progress(jobs, quiet=quiet, desc=f"{NAME} fresh processes")
    for part, problem, family in bar:
        r = fresh_run(s, problem, family)
        during = [mib for t, mib in r["samples"] if 0 <= t <= r["t_end"] - r["t_start"]]
        rise = r["maxrss_after"] - r["rss_before"]
        rss.append(dict(
            part=part, cell=problem["cell"], batch=problem["batch"], hidden=problem["hidden"],
            T=problem["T"], family=family, strategy=r["strategy"], peak_bytes=r["peak_bytes"],
            rss_before=r["rss_before"], maxrss_before=r["maxrss_before"],
            maxrss_after=r["maxrss_after"], rss_rise=rise,
            rise_over_peak=rise / r["peak_bytes"] if r["peak_bytes"] else float("nan"),
            rise_minus_peak=rise - r["peak_bytes"],
            sampled_max_rise=(max(during) * 2**20 - r["rss_before"]) if during else None,
            samples=len(during), hwm_reset=r["hwm_reset"], forward_steps=r["forward_steps"],
            seconds=r["seconds"]))
        if part == "timeline":
            timeline += [dict(family=family, t_seconds=round(t, 4), rss_mib=round(mib, 3))
                         for t, mib in r["samples"]]
    return rss, timeline


# -- figures ---------------------------------------------------------------------------------


def plot_scaling(s: SimpleNamespace, rows: Sequence[dict], rss: Sequence[dict]) -> plt.Figure:
    fig, axes = plt.subplots(1, len(s.CELLS), figsize=(5.2 * len(s.CELLS), 4.6), sharey=True,
                             squeeze=False)
    for ax, kind in zip(axes[0], s.CELLS):
        for family in FAMILIES:
            rs = [r for r in rows if r["cell"] == kind and r["family"] == family]
            if not rs:
                continue
            c = COLORS[family.split("_")[0]]
            meas = [r for r in rs if r["source"] == "measured"]
            pred = [r for r in rs if r["source"] == "predicted"]
            ax.plot([r["T"] for r in meas], [r["peak_bytes"] for r in meas],
                    "s-" if family == "binomial_log" else "o-", color=c, ms=4,
                    label=_label(s, family))
            ax.plot([r["T"] for r in meas], [r["traced_peak_bytes"] for r in meas], "x:",
                    color=c, ms=4, lw=1)
            if pred:  # dashed from the last measured point on
                link = meas[-1:] + pred
                ax.plot([r["T"] for r in link], [r["predicted_peak_bytes"] for r in link], "--",
                        color=c, lw=1)
                ax.plot([r["T"] for r in pred], [r["predicted_peak_bytes"] for r in pred], "o",
                        color=c, mfc="none", ms=5)
            long = [r for r in rss if r["part"] == "long" and r["cell"] == kind
                    and r["family"] == family and r["batch"] == s.BATCH
                    and r["hidden"] == s.HIDDEN]
            for r in long:
                ax.plot(r["T"], r["peak_bytes"], "*", color=c, ms=11, mec="k", mew=0.5)
                ax.plot(r["T"], max(r["rss_rise"], 1), "^", color=c, ms=6, mfc="none")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(f"{kind} (B={s.BATCH}, H={s.HIDDEN}, float64)")
        ax.set_xlabel("T (steps)")
        ax.grid(True, which="major", alpha=0.3)
    axes[0][0].set_ylabel("peak bytes held for the backward pass")
    first = axes[0][0].legend(loc="upper left", fontsize=7, title="strategy", title_fontsize=7)
    axes[0][0].add_artist(first)
    keys = [plt.Line2D([], [], color="gray", marker="o", ls="-", ms=4, label="exact, measured"),
            plt.Line2D([], [], color="gray", marker="x", ls=":", ms=4,
                       label="tracemalloc, measured"),
            plt.Line2D([], [], color="gray", marker="o", mfc="none", ls="--", ms=5,
                       label="exact, predicted by simulate"),
            plt.Line2D([], [], color="gray", marker="*", ls="", ms=10, mec="k", mew=0.5,
                       label="exact, measured in a fresh process"),
            plt.Line2D([], [], color="gray", marker="^", mfc="none", ls="", ms=6,
                       label="kernel: peak RSS rise, fresh process")]
    axes[0][-1].legend(handles=keys, loc="upper left", fontsize=7)
    fig.suptitle("Peak memory against sequence length")
    fig.tight_layout()
    return fig


def plot_timeline(s: SimpleNamespace, timeline: Sequence[dict], rss: Sequence[dict]) -> plt.Figure:
    runs = [r for r in rss if r["part"] == "timeline"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.6))
    for r in runs:
        f, c = r["family"], COLORS[r["family"]]
        pts = [p for p in timeline if p["family"] == f and p["t_seconds"] >= 0]
        t = [p["t_seconds"] for p in pts]
        mib = np.array([p["rss_mib"] for p in pts])
        left.plot(t, mib, color=c, lw=1,
                  label=f"{r['strategy']}: holds {format_bytes(r['peak_bytes'])}")
        if f != "full":
            right.plot(t, mib - r["rss_before"] / 2**20, color=c, lw=1, label=r["strategy"])
            right.axhline(r["peak_bytes"] / 2**20, color=c, ls=":", lw=1)
    full = [r for r in runs if r["family"] == "full"]
    for r in full:
        left.axhline((r["rss_before"] + r["peak_bytes"]) / 2**20, color="k", ls=":", lw=1,
                     label="RSS before the run + full()'s exact peak")
    p = s.TIMELINE
    left.set_title(f"RSS of a fresh process: {p['cell']} B={p['batch']} H={p['hidden']} T={p['T']}")
    left.set_xlabel("seconds since the run started")
    left.set_ylabel("RSS (MiB)")
    left.legend(fontsize=7)
    right.set_title("the others, above the RSS before the run (dotted: exact peak)")
    right.set_xlabel("seconds since the run started")
    right.set_ylabel("RSS rise (MiB)")
    right.legend(fontsize=7)
    for ax in (left, right):
        ax.grid(True, alpha=0.3)
    fig.tight_layout()
    return fig


# -- the report ------------------------------------------------------------------------------


def _f3(x: float) -> str:
    """Three decimals, 'n/a' for NaN, and no '-0.000'."""
    if x is None or math.isnan(x):
        return "n/a"
    text = f"{x:.3f}"
    return "0.000" if text == "-0.000" else text


def _range(values: Sequence[float]) -> str:
    v = [x for x in values if not math.isnan(x)]
    if not v:
        return "n/a"
    lo, hi = _f3(min(v)), _f3(max(v))
    return lo if lo == hi else f"{lo} to {hi}"


def _python_overhead(s: SimpleNamespace, rows: Sequence[dict],
                     kind: str) -> tuple[int, float] | None:
    """(bytes a step adds, traced bytes per recorded step beyond them) of full() on a cell.

    From the two largest measured T: d traced / d T − (rb − lb), the bytes each step after
    the first adds to full()'s exact peak (NOTE [linked steps] in bptt_memory/cells/_gated.py),
    i.e. what tracemalloc sees per stored step besides the numbers (array headers, the
    residuals' tuple, the dict entry holding it).
    """
    meas = sorted((r for r in rows if r["cell"] == kind and r["family"] == "full"
                   and r["source"] == "measured"), key=lambda r: r["T"])
    if len(meas) < 2:
        return None
    a, b = meas[-2], meas[-1]
    cell = _cell(kind, s.N_IN, s.HIDDEN)
    per_step = cell.residual_bytes(s.BATCH, DTYPE) - cell.link_bytes(s.BATCH, DTYPE)
    traced_per_step = (b["traced_peak_bytes"] - a["traced_peak_bytes"]) / (b["T"] - a["T"])
    return per_step, traced_per_step - per_step


def _traced_growth(rows: Sequence[dict], kind: str, family: str) -> float | None:
    """Bytes per step by which tracemalloc's peak outgrows the exact one (two largest T run)."""
    meas = sorted((r for r in rows if r["cell"] == kind and r["family"] == family
                   and r["source"] == "measured"), key=lambda r: r["T"])
    if len(meas) < 2:
        return None
    a, b = meas[-2], meas[-1]
    extra = (b["traced_peak_bytes"] - b["peak_bytes"]) - (a["traced_peak_bytes"] - a["peak_bytes"])
    return extra / (b["T"] - a["T"])


def _rss_table(rss: Sequence[dict], part: str) -> str:
    return _common.md_table([{
        "strategy": r["strategy"], "T": r["T"], "exact peak": format_bytes(r["peak_bytes"]),
        "RSS before": format_bytes(r["rss_before"]),
        "peak RSS (ru_maxrss)": format_bytes(r["maxrss_after"]),
        "rise": format_bytes(r["rss_rise"]), "rise − exact": format_bytes(r["rise_minus_peak"]),
        "rise / exact": _f3(r["rise_over_peak"]),
        "sampled max rise": ("—" if r["sampled_max_rise"] is None
                             else format_bytes(r["sampled_max_rise"])),
        "forward steps": r["forward_steps"], "run seconds": round(r["seconds"], 2),
    } for r in rss if r["part"] == part])


def _peak_table(s: SimpleNamespace, rows: Sequence[dict], kind: str) -> str:
    rs = [r for r in rows if r["cell"] == kind]
    Ts = [T for T in s.STEPS if T >= s.FIT_MIN_T] or list(s.STEPS)
    table = []
    for f in FAMILIES:
        line = {"strategy": next((r["strategy"] for r in rs if r["family"] == f), f)}
        for T in Ts:
            r = next((r for r in rs if r["family"] == f and r["T"] == T), None)
            line[f"T = {T}"] = ("—" if r is None else
                                format_bytes(r["peak_bytes"]) if r["source"] == "measured" else
                                f"({format_bytes(r['predicted_peak_bytes'])})")
        table.append(line)
    return _common.md_table(table)


def write_report(d: Path, s: SimpleNamespace, rows: Sequence[dict], fits: Sequence[dict],
                 rss: Sequence[dict], checks: dict, seconds: float, command: str) -> Path:
    lt, tl = s.LONG, s.TIMELINE
    tl_sizes = _cell(tl["cell"], tl["n_in"], tl["hidden"]).sizes(tl["batch"], DTYPE)
    findings = []
    for f in FAMILIES:
        fs = [r for r in fits if r["family"] == f]
        if f == "binomial_log":
            expected = (f"{_range([r['expected'] for r in fs])} expected at the measured T, "
                        "that of its peak, ⌈log2 T⌉ states and one step: 1/ln T, so O(log T) "
                        "shows as a slope near 0.1 here and never as 0")
        elif f == "full":
            expected = (f"{_range([r['expected'] for r in fs])} expected at the measured T, "
                        "that of its exact peak rb + (T − 1)·(rb − lb), rb being a recorded "
                        "step's bytes and lb what a step shares with the one before it")
        else:
            expected = f"{EXPECTED[f][0]:g} expected"
        findings.append(
            f"- **{f}** ({EXPECTED[f][1]}; slope {expected}): fitted slope of "
            f"the exact peak {_range([r['slope_measured'] for r in fs])} on measured points, "
            f"{_range([r['slope_with_predicted'] for r in fs])} with the predicted ones; "
            f"tracemalloc's peak {_range([r['slope_traced'] for r in fs])}, and "
            f"{_range([r['slope_traced_minus_floor'] for r in fs])} with its fixed floor "
            f"subtracted (range over {', '.join(s.CELLS)}).")

    long_rows = [r for r in rss if r["part"] == "long"]
    long_checks = []
    for r in long_rows:
        pred = next((x["predicted_peak_bytes"] for x in rows if x["cell"] == r["cell"]
                     and x["family"] == r["family"] and x["T"] == r["T"]), None)
        if pred is not None:
            long_checks.append(f"{r['strategy']} {format_bytes(r['peak_bytes'])} "
                               f"({'equal to' if pred == r['peak_bytes'] else 'NOT equal to'} "
                               "the prediction)")
    n = checks["measured_points"]
    findings.append(
        f"- The exact peak equals `simulate`'s prediction at {n - checks['mismatches']} "
        f"of {n} measured points; in fresh processes at T = {lt['T']} "
        f"({lt['cell']}) the runs measured {'; '.join(long_checks) or 'nothing'}.")

    overheads = [(k, o) for k in s.CELLS if (o := _python_overhead(s, rows, k)) is not None]
    findings.append(
        f"- tracemalloc saw at least the exact peak at {n - checks['traced_below_exact']} "
        f"of {n} measured points, and at most exact + "
        f"`Stats.traced_allowance` at {checks['within_allowance']}. Per step that full() "
        "records it sees, beyond the rb − lb bytes of numbers the step adds, "
        + ", ".join(f"{k} {o:.0f} B on {b} B" for k, (b, o) in overheads)
        + ": array headers, the residuals' tuple and its dict entry, which the exact count "
        f"leaves out by design and which matter at B·H = {s.BATCH * s.HIDDEN}.")

    growth = {f: [g for k in s.CELLS if (g := _traced_growth(rows, k, f)) is not None]
              for f in ("binomial", "truncated")}
    if growth["binomial"] and growth["truncated"]:
        per_step = s.BATCH * np.dtype(DTYPE).itemsize
        b_lo, b_hi = min(growth["binomial"]), max(growth["binomial"])
        median = float(np.median(growth["binomial"]))
        why = (f" The median matches B × {np.dtype(DTYPE).itemsize} = {per_step} B: the executor "
               "holds the run's (T, B) loss weights, the mask (ones when none is given, made by "
               "`Model.check`), for the whole run, "
               "counted by neither `peak_bytes` nor `traced_allowance`, where truncated() "
               "computes it step by step. So a scheduled strategy's real footprint is "
               "O(slots) + O(T·B), with a small constant per step."
               if 0.75 <= median / per_step <= 1.25 else "")
        findings.append(
            "- Beyond the exact peak, tracemalloc's peak grew, between the two largest measured "
            f"T, by {b_lo:.1f} to {b_hi:.1f} B per step for binomial() (median {median:.1f}) and "
            # + 0.0: a growth that rounds to zero reads 0.0, not -0.0
            f"by {round(min(growth['truncated']), 1) + 0.0:.1f} to "
            f"{max(growth['truncated']):.1f} B per step for "
            "truncated()." + why)
    over = checks["over_allowance"]
    if over:
        findings.append(
            f"- tracemalloc's peak exceeded exact + `Stats.traced_allowance` at {len(over)} "
            f"point{'s' if len(over) != 1 else ''}, against `Stats`' documented bound: "
            + ", ".join(f"{o['cell']} {o['strategy']} T = {o['T']}" for o in over[:12])
            + (", …" if len(over) > 12 else "") + ".")

    top = max(s.STEPS)
    at_top = {r["family"]: r for r in rows if r["cell"] == "lstm" and r["T"] == top}
    if "full" in at_top and "binomial" in at_top:
        fb, bb = at_top["full"]["predicted_peak_bytes"], at_top["binomial"]["predicted_peak_bytes"]
        findings.append(
            f"- At T = {top} ({lt['cell']}) full() holds {format_bytes(fb)}, "
            f"binomial(slots={s.SLOTS}) {format_bytes(bb)}: {fb / bb:,.0f} times less for the "
            "same exact gradient (exact bytes).")
        by_rss = {r["family"]: r for r in long_rows}
        if "full" in by_rss and "binomial" in by_rss and by_rss["binomial"]["rss_rise"] > 0:
            fr, br = by_rss["full"], by_rss["binomial"]
            findings[-1] += (
                f" By the kernel's peak RSS in fresh processes at T = {fr['T']} "
                f"({lt['cell']}): {fr['rss_rise'] / br['rss_rise']:,.0f} times "
                f"({format_bytes(fr['rss_rise'])} against {format_bytes(br['rss_rise'])}), "
                "the interpreter's and the allocator's own growth included.")

    timeline = [r for r in rss if r["part"] == "timeline"]
    t_full = next((r for r in timeline if r["family"] == "full"), None)
    if t_full is not None:
        others = [r for r in timeline if r["family"] != "full"]
        slowest = max(timeline, key=lambda r: r["seconds"])
        findings.append(
            f"- The kernel's peak RSS, in fresh processes ({tl['cell']}, B = {tl['batch']}, "
            f"H = {tl['hidden']}, T = {tl['T']}): full() raised it by "
            f"{format_bytes(t_full['rss_rise'])} for an exact peak of "
            f"{format_bytes(t_full['peak_bytes'])} (ratio {_f3(t_full['rise_over_peak'])}); "
            + "; ".join(f"{r['strategy']} by {format_bytes(r['rss_rise'])} for "
                        f"{format_bytes(r['peak_bytes'])}" for r in others)
            + f". The slowest run was {slowest['strategy']} ({slowest['seconds']:.2f} s, "
            f"{slowest['forward_steps']} forward steps; full() {t_full['seconds']:.2f} s).")
    l_full = next((r for r in long_rows if r["family"] == "full"), None)
    if l_full is not None:
        shapes = _cell(lt["cell"], lt["n_in"], lt["hidden"]).residual_shapes(lt["batch"])
        sizes = sorted({math.prod(s) * np.dtype(DTYPE).itemsize for s in shapes})
        span = " to ".join(format_bytes(b) for b in sorted({sizes[0], sizes[-1]}))
        others = [r for r in long_rows if r["family"] != "full"]
        findings.append(
            f"- On the sweep's tiny problem at T = {l_full['T']}, full()'s peak RSS rose by "
            f"{_f3(l_full['rise_over_peak'])} × its exact peak "
            f"({format_bytes(l_full['rss_rise'])} for {format_bytes(l_full['peak_bytes'])}): its "
            f"residual arrays are {span}, "
            "so per-array overhead weighs."
            + (" For the others, rise − exact was "
               f"{format_bytes(min(r['rise_minus_peak'] for r in others))} to "
               f"{format_bytes(max(r['rise_minus_peak'] for r in others))}: gradients, "
               "temporaries and the allocator, not the strategy." if others else ""))
    if not all(r["hwm_reset"] for r in rss):
        findings.append("- Warning: some fresh processes could not reset their high-water "
                        "mark (/proc/self/clear_refs), so their peak RSS may include building "
                        "the problem.")

    fit_table = _common.md_table([
        {"cell": r["cell"], "strategy": r["family"], "order": r["order"],
         "expected": f"{r['expected']:.4g}", "exact, measured": _f3(r["slope_measured"]),
         "tracemalloc, measured": _f3(r["slope_traced"]), "T measured": r["measured_T"],
         "exact, with predicted": _f3(r["slope_with_predicted"]), "T all": r["all_T"]}
        for r in fits])
    durations = ", ".join(f"{r['strategy']} {r['seconds']:.2f} s" for r in timeline)

    report = _common.Report("Memory against sequence length", f"""\
How many bytes must a strategy keep to backpropagate through T steps, and how does that grow
with T? Each strategy ran on each cell for T = {', '.join(str(T) for T in s.STEPS)} on a tiny
problem (B = {s.BATCH}, H = {s.HIDDEN}, I = {s.N_IN}, float64), and its peak was read three
ways: exactly (`Stats.peak_bytes`: the executor's count of the arrays it keeps for the
backward pass), by tracemalloc (`Stats.traced_peak_bytes`), and by the kernel (peak RSS of a
fresh process). The slope of log(peak) against log(T), fitted for T ≥ {s.FIT_MIN_T} (optimal:
T ≥ {s.OPTIMAL_FIT_MIN_T}), is each strategy's order.""")
    for finding in findings:
        report.finding(finding)
    report.section("Slopes", f"""\
Least-squares slope of log(peak bytes) against log(T) for T ≥ {s.FIT_MIN_T} (optimal:
T ≥ {s.OPTIMAL_FIT_MIN_T}, past its knee, the T from which full() would hold more than its
budget: {', '.join(f'{k} {_optimal_knee(s, k)}' for k in s.CELLS)}). "Measured": only
points that were run (under tracemalloc, T ≤ {s.RUN_MAX_T}). "With predicted": also the points
whose exact peak comes from `simulate` without running (up to T = {max(s.STEPS)}; optimal only
to T = {s.OPTIMAL_MAX_T}, beyond which its O(T²·m) programme is not affordable). "Expected":
the order's slope, except full()'s: its exact peak is rb + (T − 1)·(rb − lb)
(`Cell.recorded_bytes`; rb = `residual_bytes`, lb = `link_bytes`), as a step recorded right
after another shares lb bytes with it (vanilla h_prev, LSTM c_prev; GRU none), so it grows
by rb − lb per step and its slope, that of this formula at the measured T, is 1 only as T
grows.""", fit_table)
    report.section(
        "Peak bytes, LSTM",
        "Exact peaks, measured; in parentheses, predicted by `simulate` without running.",
        _peak_table(s, rows, "lstm") if "lstm" in s.CELLS else "",
        _common.figure("scaling.png", "peak bytes against T"), f"""\
Solid lines and dots: exact, measured. Dotted lines and crosses: tracemalloc. Dashed lines and
hollow dots: exact, predicted. Stars: exact, measured at T = {lt['T']} in a fresh process;
triangles: the rise of that process's peak RSS over its RSS before the run.""", f"""\
Setup: `bm.Model(cell, n_out={s.N_OUT})`, mse at every step against standard-normal targets
(`bm.tasks.random_problem`), seed {s.SEED}. Strategies, with parameters fixed in T:
`full()`, `truncated(k1={s.K_TRUNCATED}, k2={s.K_TRUNCATED})`, `uniform()` (segments of
round(√T) steps), `binomial(slots={s.SLOTS})` and
`optimal(budget_bytes={s.OPTIMAL_BUDGET_STEPS} × residual_bytes)`: truncated's bytes, with an
exact gradient. Runs with `trace_memory=True` under one BLAS thread for T ≤ {s.RUN_MAX_T}.
Above that, running every strategy on every cell under tracemalloc would take the better part
of an hour here (a traced step is 2-5 times slower, and binomial(slots={s.SLOTS}) at T = 10⁵
makes about 7·T forward steps), so those peaks are predicted, except the fresh-process runs
at T = {lt['T']} below. optimal() is neither run nor predicted above T = {s.OPTIMAL_MAX_T}.""")
    report.section("Memory over time, fresh processes", f"""\
Each strategy ran in its own interpreter ({tl['cell']}, B = {tl['batch']}, H = {tl['hidden']},
I = {tl['n_in']}, T = {tl['T']}: one recorded step is {format_bytes(tl_sizes['residual_bytes'])},
{format_bytes(tl_sizes['residual_bytes'] - tl_sizes['link_bytes'])} once linked to the step before),
sampled by memory_profiler's `memory_usage` every {s.SAMPLE_INTERVAL * 1000:g} ms from the
study's process. Run times: {durations}. The children ran with
`MALLOC_MMAP_THRESHOLD_={s.MALLOC_MMAP_THRESHOLD}`, so glibc hands every freed array of
≥ {format_bytes(s.MALLOC_MMAP_THRESHOLD)} back to the kernel at once (see NOTE [mmap threshold]
in the study); without it glibc keeps freed memory, and RSS shows only the high-water mark.
full() climbs while it records every step and falls while it reverses them; uniform() rises
and falls once per segment; binomial() and truncated() hold little, and binomial pays in
forward steps instead.""", _common.figure("timeline.png", "RSS over time"),
                   _rss_table(rss, "timeline"), """\
"Rise": the peak RSS (`resource.getrusage(RUSAGE_SELF).ru_maxrss`, high-water mark reset
once the problem was built) minus the RSS just before the run. "Sampled max rise": the
largest memory_profiler sample minus the same RSS. Both include the gradients, the
input-projection chunk and each step's transient arrays, which the exact count leaves out.
Each child is forked by `/bin/sh` rather than spawned by this process: a process started
by exec inherits the high-water mark of the image it replaced, and Python's subprocess
spawns through vfork, so a direct child would report the study's own peak RSS as its own
(see NOTE [fresh process]).""")
    report.section(f"Kernel cross-check at T = {lt['T']}, fresh processes", f"""\
The sweep's own {lt['cell']} problem (B = {lt['batch']}, H = {lt['hidden']}), each strategy in
a fresh process, without tracemalloc.""", _rss_table(rss, "long"))
    report.run_line(f"The whole study took {seconds / 60:.1f} min.")
    report.file("scaling.csv", "one row per (cell, strategy, T): source (measured or "
                "predicted), exact and traced peak bytes, tracemalloc's allowance, `simulate`'s "
                "prediction, forward steps, and seconds (under tracemalloc, so slower than a "
                "plain run).")
    report.file("slopes.csv", "the fitted slopes.")
    report.file("rss.csv", "every fresh-process run: RSS before, ru_maxrss before and after, "
                "rise, largest sample.")
    report.file("timeline.csv", "memory_profiler's RSS samples (MiB) against seconds since the "
                "run started.")
    report.file("summary.json", "settings, slopes, checks and the fresh-process runs.")
    return report.write(d, command, pinned=1)


def check(rows: Sequence[dict]) -> dict:
    """Counts: measured points, exact ≠ predicted, traced < exact, traced over its allowance."""
    meas = [r for r in rows if r["source"] == "measured"]
    return dict(
        measured_points=len(meas),
        mismatches=sum(r["peak_bytes"] != r["predicted_peak_bytes"] for r in meas),
        traced_below_exact=sum(r["traced_peak_bytes"] < r["peak_bytes"] for r in meas),
        within_allowance=sum(r["traced_peak_bytes"] <= r["peak_bytes"] + r["traced_allowance"]
                             for r in meas),
        over_allowance=[dict(cell=r["cell"], strategy=r["strategy"], T=r["T"],
                             over=r["traced_peak_bytes"] - r["peak_bytes"] - r["traced_allowance"])
                        for r in meas
                        if r["traced_peak_bytes"] > r["peak_bytes"] + r["traced_allowance"]],
    )


def run(out: Path | str | None = None, *, small: bool = False, quiet: bool = False) -> Path:
    """Sweep T, run the fresh processes, write reports/memory_scaling/; return report.md."""
    start = time.perf_counter()
    s = _settings(small)
    d = _common.report_dir(out, NAME, small)
    rows = sweep(s, quiet)
    fits = slopes(s, rows)
    checks = check(rows)
    _common.write_csv(d / "scaling.csv", rows)
    _common.write_csv(d / "slopes.csv", fits)
    rss, timeline = fresh_runs(s, quiet)
    _common.write_csv(d / "rss.csv", rss)
    _common.write_csv(d / "timeline.csv", timeline)
    _common.save_figure(plot_scaling(s, rows, rss), d / "scaling.png")
    _common.save_figure(plot_timeline(s, timeline, rss), d / "timeline.png")
    seconds = time.perf_counter() - start
    _common.write_json(d / "summary.json", dict(
        settings={**vars(s), "DTYPE": np.dtype(DTYPE).name}, slopes=fits, checks=checks,
        fresh_processes=rss, seconds=seconds))
    return write_report(d, s, rows, fits, rss, checks, seconds, _common.command_line(NAME, small))


def main(argv: Sequence[str] | None = None) -> None:
    _common.study_main(NAME, run, __doc__, argv)


if __name__ == "__main__":
    main()
