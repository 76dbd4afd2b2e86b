"""What checkpointing costs in time, measured against full BPTT in the same process.

Two questions. (a) How long does *planning* take: binomial's closed-form split for a
million steps (walked lazily by `simulate`, never held), and optimal's dynamic programme
for T = 1000 at budgets up to ~100 LSTM states. (b) How much slower than `full()` is each
checkpointing strategy on a real LSTM at equal memory (uniform, binomial and optimal each
given the same budget, 5% of full()'s peak_bytes); the goal is ``optimal`` within 1.35x
full's time there.

Timings of runs are the median of REPEATS rounds after one warm-up round, the strategies
interleaved round by round so that drift in the machine hits them all alike, BLAS on one
thread. The programme is timed cold in a fresh interpreter per budget (its tables are
memoised in-process, so an in-process first call may not be cold; see NOTE [cold plan]).

References: Griewank & Walther 2000, "Algorithm 799: Revolve" (binomial); Gruslys et al.
2016, "Memory-Efficient Backpropagation Through Time", NeurIPS (optimal, BPTT-MSM).

Run: ``bptt-memory study checkpoint_benchmark [--small] [--out DIR] [--quiet]``; prints the
report as markdown, and with --out also writes DIR/checkpoint_benchmark/report.md.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable, Sequence

import numpy as np

import bptt_memory as bm
from bptt_memory.compare import grad_error
from bptt_memory.timing import interleaved

from . import _common

NAME = "checkpoint_benchmark"

# -- (a) planning ------------------------------------------------------------------------
PLAN_STEPS = 10**6  # binomial: a million steps ...
PLAN_SLOTS = 100  # ... with 100 stored states
DP_STEPS = 1000  # optimal's programme: T ...
DP_BUDGET_STATES = (10, 25, 50, 100)  # ... and budgets, in LSTM states at the run's B, H, dtype
# -- (b) the run: an LSTM, every strategy against full() -----------------------------------
BATCH = 32  # B
HIDDEN = 128  # H
N_IN = 32  # I
N_OUT = 8  # readout width, mse against standard-normal targets
STEPS = 1000  # T
DTYPE = np.float64
BUDGET_FRACTION = 0.05  # optimal's budget, as a fraction of full()'s peak_bytes
GOAL_TIME_RATIO = 1.35  # the goal: optimal's median time <= this x full()'s
WIDE_N_OUT = 32  # recompute_tradeoff's readout width: full() and optimal also run with it
REPEATS = 15  # timed rounds after one untimed warm-up round; medians are reported
# (with 5, two runs in a row could fall on either side of the goal)
SEED = 0
# -- toy sizes for --small (seconds) -------------------------------------------------------
SMALL = dict(PLAN_STEPS=10**4, PLAN_SLOTS=10, DP_STEPS=60, DP_BUDGET_STATES=(5, 10),
             BATCH=2, HIDDEN=4, N_IN=3, N_OUT=2, STEPS=1000, REPEATS=3)  # 5% fits uniform


def _settings(small: bool) -> SimpleNamespace:
    names = ("PLAN_STEPS", "PLAN_SLOTS", "DP_STEPS", "DP_BUDGET_STATES", "BATCH", "HIDDEN",
             "N_IN", "N_OUT", "STEPS", "BUDGET_FRACTION", "GOAL_TIME_RATIO", "REPEATS", "SEED",
             "WIDE_N_OUT")
    return _common.settings(globals(), names, small)


# -- (a) planning ------------------------------------------------------------------------

# NOTE [cold plan] optimal's tables are memoised per process and answer every shorter T and
# smaller budget, so the first plan pays for the programme and later ones are nearly free.
# To time what a first call costs whatever ran before (`bptt-memory study all` runs other
# studies in the same process), each budget is planned in a new interpreter; the warm
# column is the same plan repeated in this process once its tables exist.
_CHILD = r"""
import json, sys, time
import bptt_memory as bm
a = json.loads(sys.argv[1])
start = time.perf_counter()
cost = bm.simulate(bm.optimal(a["budget"]).iter_schedule(a["T"], **a["sizes"]),
                   n_steps=a["T"], **a["sizes"], budget_bytes=a["budget"])
