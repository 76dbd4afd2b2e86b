"""Recompute against memory: what keeping less costs, in forward steps and in wall time.

For an LSTM (one stored state is 2·B·H numbers; a recorded step keeps 7·B·H on its own,
3.5 states, and 6·B·H, 3 states, when the step before it is still held, because it then
shares c_prev with that step: NOTE [linked steps] in bptt_memory/cells/_gated.py) this study
sweeps a memory budget from a fraction of a percent of full()'s peak bytes (T steps
recorded in one run, all linked but the first: `Cell.recorded_bytes`) up to all of it,
and at each budget gives every checkpointing strategy its parameter with the fewest
forward steps that fits: uniform's segment length `every`, binomial's `slots`, optimal's
`budget_bytes` itself. The forward-step counts at T = 1000 and T = 10 000 are exact,
from `simulate` (no arrays), and are drawn against Griewank's binomial optimum
T + t(T, s + 1). A subset is run for real at T = 1000, timed interleaved with full() in
the same process, to check Gruslys et al.'s headline: at T = 1000 BPTT-MSM "saves 95%
of memory usage while using only one third more time per iteration than the standard
BPTT".

References: Chen et al. 2016, "Training Deep Nets with Sublinear Memory Cost" (uniform);
Griewank & Walther 2000, "Algorithm 799: Revolve", eq. 2 (binomial); Gruslys et al. 2016,
"Memory-Efficient Backpropagation Through Time", NeurIPS, abstract and Sec. 3.4 (optimal).

Run: ``bptt-memory study recompute_tradeoff [--small] [--out DIR]``.
"""

from __future__ import annotations

import concurrent.futures
import math
import multiprocessing
import os
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Callable, Sequence

import matplotlib.pyplot as plt
import numpy as np

import bptt_memory as bm
from bptt_memory.checkpoint import MAX_UNITS
from bptt_memory.compare import format_bytes, grad_error
from bptt_memory.tasks import random_problem
from bptt_memory.timing import interleaved

from . import _common

NAME = "recompute_tradeoff"
STRATEGIES = ("uniform", "binomial", "optimal")
COLORS = _common.STRATEGY_COLORS  # one palette for the strategies in every study

# -- the model ------------------------------------------------------------------------
BATCH = 32  # B
N_IN = 32  # I
HIDDEN = 128  # H
N_OUT = 32  # outputs read out at every step, mse against standard-normal targets
DTYPE = np.float64
SEED = 0
# -- the frontier: exact forward-step counts from `simulate`, no arrays -------------------
STEPS = (1000, 10_000)  # T
FRACTIONS = (0.0015, 0.003, 0.006, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.15, 0.2, 0.28,
             0.4, 0.7, 1.0)  # budgets, as fractions of full()'s peak bytes recorded_bytes(T)
TINY_FRACTIONS = (0.00015, 0.0003, 0.0006)  # added at T >= 10 000: a few states' bytes
# -- wall time: a subset run for real, interleaved with full() ------------------------------
TIMED_STEPS = 1000  # T of the timed runs; one of STEPS
TIMED_FRACTIONS = dict(uniform=(0.05, 0.1, 0.2),  # nothing under its floor (`_uniform_floor`)
                       binomial=(0.01, 0.02, 0.05, 0.1, 0.2),
                       optimal=(0.01, 0.02, 0.05, 0.1, 0.2, 0.4))
REPEATS = 7  # timed rounds after one untimed warm-up round; medians are reported
# -- Gruslys et al. 2016's headline ---------------------------------------------------------
HEADLINE_FRACTION = 0.05  # "saves 95% of memory usage"
HEADLINE_TIME_RATIO = 4 / 3  # "only one third more time per iteration"
HEADLINE_SLACK = 0.0125  # "about": met when within the project's goal, 1.35× (4/3 + 1.25%)
# -- toy sizes for --small (seconds) --------------------------------------------------------
SMALL = dict(BATCH=2, N_IN=3, HIDDEN=4, N_OUT=2, STEPS=(50, 200),
             FRACTIONS=(0.01, 0.03, 0.05, 0.1, 0.2, 0.4, 1.0), TINY_FRACTIONS=(),
             TIMED_STEPS=200, REPEATS=3,
             TIMED_FRACTIONS=dict(uniform=(0.1, 0.2), binomial=(0.03, 0.05, 0.1),
                                  optimal=(0.03, 0.05, 0.1)))


def _settings(small: bool) -> SimpleNamespace:
    names = ("BATCH", "N_IN", "HIDDEN", "N_OUT", "STEPS", "FRACTIONS", "TINY_FRACTIONS",
             "TIMED_STEPS", "TIMED_FRACTIONS", "REPEATS", "SEED",
             "HEADLINE_FRACTION", "HEADLINE_TIME_RATIO", "HEADLINE_SLACK")
    s = _common.settings(globals(), names, small)
    if s.TIMED_STEPS not in s.STEPS:
        raise ValueError(f"TIMED_STEPS={s.TIMED_STEPS} must be one of STEPS={s.STEPS}")
    return s


def _fractions(s: SimpleNamespace, T: int) -> list[float]:
    return sorted(set(s.FRACTIONS) | (set(s.TINY_FRACTIONS) if T >= 10_000 else set()))


# -- choosing each strategy's parameter for a budget ----------------------------------------


def _choose(name: str, T: int, sb: int, rb: int, lb: int, budget: int
            ) -> tuple[bm.ScheduledStrategy, str, int] | None:
    """(strategy, parameter name, value) with the fewest forward steps within budget, or None."""
    if name == "uniform":
        u = bm.best_uniform(T, budget, sb, rb, lb)
        return None if u is None else (u, "every", u.every)
    if name == "binomial":
        # one recorded step is always held (binomial records one at a time, so never linked);
        # h0 is free, so more than T − 1 slots change nothing
        slots = min(T - 1, (budget - rb) // sb)
        return None if slots < 1 else (bm.binomial(slots), "slots", slots)
    return None if budget < rb else (bm.optimal(budget), "budget_bytes", budget)


def _predicted_steps(strategy: bm.ScheduledStrategy, T: int, sb: int, rb: int, lb: int) -> int:
    """The forward steps each strategy's own formula promises, to check `simulate` against."""
    if isinstance(strategy, bm.Uniform):
        return strategy.forward_steps(T)  # Chen et al.'s T + k·(⌈T/k⌉ − 1)
    if isinstance(strategy, bm.Binomial):
        return bm.binomial_forward_steps(T, strategy.slots)  # Griewank eq. 2
    if isinstance(strategy, bm.Optimal):
        return strategy.forward_steps(T, sb, rb, lb)  # read off the programme's cost table
    return T


# -- the frontier -----------------------------------------------------------------------------


def frontier(s: SimpleNamespace, T: int, quiet: bool) -> list[dict]:
    """One row per (strategy, budget) that fits, exact from `simulate`.

    NOTE [optimal's memo] `optimal` keeps one cost table per item sizes in units and
    grows it to answer the largest T and the largest budget asked so far, together. After
    T = 1000 at 2000 units, T = 10 000 at 10 units would build a 10 000 × 2000 table
    (minutes to hours) instead of 10 000 × 64 (seconds). So each T is measured in a
    process of its own (`_measure`), optimal's budgets are walked largest first so that
    the first table built answers all the others, and the timed runs (same T, budgets
    from this grid) follow in the same process and reuse it.
    """
    sizes, full_bytes = _sizes(s), _full_bytes(s, T)
    sb, rb, lb = sizes["state_bytes"], sizes["residual_bytes"], sizes["link_bytes"]
    rows = [_row(T, "full", "", "", 1.0, full_bytes, bm.simulate(
        bm.full().schedule(T), n_steps=T, **sizes), T, 0.0, full_bytes)]
    fractions = _fractions(s, T)
    bar = _common.progress(total=len(STRATEGIES) * len(fractions), quiet=quiet,
                           desc=f"{NAME} T={T}")
    for name in STRATEGIES:
        for f in reversed(fractions) if name == "optimal" else fractions:
            bar.update()
            budget = int(f * full_bytes)
            chosen = _choose(name, T, sb, rb, lb, budget)
            if chosen is None:
                continue
            strategy, parameter, value = chosen
            t0 = time.perf_counter()
            cost = bm.simulate(strategy.iter_schedule(T, **sizes), n_steps=T, **sizes,
                               budget_bytes=budget)
            seconds = time.perf_counter() - t0
            rows.append(_row(T, name, parameter, value, f, budget, cost,
                             _predicted_steps(strategy, T, sb, rb, lb), seconds, full_bytes))
    bar.close()
    return rows


def _sizes(s: SimpleNamespace) -> dict[str, int]:
    """The study's LSTM's state_bytes, residual_bytes and link_bytes (`Cell.sizes`)."""
    return bm.lstm(s.N_IN, s.HIDDEN).sizes(s.BATCH, DTYPE)


def _full_bytes(s: SimpleNamespace, T: int) -> int:
    """full()'s peak bytes: T consecutive recorded steps, all linked but the first."""
    return bm.lstm(s.N_IN, s.HIDDEN).recorded_bytes(T, s.BATCH, DTYPE)


def _row(T: int, name: str, parameter: str, value: int | str, fraction: float, budget: int,
         cost: bm.Cost, predicted: int, seconds: float, full_bytes: int) -> dict:
    return dict(T=T, strategy=name, parameter=parameter, value=value, budget_fraction=fraction,
                budget_bytes=budget, peak_bytes=cost.peak_bytes,
                memory_fraction=cost.peak_bytes / full_bytes, peak_states=cost.peak_states,
                peak_residuals=cost.peak_residuals, forward_steps=cost.forward_steps,
                recompute_factor=cost.recompute_factor, predicted_forward_steps=predicted,
                plan_seconds=seconds)


def binomial_curve(s: SimpleNamespace, T: int) -> list[dict]:
    """Griewank's optimum for states only: T + t(T, s + 1) forward steps with s slots."""
    sizes, full_bytes = _sizes(s), _full_bytes(s, T)
    sb, rb = sizes["state_bytes"], sizes["residual_bytes"]
    slots = sorted({int(round(x)) for x in np.geomspace(1, T - 1, 300)})
    return [dict(T=T, slots=k, memory_fraction=(k * sb + rb) / full_bytes,
                 forward_steps=bm.binomial_forward_steps(T, k),
                 recompute_factor=bm.binomial_forward_steps(T, k) / T) for k in slots]


def check_frontier(rows: Sequence[dict]) -> list[str]:
    """What should hold of the frontier, as a list of violations (empty when all hold)."""
    bad = []
    by = {}
    for r in rows:
        by.setdefault((r["T"], r["strategy"]), []).append(r)
    for (T, name), pts in by.items():
        pts = sorted(pts, key=lambda r: r["budget_fraction"])
        for a, b in zip(pts, pts[1:]):
            if b["forward_steps"] > a["forward_steps"]:
                bad.append(f"T={T} {name}: {b['forward_steps']} forward steps at "
                           f"{b['budget_fraction']:g} > {a['forward_steps']} at "
                           f"{a['budget_fraction']:g}")
        for r in pts:
            if r["forward_steps"] != r["predicted_forward_steps"]:
                bad.append(f"T={T} {name} {r['parameter']}={r['value']}: simulate counts "
                           f"{r['forward_steps']}, its formula {r['predicted_forward_steps']}")
            if r["peak_bytes"] > r["budget_bytes"]:
                bad.append(f"T={T} {name} at {r['budget_fraction']:g}: over budget")
    for (T, name), pts in by.items():
        if name != "optimal":
            continue
        for other in ("binomial", "uniform"):
            at = {r["budget_fraction"]: r for r in by.get((T, other), [])}
            for r in pts:
                b = at.get(r["budget_fraction"])
                if b is not None and r["forward_steps"] > b["forward_steps"]:
                    bad.append(f"T={T} at {r['budget_fraction']:g}: optimal {r['forward_steps']} > "
                               f"{other} {b['forward_steps']} forward steps")
    return bad


# -- wall time -------------------------------------------------------------------------------


def timing(s: SimpleNamespace, quiet: bool) -> tuple[list[dict], dict]:
    """Run the timed subset and full(), interleaved; one row per run with medians and ratios."""
    T, B = s.TIMED_STEPS, s.BATCH
    cell = bm.lstm(s.N_IN, s.HIDDEN)
    model = bm.Model(cell, s.N_OUT)
    rng = np.random.default_rng(s.SEED)
    params = model.init(rng, DTYPE)
    xs, ys = random_problem(model, T, B, rng, DTYPE)
    sizes, full_bytes = cell.sizes(B, DTYPE), cell.recorded_bytes(T, B, DTYPE)
    sb, rb, lb = sizes["state_bytes"], sizes["residual_bytes"], sizes["link_bytes"]
    runs: dict[str, tuple[str, str, int | str, float, bm.Strategy]] = {
        "full": ("full", "", "", 1.0, bm.full())}
    for name in STRATEGIES:
        for f in s.TIMED_FRACTIONS[name]:
            chosen = _choose(name, T, sb, rb, lb, int(f * full_bytes))
            if chosen is not None:
                runs[f"{name}@{f:g}"] = (name, chosen[1], chosen[2], f, chosen[0])
    keys = list(runs)
    load_before = os.getloadavg()
    bar = _common.progress(total=len(keys) * (1 + s.REPEATS), quiet=quiet, desc=f"{NAME} timing")

    def runner(strategy: bm.Strategy) -> Callable[[], bm.Result]:
        return lambda: strategy.run(model, params, xs, ys)

    # one warm-up run each (it builds optimal's tables, and gives the result we check),
    # then interleaved rounds on one BLAS thread (NOTE [round order] in bptt_memory/timing.py)
    timings = interleaved({k: runner(runs[k][4]) for k in keys}, s.REPEATS, threads=1,
                          progress=bar.update)
    bar.close()
    times = {k: list(t.wall) for k, t in timings.items()}
    results = {k: t.value for k, t in timings.items()}
    load_after = os.getloadavg()
    base = timings["full"].median
    exact = results["full"]
    rows = []
    for k in keys:
        name, parameter, value, f, strategy = runs[k]
        st = results[k].stats
        med = timings[k].median
        rows.append(dict(strategy=name, parameter=parameter, value=value, budget_fraction=f,
                         peak_bytes=st.peak_bytes, memory_fraction=st.peak_bytes / full_bytes,
                         forward_steps=st.forward_steps, recompute_factor=st.forward_steps / T,
                         seconds_median=med, seconds_min=min(times[k]), seconds_max=max(times[k]),
                         time_ratio=med / base,
                         time_ratio_low=min(timings[k].ratios(timings["full"])),
                         time_ratio_high=max(timings[k].ratios(timings["full"])),
                         time_ratio_of_minima=min(times[k]) / min(times["full"]),
                         actions=bm.simulate(strategy.iter_schedule(T, **sizes), n_steps=T).actions,
                         grad_rel_error=grad_error(results[k].grads, exact.grads)[0]))
    meta = dict(T=T, raw_seconds=times, load_average_before=load_before,
                load_average_after=load_after, cpus=os.cpu_count())
    return rows, meta


def fit_forward_cost(rows: Sequence[dict], strategy: str | None = None) -> tuple[float, float]:
    """α in time_ratio ≈ 1 + α·(F − 1): one extra forward step's cost relative to a full() step.

    A full() step is one forward and one backward step; every extra forward step is
    recomputation. Least squares through (F, ratio) = (1, 1), over every timed strategy or
    just `strategy`. Returns (α, max |residual|).
    """
    pts = [(r["recompute_factor"] - 1, r["time_ratio"] - 1) for r in rows
           if r["strategy"] != "full" and strategy in (None, r["strategy"])]
    x, y = np.array([p[0] for p in pts]), np.array([p[1] for p in pts])
    if not len(x) or not (x * x).sum():
        return float("nan"), float("nan")
    alpha = float((x * y).sum() / (x * x).sum())
    return alpha, float(np.abs(y - alpha * x).max())


# -- figures -----------------------------------------------------------------------------------


def plot_frontier(s: SimpleNamespace, rows: Sequence[dict], curve: Sequence[dict]) -> plt.Figure:
    fig, axes = plt.subplots(1, len(s.STEPS), figsize=(6 * len(s.STEPS), 4.6), squeeze=False)
    for ax, T in zip(axes[0], s.STEPS):
        c = [p for p in curve if p["T"] == T]
        ax.plot([p["memory_fraction"] for p in c], [p["recompute_factor"] for p in c], "-",
                color="0.6", lw=3, alpha=0.6, label="binomial optimum T + t(T, s+1)")
        for name in STRATEGIES:
            pts = sorted((r for r in rows if r["T"] == T and r["strategy"] == name),
                         key=lambda r: r["budget_fraction"])
            if pts:
                ax.plot([r["memory_fraction"] for r in pts], [r["recompute_factor"] for r in pts],
                        "o-", ms=4, color=COLORS[name], label=name)
        ax.plot([1.0], [1.0], "*", ms=12, color=COLORS["full"], label="full()")
        ax.axvline(s.HEADLINE_FRACTION, color="0.3", ls=":", lw=1)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("peak memory / full()'s peak bytes")
        ax.set_ylabel("forward steps / T (recompute factor)")
        ax.set_title(f"LSTM, T = {T}", fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_time(s: SimpleNamespace, rows: Sequence[dict], alpha: float) -> plt.Figure:
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.6))
    for name in STRATEGIES:
        pts = sorted((r for r in rows if r["strategy"] == name), key=lambda r: r["memory_fraction"])
        if not pts:
            continue
        mf = [r["memory_fraction"] for r in pts]
        a.plot(mf, [r["time_ratio"] for r in pts], "o-", color=COLORS[name],
               label=f"{name}: time / full()'s")
        a.plot(mf, [r["recompute_factor"] for r in pts], "x--", color=COLORS[name], alpha=0.5,
               label=f"{name}: forward steps / T")
        b.errorbar([r["recompute_factor"] for r in pts], [r["time_ratio"] for r in pts],
                   yerr=[[r["time_ratio"] - r["seconds_min"] / r["seconds_median"] * r["time_ratio"]
                          for r in pts],
                         [r["seconds_max"] / r["seconds_median"] * r["time_ratio"] - r["time_ratio"]
                          for r in pts]],
                   fmt="o", color=COLORS[name], label=name, capsize=2)
    a.plot([1.0], [1.0], "*", ms=12, color=COLORS["full"], label="full()")
    a.axhline(s.HEADLINE_TIME_RATIO, color="0.3", ls=":", lw=1)
    a.axvline(s.HEADLINE_FRACTION, color="0.3", ls=":", lw=1)
    a.annotate("Gruslys et al.: 4/3 at 5%", (s.HEADLINE_FRACTION, s.HEADLINE_TIME_RATIO),
               xytext=(4, 4), textcoords="offset points", fontsize=8)
    a.set_xscale("log")
    a.set_xlabel("peak memory / full()'s peak bytes")
    a.set_ylabel("ratio to full()")
    a.set_title(f"Measured at T = {s.TIMED_STEPS} (medians of {s.REPEATS}, interleaved)",
                fontsize=10)
    a.grid(True, which="both", alpha=0.3)
    a.legend(fontsize=7)
    fs = np.linspace(1, max([r["recompute_factor"] for r in rows] + [2.0]), 50)
    b.plot(fs, fs, "-", color="0.7", label="time ∝ forward steps")
    if math.isfinite(alpha):
        b.plot(fs, 1 + alpha * (fs - 1), "--", color="k", label=f"1 + α(F − 1), α = {alpha:.2f}")
    b.plot([1.0], [1.0], "*", ms=12, color=COLORS["full"])
    b.set_xlabel("forward steps / T (F)")
    b.set_ylabel("time / full()'s time")
    b.set_title("Time against recomputation (bars: min–max of repeats)", fontsize=10)
    b.grid(True, alpha=0.3)
    b.legend(fontsize=8)
    fig.tight_layout()
    return fig