print(json.dumps([time.perf_counter() - start, cost.forward_steps, cost.peak_bytes]))
"""


def _plan_optimal(T: int, sizes: dict[str, int], budget: int) -> bm.Cost:
    return bm.simulate(bm.optimal(budget).iter_schedule(T, **sizes), n_steps=T, **sizes,
                       budget_bytes=budget)


def planning(s: SimpleNamespace) -> list[dict]:
    """Seconds to plan (and check) binomial at PLAN_STEPS and optimal at DP_STEPS."""
    rows = []
    T, slots = s.PLAN_STEPS, s.PLAN_SLOTS
    start = time.perf_counter()
    cost = bm.simulate(bm.binomial(slots).iter_schedule(T), n_steps=T, max_states=slots,
                       max_residuals=1)
    rows.append(dict(policy=f"binomial(slots={slots})", T=T, cold_s=time.perf_counter() - start,
                     warm_s=None, forward=cost.forward_steps, binomial=cost.forward_steps,
                     peak=f"{cost.peak_states} states + {cost.peak_residuals} step"))

    sizes = _sizes(s)
    sb, rb = sizes["state_bytes"], sizes["residual_bytes"]
    T = s.DP_STEPS
    for states in s.DP_BUDGET_STATES:
        budget = states * sb
        args = json.dumps(dict(T=T, sizes=sizes, budget=budget))
        out = subprocess.run([sys.executable, "-c", _CHILD, args], check=True, text=True,
                             capture_output=True, env=dict(os.environ)).stdout
        cold, forward, peak = json.loads(out.splitlines()[-1])
        _plan_optimal(T, sizes, budget)  # fill this process's memo
        start = time.perf_counter()
        cost = _plan_optimal(T, sizes, budget)
        warm = time.perf_counter() - start
        if (cost.forward_steps, cost.peak_bytes) != (forward, peak) or peak > budget:
            raise RuntimeError(f"optimal({budget}): the fresh process planned {forward} steps "
                               f"and {peak} B, this one {cost.forward_steps} and {cost.peak_bytes}")
        rows.append(dict(policy=f"optimal({states} LSTM states = {budget:,} B)", T=T,
                         cold_s=cold, warm_s=warm, forward=forward,
                         binomial=bm.binomial_forward_steps(T, (budget - rb) // sb),
                         peak=f"{peak:,} B"))
    return rows


def _sizes(s: SimpleNamespace) -> dict[str, int]:
    """state_bytes, residual_bytes and link_bytes of the run's LSTM (`Cell.sizes`)."""
    return bm.lstm(s.N_IN, s.HIDDEN).sizes(s.BATCH, DTYPE)


# -- (b) the run ---------------------------------------------------------------------------