# -- report ------------------------------------------------------------------------------------


def _at(rows: Sequence[dict], fraction: float, **match: object) -> dict | None:
    for r in rows:
        if (math.isclose(r["budget_fraction"], fraction)
                and all(r[k] == v for k, v in match.items())):
            return r
    return None


def _pct(x: float) -> str:
    return f"{100 * x:.3g}%"


def _frontier_table(rows: Sequence[dict], T: int, fractions: Sequence[float]) -> str:
    table = []
    for f in fractions:
        line: dict = {"budget (of full)": _pct(f)}
        for name, param in (("uniform", "every"), ("binomial", "slots"), ("optimal", None)):
            r = _at(rows, f, T=T, strategy=name)
            if param:
                line[param] = r["value"] if r else "–"
            line[f"{name} F"] = r["recompute_factor"] if r else "–"
            if name == "optimal":
                line["optimal peak"] = _pct(r["memory_fraction"]) if r else "–"
                line["optimal: states + steps"] = (
                    f"{r['peak_states']} + {r['peak_residuals']}" if r else "–")
        b, o = _at(rows, f, T=T, strategy="binomial"), _at(rows, f, T=T, strategy="optimal")
        line["binomial F / optimal F"] = b["forward_steps"] / o["forward_steps"] if b and o else "–"
        table.append(line)
    return _common.md_table(table)


def _headline(s: SimpleNamespace, rows: Sequence[dict],
              timed: Sequence[dict]) -> tuple[list[dict], dict]:
    T, f = s.TIMED_STEPS, s.HEADLINE_FRACTION
    table = []
    for name in STRATEGIES:
        r = _at(rows, f, T=T, strategy=name)
        t = _at(timed, f, strategy=name)
        table.append({"strategy": name,
                      "parameter": f"{r['parameter']}={r['value']}" if r else "does not fit",
                      "peak (of full)": _pct(r["memory_fraction"]) if r else "–",
                      "forward steps / T": r["recompute_factor"] if r else "–",
                      "time / full()'s": t["time_ratio"] if t else "–",
                      "time spread (min–max)": (
                          f"{t['seconds_min'] / t['seconds_median'] * t['time_ratio']:.3g}–"
                          f"{t['seconds_max'] / t['seconds_median'] * t['time_ratio']:.3g}"
                          if t else "–")})
    opt_t = _at(timed, f, strategy="optimal")
    opt_r = _at(rows, f, T=T, strategy="optimal")
    ratio = opt_t["time_ratio"] if opt_t else float("nan")
    verdict = dict(fraction=f, T=T, target_time_ratio=s.HEADLINE_TIME_RATIO,
                   optimal_time_ratio=ratio,
                   optimal_recompute_factor=opt_r["recompute_factor"] if opt_r else float("nan"),
                   optimal_memory_fraction=opt_r["memory_fraction"] if opt_r else float("nan"),
                   met=bool(ratio <= s.HEADLINE_TIME_RATIO * (1 + s.HEADLINE_SLACK)))
    return table, verdict