def timing(s: SimpleNamespace) -> tuple[list[dict], dict]:
    """Median wall time and peak_bytes of each strategy, relative to full(), same process."""
    rng = np.random.default_rng(s.SEED)
    B, T = s.BATCH, s.STEPS
    model = bm.Model(bm.lstm(s.N_IN, s.HIDDEN), n_out=s.N_OUT)
    params = model.init(rng, dtype=DTYPE)
    xs = rng.standard_normal((T, B, s.N_IN)).astype(DTYPE)
    ys = rng.standard_normal((T, B, s.N_OUT)).astype(DTYPE)

    full_peak = model.cell.recorded_bytes(T, B, DTYPE)  # T steps, all linked but the first
    budget = int(s.BUDGET_FRACTION * full_peak)
    # every checkpointing strategy at the same memory, the budget: uniform with its best
    # segment for it, binomial with as many slots as fit beside one step's residuals
    sizes = model.cell.sizes(B, DTYPE)
    u = bm.best_uniform(T, budget, **sizes)
    slots = max(1, (budget - sizes["residual_bytes"]) // sizes["state_bytes"])
    strategies = [bm.full(), *([u] if u is not None else []), bm.binomial(slots=slots),
                  bm.optimal(budget_bytes=budget)]
    phases: list[tuple[float, float]] = []  # full()'s forward and backward seconds per run

    def runner(x: bm.Strategy) -> Callable[[], bm.Result]:
        def run() -> bm.Result:
            if x.name != "full()":
                return x.run(model, params, xs, ys)
            p = bm.Profile(products=False)  # the phases alone: two clock reads per action
            res = x.run(model, params, xs, ys, profile=p)
            phases.append((p.forward_seconds, p.backward_seconds))
            return res
        return run

    # NOTE [wide readout] recompute_tradeoff times the same LSTM, T and budget with a wider
    # readout. The readout runs once per step whatever a strategy recomputes, so it adds
    # the same seconds to full() and to optimal and lowers optimal's ratio: full() and
    # optimal also run with that readout, in the same rounds, to measure by how much.
    wide = bm.Model(model.cell, n_out=s.WIDE_N_OUT)
    # the same cell parameters; the wider readout's own
    wide_params = {**wide.init(np.random.default_rng(s.SEED + 1), dtype=DTYPE),
                   **{k: params[k] for k in model.cell.param_shapes()}}
    wide_ys = np.random.default_rng(s.SEED + 2).standard_normal((T, B, s.WIDE_N_OUT)).astype(DTYPE)
    runners: dict[str, Callable[[], Any]] = {x.name: runner(x) for x in strategies}
    for x in (bm.full(), bm.optimal(budget_bytes=budget)):
        runners[f"{x.name}, n_out={s.WIDE_N_OUT}"] = (
            lambda x=x: x.run(wide, wide_params, xs, wide_ys))
    # one warm-up run each (it also fills optimal's memo), then interleaved timed rounds
    timings = interleaved(runners, s.REPEATS, threads=1)
    ref = timings["full()"].value
    full_time = timings["full()"].median
    full_phases = [statistics.median(p) for p in zip(*phases[1:])]  # the timed rounds'
    rows = []
    for x in strategies:
        res, t = timings[x.name].value, timings[x.name].median
        rows.append(dict(strategy=x.name, peak_bytes=res.stats.peak_bytes,
                         memory=res.stats.peak_bytes / full_peak,
                         forward=res.stats.forward_steps, recompute=res.stats.forward_steps / T,
                         median_s=t, spread=timings[x.name].spread,
                         time=t / full_time, grad_err=grad_error(res.grads, ref.grads)[0],
                         predicted=_common.recomputation_ratio(
                             res.stats.forward_steps, res.stats.backward_steps, T, *full_phases)))
    opt = rows[-1]
    per_round = timings[strategies[-1].name].ratios(timings["full()"])
    w_opt, w_full = (timings[f"{x}, n_out={s.WIDE_N_OUT}"]
                     for x in (strategies[-1].name, "full()"))
    wide_rounds = w_opt.ratios(w_full)
    verdict = dict(budget=budget, full_peak=full_peak, time_ratio=opt["time"],
                   time_ratio_rounds=(min(per_round), max(per_round)),
                   wide_n_out=s.WIDE_N_OUT, wide_time_ratio=w_opt.median / w_full.median,
                   wide_time_ratio_rounds=(min(wide_rounds), max(wide_rounds)),
                   wide_full_over_full=w_full.median / full_time,
                   predicted=opt["predicted"],
                   within_budget=opt["peak_bytes"] <= budget,
                   met=opt["peak_bytes"] <= budget and opt["time"] <= s.GOAL_TIME_RATIO)
    return rows, verdict


# -- the report ----------------------------------------------------------------------------


def report(s: SimpleNamespace, plan: list[dict], rows: list[dict], verdict: dict,
           reports: Path) -> _common.Report:
    """The report, with `reconcile`'s paragraph against the recompute_tradeoff report in
    `reports` (the folder this study's own folder is in)."""
    dt = np.dtype(DTYPE).name
    sizes = _sizes(s)
    sb, rb, lb = sizes["state_bytes"], sizes["residual_bytes"], sizes["link_bytes"]
    lo, hi = verdict["time_ratio_rounds"]

    def secs(v: float | None) -> str:
        return "-" if v is None else f"{v:.3f}"

    rep = _common.Report("Checkpoint benchmark: planning time, and run time against full()")
    rep.section(
        "Planning",
        f"Plans are walked lazily by `simulate`, which checks them. optimal's budgets are in "
        f"LSTM states at B={s.BATCH}, H={s.HIDDEN}, {dt} ({sb:,} B a state, {rb:,} B a step's "
        f"residuals on its own, {rb - lb:,} B when the step before it is still held: NOTE "
        "[linked steps] in `bptt_memory/cells/_gated.py`); cold = a fresh interpreter, warm = "
        "repeated in-process with its tables memoised.",
        "\n".join([
            "| policy | T | cold s | warm s | forward steps | binomial at that budget "
            "| peak held |",
            "|---|---:|---:|---:|---:|---:|---|",
            *[f"| {p['policy']} | {p['T']:,} | {secs(p['cold_s'])} | {secs(p['warm_s'])} | "
              f"{p['forward']:,} | {p['binomial']:,} | {p['peak']} |" for p in plan]]))
    rep.section(
        "Time and memory relative to full()",
        f"LSTM B={s.BATCH}, H={s.HIDDEN}, I={s.N_IN}, T={s.STEPS}, {dt}, one BLAS thread; "
        f"median wall time of {s.REPEATS} interleaved rounds after one warm-up round "
        "(`run` as a user calls it, planning included; optimal's tables are memoised after "
        "the warm-up).",
        "\n".join([
            "| strategy | peak_bytes | memory / full | forward steps | recompute | median s "
            "| min–max s | time / full | steps alone | grad rel. err vs full |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
            *[f"| {r['strategy']} | {r['peak_bytes']:,} | {r['memory']:.3f} | {r['forward']:,} | "
              f"{r['recompute']:.2f}x | {r['median_s']:.3f} | "
              f"{r['spread'][0]:.3f}–{r['spread'][1]:.3f} "
              f"| {r['time']:.2f}x | {r['predicted']:.2f}x | {r['grad_err']:.1e} |"
              for r in rows]]),
        "*steps alone*: the time over full()'s that the run's forward and backward steps "
        "would take at what each costs inside full() (its median forward and backward "
        "seconds per step in the same rounds; `recomputation_ratio` in `studies/_common.py`); "
        "time / full above it is the executor's bookkeeping, or steps that cost more where "
        "the strategy runs them.",
        f"**Goal**: optimal at {s.BUDGET_FRACTION:.0%} of full's peak_bytes (budget "
        f"{verdict['budget']:,} B, {'held' if verdict['within_budget'] else 'EXCEEDED'}) "
        f"within {s.GOAL_TIME_RATIO}x full's time: **{_common.verdict(verdict['met'], s.small)}** "
        f"({verdict['time_ratio']:.3f}x, per round {lo:.3g}–{hi:.3g}x"
        + (", on both sides of the goal: borderline on this machine" if lo <= s.GOAL_TIME_RATIO < hi
           else "")
        + f"; its steps alone would take {verdict['predicted']:.3f}x"
        + (f", already beyond {s.GOAL_TIME_RATIO}x before any bookkeeping"
           if not verdict["met"] and verdict["predicted"] > s.GOAL_TIME_RATIO else "") + ").",
        reconcile(s, verdict, reports),
        _common.figure("time_memory.png", "time against memory"))
    rep.file("planning.csv", "one row per plan in the Planning table: policy, T, cold and "
             "warm seconds, forward steps, binomial's at that budget, peak held.")
    rep.file("timing.csv", "one row per strategy of the run: peak bytes, memory, forward steps, "
             "recompute factor, median seconds (with each strategy's min–max seconds), time over "
             "full()'s, steps alone, gradient error.")
    rep.file("summary.json", "settings and verdict.")
    return rep


def reconcile(s: SimpleNamespace, verdict: dict, reports: Path) -> str:
    """A paragraph setting optimal's time ratio here beside recompute_tradeoff's headline,
    which times the same LSTM, T and budget fraction with a wider readout (NOTE [wide
    readout]), and the two readouts' ratios measured here in the same rounds."""
    lo, hi = verdict["time_ratio_rounds"]
    wlo, whi = verdict["wide_time_ratio_rounds"]
    here = (f"**Against recompute_tradeoff.** Here, in the same rounds: optimal at "
            f"{s.BUDGET_FRACTION:.0%} of full()'s bytes took {verdict['time_ratio']:.3g}× "
            f"full()'s time with the n_out = {s.N_OUT} readout (per round {lo:.3g}–{hi:.3g}), "
            f"and {verdict['wide_time_ratio']:.3g}× with an n_out = {verdict['wide_n_out']} "
            f"one (per round {wlo:.3g}–{whi:.3g}), where full() itself took "
            f"{verdict['wide_full_over_full']:.3g}× its n_out = {s.N_OUT} time. The readout "
            "runs once per step whatever a strategy recomputes (NOTE [wide readout]): a "
            "wider one adds the same seconds to both and lowers the ratio"
            + (", as here." if whi < lo else
               "; here that is within the spread of the rounds, whose ranges overlap."))
    other = reports / "recompute_tradeoff" / "data.json"
    if not other.is_file():
        return here + (" (recompute_tradeoff's data is not beside this report, so its "
                       "headline is not compared here.)")
    data = json.loads(other.read_text())
    head, theirs = data["headline"], data["settings"]
    return here + (
        f" recompute_tradeoff (n_out = {theirs.get('N_OUT')}, {theirs.get('REPEATS')} rounds, "
        f"its own run) measured {head['optimal_time_ratio']:.3g}× at T = {head['T']}: to be "
        f"read against this run's n_out = {verdict['wide_n_out']} figure, not its "
        f"n_out = {s.N_OUT} one; it lies "
        + ("within" if wlo <= head["optimal_time_ratio"] <= whi else "outside")
        + " that figure's range over the rounds.")


def plot_time_memory(rows: Sequence[dict]) -> Any:
    """Time over full()'s against memory over full()'s, measured and steps-alone."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for r in rows:
        c = _common.strategy_color(r["strategy"])
        ax.plot(r["memory"], r["time"], "o", color=c, label=f"{r['strategy']} measured")
        ax.plot(r["memory"], r["predicted"], "x", color=c, ms=8,
                label=f"{r['strategy']} steps alone")
    ax.set(xscale="log", xlabel="peak bytes / full()'s", ylabel="time / full()'s",
           title="LSTM: time against memory (medians)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=6)
    fig.tight_layout()
    return fig


def run(out: Path | str | None = None, *, small: bool = False, quiet: bool = False) -> Path:
    """Plan, time, print the report (unless quiet) and write out/NAME/ with its data and
    figure."""
    s = _settings(small)
    d = _common.report_dir(out, NAME, small)
    plan = planning(s)
    rows, verdict = timing(s)
    _common.write_csv(d / "planning.csv", plan)
    _common.write_csv(d / "timing.csv", [{**r, "spread": list(r["spread"])} for r in rows])
    _common.write_json(d / "summary.json", {"settings": vars(s), "verdict": verdict})
    _common.save_figure(plot_time_memory(rows), d / "time_memory.png")
    path = report(s, plan, rows, verdict, d.parent).write(
        d, _common.command_line(NAME, small), pinned=1)
    if not quiet:
        print(path.read_text())
    return path


def main(argv: Sequence[str] | None = None) -> None:
    _common.study_main(NAME, run, __doc__, argv)


if __name__ == "__main__":
    main()