def _uniform_floor(s: SimpleNamespace, T: int) -> float:
    """The least memory uniform can run in, for any `every`, as a fraction of full()'s."""
    sizes = _sizes(s)
    sb, rb, lb = sizes["state_bytes"], sizes["residual_bytes"], sizes["link_bytes"]
    return min(bm.uniform(k).peak_bytes(T, sb, rb, lb) for k in range(1, T + 1)) / _full_bytes(s, T)


def write_report(d: Path, s: SimpleNamespace, rows: list[dict], timed: list[dict], meta: dict,
                 alphas: dict, violations: list[str], seconds: float,
                 command: str) -> Path:
    T0 = s.TIMED_STEPS
    sizes = _sizes(s)
    sb, rb, lb = sizes["state_bytes"], sizes["residual_bytes"], sizes["link_bytes"]
    unit = math.gcd(sb, rb, rb - lb)  # optimal's exact unit (`Optimal.units`)
    head_table, verdict = _headline(s, rows, timed)
    f = s.HEADLINE_FRACTION
    alpha, alpha_resid = alphas.get("all", (float("nan"), float("nan")))

    def F(T: int, name: str, frac: float) -> str:
        r = _at(rows, frac, T=T, strategy=name)
        return f"{r['recompute_factor']:.3g}" if r else "–"

    # optimal against binomial where binomial still has slots to spare (below T − 1)
    adv = []
    for T in s.STEPS:
        pairs = [(b["forward_steps"] / o["forward_steps"], o["budget_fraction"])
                 for o in rows if o["T"] == T and o["strategy"] == "optimal"
                 for b in [_at(rows, o["budget_fraction"], T=T, strategy="binomial")]
                 if b and b["value"] < T - 1]
        if pairs:
            best = max(pairs)
            adv.append(f"binomial does up to {best[0]:.2f}× optimal's forward steps (at "
                       f"{_pct(best[1])} of full, T = {T})")
    # uniform against the others at the budgets where it fits
    vs_uniform = []
    for T in s.STEPS:
        common = [(u, _at(rows, u["budget_fraction"], T=T, strategy="binomial"),
                   _at(rows, u["budget_fraction"], T=T, strategy="optimal"))
                  for u in rows if u["T"] == T and u["strategy"] == "uniform"
                  and u["budget_fraction"] < 1]
        wins = [u for u, b, _ in common if b and u["forward_steps"] < b["forward_steps"]]
        with_b = [u for u, b, _ in common if b]
        ratio = [u["forward_steps"] / o["forward_steps"] for u, _, o in common if o]
        if with_b:
            vs_uniform.append(
                f"at T = {T} uniform needs fewer forward steps than binomial at {len(wins)} of "
                f"{len(with_b)} budgets where both fit "
                f"(F {min(u['recompute_factor'] for u in with_b):.3g}"
                f"–{max(u['recompute_factor'] for u in with_b):.3g}: it keeps whole segments' "
                "residuals, which binomial never does)"
                + (f", and up to {max(ratio):.2f}× the forward steps of optimal" if ratio else ""))
    opt_t = _at(timed, f, strategy="optimal")
    verdict_text = (
        f"**{_common.verdict(verdict['met'], s.small).capitalize()}.** At T = {T0} and a budget of "
        f"{_pct(f)} of full()'s bytes, `optimal` holds {_pct(verdict['optimal_memory_fraction'])}, "
        f"does {verdict['optimal_recompute_factor']:.3g}× the forward steps of full() and measures "
        f"{verdict['optimal_time_ratio']:.4g}× its wall time (median; "
        + (f"{opt_t['time_ratio_of_minima']:.3g}× between the fastest runs" if opt_t
           else "not timed")
        + f"), against Gruslys et al.'s ≈ {s.HEADLINE_TIME_RATIO:.3g}× (criterion: median ≤ "
        f"{s.HEADLINE_TIME_RATIO * (1 + s.HEADLINE_SLACK):.3g}×)."
    )
    if opt_t:
        lo = opt_t["seconds_min"] / opt_t["seconds_median"] * opt_t["time_ratio"]
        hi = opt_t["seconds_max"] / opt_t["seconds_median"] * opt_t["time_ratio"]
        bound = s.HEADLINE_TIME_RATIO * (1 + s.HEADLINE_SLACK)
        verdict_text += (
            f" Its {s.REPEATS} runs spread from {lo:.4g}× to {hi:.4g}× of full()'s median"
            + (", on both sides of the criterion, so the verdict is borderline."
               if lo <= bound < hi else "."))
    others = [f"`{name}` {t['time_ratio']:.3g}× (F = {t['recompute_factor']:.3g})"
              for name in ("uniform", "binomial") for t in [_at(timed, f, strategy=name)] if t]
    if others:
        verdict_text += " At the same budget: " + ", ".join(others) + "."
    a_opt = alphas.get("optimal", (float("nan"),))[0]
    if math.isfinite(a_opt) and a_opt > 0:
        need = 1 + (s.HEADLINE_TIME_RATIO - 1) / a_opt
        at = _first_fraction_at(rows, T0, "optimal", need)
        verdict_text += (
            f" Fitted over its timed runs, each extra forward step of `optimal` costs "
            f"α = {a_opt:.2f} of a full() step, so 4/3 needs F ≤ {need:.2f}, which its frontier "
            + (f"reaches from {_pct(at)} of full()'s bytes." if math.isfinite(at) else
               "does not reach below full()'s bytes."))
    report = _common.Report(
        "Recompute against memory: what keeping less costs",
        f"""\
What does backpropagating through time cost, in forward steps and in wall time, when the
memory for it is cut to a fraction of what full() keeps? For an LSTM (B = {s.BATCH},
I = {s.N_IN}, H = {s.HIDDEN}, float64: one stored state {format_bytes(sb)}; one recorded
step {format_bytes(rb)} on its own, {rb / sb:g} states, and {format_bytes(rb - lb)},
{(rb - lb) / sb:g} states, when the step before it is still held, because it then shares
c_prev with that step (NOTE [linked steps] in `bptt_memory/cells/_gated.py`); full() records all
T steps in one run, {format_bytes(rb)} + (T − 1)·{format_bytes(rb - lb)}) at
T = {', '.join(map(str, s.STEPS))}.""")
    report.finding(
        f"**At {_pct(f)} of full()'s bytes (T = {T0})** the forward-step factor is "
        f"{F(T0, 'optimal', f)} for `optimal`, {F(T0, 'binomial', f)} for `binomial` and "
        f"{F(T0, 'uniform', f)} for `uniform`; the measured wall-time ratios are in the "
        "headline table below.")
    report.finding(f"**Gruslys et al.'s headline.** {verdict_text}")
    report.finding(
        f"**Keeping residuals as well as states pays** when a recorded step costs "
        f"{rb / sb:g} states on its own and {(rb - lb) / sb:g} linked to the one before: "
        + "; ".join(adv) + ", counting only budgets where binomial is below its T − 1 "
        "slots. Binomial is the optimum *for states only* (its points "
        "lie on Griewank's curve), so it never does fewer than 2T − 1 forward steps: every "
        "step is run once plainly and once more to record it. `optimal` and `uniform` reach "
        "T at full budget.")
    report.finding(
        "**Uniform cannot go low:** its least memory for any `every` is "
        + ", ".join(f"{_pct(_uniform_floor(s, T))} of full at T = {T}" for T in s.STEPS)
        + ". Where it fits, " + "; ".join(vs_uniform) + ".")
    if math.isfinite(alpha):
        per = ", ".join(f"{name} {alphas[name][0]:.2f}" for name in STRATEGIES
                        if name in alphas and math.isfinite(alphas[name][0]))
        report.finding(
            f"**Time is not forward steps.** Over the {len(timed) - 1} timed runs, "
            f"time / full()'s ≈ 1 + α·(F − 1) with α = {alpha:.2f} (largest deviation "
            f"{alpha_resid:.2f}); fitted per strategy, α is {per}. Every strategy records each "
            "step once, so its extra forward steps are plain advances, and α is what one "
            "advance costs next to one full() step (a recorded forward step, its reverse, "
            "the readout and loss): time grows more slowly than F.")
    if violations:
        report.finding("**Checks that failed:** " + "; ".join(violations))
    else:
        report.finding(
            "**Checks.** For every strategy the forward steps fall (weakly) as the budget "
            "grows; `optimal` never does more forward steps than `binomial` or `uniform` at the "
            "same budget; "
            "every count from `simulate` equals its strategy's own formula (uniform's "
            "T + k(m − 1), Griewank's T + t(T, s + 1), optimal's cost table); every peak is within "
            "its budget.")
    errors = [r["grad_rel_error"] for r in timed if r["strategy"] != "full"]
    load0, load1 = meta["load_average_before"], meta["load_average_after"]
    planning = ", ".join(
        f"{name} "
        f"{sum(r['plan_seconds'] for r in rows if r['T'] == T and r['strategy'] == name):.1f} s"
        f" at T = {T}" for T in s.STEPS for name in STRATEGIES)
    timed_table = [{"strategy": r["strategy"], "parameter": r["parameter"], "value": r["value"],
                    "budget": _pct(r["budget_fraction"]), "peak": _pct(r["memory_fraction"]),
                    "F": r["recompute_factor"], "actions": r["actions"],
                    "seconds (median)": r["seconds_median"], "time / full()": r["time_ratio"],
                    "fastest / fastest full()": r["time_ratio_of_minima"],
                    "grad rel. error": r["grad_rel_error"]} for r in timed]
    report.section(
        f"Gruslys et al.'s headline: T = {T0}, {_pct(f)} of full()'s memory",
        _common.md_table(head_table),
        f"""\
Time ratios are medians of {s.REPEATS} interleaved runs against full()'s median in the
same process (full() took {_at(timed, 1.0, strategy='full')['seconds_median']:.3g} s).
Gruslys et al. measured on a GPU with their own LSTM; here every step is numpy on one
BLAS thread, where a forward step's share of a full() step (α above) sets how much
recomputation costs.""")
    report.section(
        "Forward steps against memory",
        _common.figure("frontier.png", "forward steps against memory"),
        f"""\
Each strategy gets, at each budget, its parameter with the fewest forward steps that fits:
uniform the best `every` (from its documented costs), binomial `slots` = ⌊(budget −
one step's residuals) / state⌋ (at most T − 1), optimal the budget itself. Points are
placed at the peak bytes `simulate` reports (linked steps priced as such), as a fraction
of full()'s {format_bytes(rb)} + (T − 1)·{format_bytes(rb - lb)};
the grey curve is Griewank's T + t(T, s + 1) placed at s states + one recorded step. The
dotted line marks {_pct(f)}. Both axes are logarithmic.""",
        *(f"### T = {T} (F = forward steps / T)\n\n" + _frontier_table(rows, T, _fractions(s, T))
          for T in s.STEPS),
        f"""\
`optimal: states + steps` is the peak number of stored states and recorded steps
of its plan. Optimal plans every budget: with its exact programme where that is bounded
(`EXACT_WORK` in `bptt_memory/checkpoint.py`: O(T²·m) in the budget m in units,
`Optimal.units`), and beyond it with the best segment or block plan (NOTE [segment
plans] and [block plans] there), which never does more forward steps than binomial at
the same bytes. Above {format_bytes(MAX_UNITS * unit)} ({MAX_UNITS} units of
{format_bytes(unit)}) the exact programme rounds item sizes up to a coarser unit, so its
plans there can use less than the budget and be slightly off optimal.""",
        f"""\
Planning time (the `simulate` walk, and optimal's cost tables when first built), summed
over the budgets: {planning}.""")
    report.section(
        f"Wall time against memory (T = {T0})",
        _common.figure("time.png", "time against memory"),
        _common.md_table(timed_table),
        f"""\
Left: time ratio (solid) and forward-step factor (dashed) against memory; right: time ratio
against the forward-step factor, with the fit 1 + α(F − 1). Every gradient matches full()'s
(largest relative error {max(errors) if errors else float('nan'):.2g}). Every exact strategy
records each step exactly once (`simulate` forbids recording a step twice), so all extra
forward steps are plain advances that keep nothing; the strategies differ in how many there
are and in how many actions carry them (`actions`: binomial's are one-step pieces).""",
        f"""\
The machine was shared while timing: load average {load0[0]:.1f} before and {load1[0]:.1f}
after on {meta['cpus']} CPUs. Interleaving spreads that noise over all strategies alike;
the min–max spread of each run is in `timing.csv` and as bars in the right panel.""")
    report.section(
        "Setup",
        f"""\
Model: `bm.Model(bm.lstm({s.N_IN}, {s.HIDDEN}), n_out={s.N_OUT})`, mse at every step
against standard-normal targets (`bm.tasks.random_problem`), seed {s.SEED}. Memory is the
exact peak of what a strategy holds for the backward pass (stored states and recorded
steps; `Stats.peak_bytes`), not counting parameters, gradients, the working state or
transient temporaries. Timed runs: `strategy.run` under one BLAS thread, one untimed
warm-up round, then {s.REPEATS} rounds running every strategy once each (the order rotated
each round and reversed every other round: NOTE [round order] in
`bptt_memory/timing.py`). The whole study took {seconds / 60:.1f} min.""")
    report.file("frontier.csv", "one row per (T, strategy, budget): parameter, peak bytes and "
                "fraction, peak states and recorded steps, forward steps from `simulate` and "
                "from the strategy's own formula, recompute factor, planning seconds.")
    report.file("binomial_curve.csv",
                "Griewank's T + t(T, s + 1) for s from 1 to T − 1 (log-spaced).")
    report.file("timing.csv", "the timed runs: medians, min, max, time ratio, gradient error.")
    report.file("data.json", "settings, the headline verdict, α, raw timings.")
    return report.write(d, command, pinned=1)


def _first_fraction_at(rows: Sequence[dict], T: int, name: str, factor: float) -> float:
    """The smallest budget fraction at which `name`'s recompute factor is <= factor."""
    fs = [r["budget_fraction"] for r in rows
          if r["T"] == T and r["strategy"] == name and r["recompute_factor"] <= factor]
    return min(fs) if fs else float("nan")


def _measure(s: SimpleNamespace, T: int, quiet: bool) -> tuple[list, list, dict]:
    """Frontier rows at T; and the timed runs if T is TIMED_STEPS."""
    rows = frontier(s, T, quiet)
    timed, meta = timing(s, quiet) if T == s.TIMED_STEPS else ([], {})
    return rows, timed, meta


def _in_fresh_process(fn, *args):  # type: ignore[no-untyped-def]
    """fn(*args) in a new interpreter: optimal's memo starts empty (NOTE [optimal's memo])."""
    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=ctx) as pool:
        return pool.submit(fn, *args).result()


def run(out: Path | str | None = None, *, small: bool = False, quiet: bool = False) -> Path:
    """Compute the frontier, time the subset, write reports/recompute_tradeoff/; return
    report.md."""
    start = time.perf_counter()
    s = _settings(small)
    d = _common.report_dir(out, NAME, small)
    rows, curve = [], []
    timed, meta = [], {}
    for T in s.STEPS:
        r, t, m = _in_fresh_process(_measure, s, T, quiet)
        rows += r
        curve += binomial_curve(s, T)
        if T == s.TIMED_STEPS:
            timed, meta = t, m
    violations = check_frontier(rows)
    alphas = {"all": fit_forward_cost(timed),
              **{name: fit_forward_cost(timed, name) for name in STRATEGIES}}
    _, verdict = _headline(s, rows, timed)
    seconds = time.perf_counter() - start
    _common.write_csv(d / "frontier.csv", rows)
    _common.write_csv(d / "binomial_curve.csv", curve)
    _common.write_csv(d / "timing.csv", timed)
    _common.write_json(d / "data.json", {
        "settings": {**vars(s), "DTYPE": np.dtype(DTYPE).name},
        "headline": verdict, "alpha_and_max_residual": alphas,
        "violations": violations, "timing": meta, "seconds": seconds})
    _common.save_figure(plot_frontier(s, rows, curve), d / "frontier.png")
    _common.save_figure(plot_time(s, timed, alphas["all"][0]), d / "time.png")
    return write_report(d, s, rows, timed, meta, alphas, violations,
                        seconds, _common.command_line(NAME, small))


def main(argv: Sequence[str] | None = None) -> None:
    _common.study_main(NAME, run, __doc__, argv)


if __name__ == "__main__":
    main()
