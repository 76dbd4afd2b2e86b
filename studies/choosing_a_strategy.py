"""Which strategy should I use? A decision chart over sequence length, budget, cell and size.

For every T from 10² to 10⁶ and every budget from 0.1% to 100% of full()'s bytes, the
chart asks `bptt_memory.compare.plan` (what ``bptt-memory plan`` answers) for the exact
strategy with the fewest forward steps that fits, and prices it: its peak bytes against
full()'s, and its time against full()'s predicted from its step counts and the forward and
backward step costs measured here on full() (F·f + T·b over T·(f + b); every exact
strategy makes T backward steps, so the fewest forward steps is the fastest by this
model). A few real runs check the prediction, and the choice against the runner-up. It
also times the planning, and says what truncating to the same budget would cost instead
in gradient error (measured where full() can be run for the exact gradient).

The chart calls only the public API (`plan`, `Cell.sizes`, strategies' `run`), so a new
planner shows up in it when the study is run again.

References: Griewank & Walther 2000 (binomial checkpointing); Chen et al. 2016 (√T
segments); Gruslys et al. 2016 (BPTT-MSM: states and residuals within a budget).

Run: ``bptt-memory study choosing_a_strategy [--small] [--out DIR] [--quiet]``.
"""

from __future__ import annotations

import math
import os
import statistics
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable, Sequence

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.colors import ListedColormap

import bptt_memory as bm
from bptt_memory.compare import Plan, grad_error, plan
from bptt_memory.tasks import random_problem
from bptt_memory.timing import interleaved

from . import _common

NAME = "choosing_a_strategy"

# -- the chart ------------------------------------------------------------------------
CELLS = ("vanilla", "lstm", "gru")  # every built-in cell (vanilla is tanh)
SIZES = ((32, 128), (32, 512))  # (B, H): a small and a large step
N_IN = 32  # I
N_OUT = 10  # readout width (mse)
DTYPE = "float64"
STEPS = (100, 1_000, 10_000, 100_000, 1_000_000)  # T
FRACTIONS = (0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0)  # budget / full()'s peak bytes
# -- step costs, measured on full() on this machine -------------------------------------
STEP_COST_T = 200  # T of the full() runs whose forward and backward seconds price a step
STEP_COST_ROUNDS = 5  # interleaved rounds; medians
# -- spot checks: real runs of the chart's choice, its runner-up and full() -------------
SPOT_T = 1_000
SPOT_CHECKS = (("lstm", 32, 128, 0.01), ("lstm", 32, 128, 0.1), ("gru", 32, 128, 0.03),
               ("vanilla", 32, 512, 0.1))  # (cell, B, H, budget fraction)
SPOT_ROUNDS = 5
APART = 0.05  # spot-check pairs whose predicted times differ by more than this are ranked
# -- truncation instead: its gradient error, where full() gives the exact gradient -------
TRUNCATION_MAX_T = 1_000  # measured for T up to this, at the first of SIZES
SEED = 0
# -- toy sizes for --small (seconds) ---------------------------------------------------
SMALL = dict(SIZES=((2, 8),), STEPS=(10, 100, 1_000), FRACTIONS=(0.01, 0.1, 1.0),
             STEP_COST_T=20, STEP_COST_ROUNDS=2, SPOT_T=50,
             SPOT_CHECKS=(("lstm", 2, 8, 0.1), ("gru", 2, 8, 0.3)), SPOT_ROUNDS=2,
             TRUNCATION_MAX_T=100)

#: the chart's colours, in order: every exact family `plan` may pick
FAMILIES = tuple(n for n in bm.STRATEGIES if n != "truncated")


def _settings(small: bool) -> SimpleNamespace:
    names = ("CELLS", "SIZES", "N_IN", "N_OUT", "DTYPE", "STEPS", "FRACTIONS", "STEP_COST_T",
             "STEP_COST_ROUNDS", "SPOT_T", "SPOT_CHECKS", "SPOT_ROUNDS", "TRUNCATION_MAX_T",
             "SEED")
    return _common.settings(globals(), names, small)


def _cell(kind: str, H: int, n_in: int) -> bm.Cell:
    return bm.CELLS[kind](n_in, H)


def _family(strategy: str) -> str:
    return strategy.split("(", 1)[0]


def best_exact(options: Sequence[Plan]) -> Plan | None:
    """The chart's choice among `plan`'s options: the first exact one that fits, which is
    what ``bptt-memory plan`` names as the best exact strategy."""
    return next((o for o in options if o.fits and o.exact), None)


def predicted_ratio(forward_steps: int, T: int, f: float, b: float) -> float:
    """Time over full()'s of a run making `forward_steps` forward and T backward steps at
    f and b seconds each: (F·f + T·b) / (T·(f + b))."""
    return _common.recomputation_ratio(forward_steps, T, T, f * T, b * T)


# -- (1) step costs -----------------------------------------------------------------------


def step_costs(s: SimpleNamespace, quiet: bool) -> list[dict]:
    """Per cell and size: full()'s median forward and backward seconds per step."""
    rows = []
    configs = [(kind, B, H) for B, H in s.SIZES for kind in s.CELLS]
    for kind, B, H in _common.progress(configs, quiet=quiet, desc=f"{NAME}: step costs"):
        model = bm.Model(_cell(kind, H, s.N_IN), s.N_OUT)
        rng = np.random.default_rng(s.SEED)
        params = model.init(rng, s.DTYPE)
        xs, ys = random_problem(model, s.STEP_COST_T, B, rng, s.DTYPE)
        phases: list[tuple[float, float]] = []

        def run() -> None:
            p = bm.Profile(products=False)  # the phases alone: two clock reads per action
            bm.full().run(model, params, xs, ys, profile=p)
            phases.append((p.forward_seconds, p.backward_seconds))

        t = interleaved({"full": run}, s.STEP_COST_ROUNDS, threads=1)["full"]
        timed = phases[1:]  # the first was the warm-up
        rows.append(dict(cell=kind, B=B, H=H, T=s.STEP_COST_T, rounds=s.STEP_COST_ROUNDS,
                         forward_us=1e6 * statistics.median(p[0] for p in timed) / s.STEP_COST_T,
                         backward_us=1e6 * statistics.median(p[1] for p in timed) / s.STEP_COST_T,
                         run_seconds=t.median))
    return rows


# -- (2) the chart: plan at every point ---------------------------------------------------


def chart(s: SimpleNamespace, costs: Sequence[dict], quiet: bool) -> list[dict]:
    """One row per (cell, B, H, T, budget fraction): plan's choice and what it costs."""
    cost = {(c["cell"], c["B"], c["H"]): c for c in costs}
    points = [(kind, B, H, T, frac) for B, H in s.SIZES for kind in s.CELLS for T in s.STEPS
              for frac in s.FRACTIONS]
    rows = []
    for kind, B, H, T, frac in _common.progress(points, quiet=quiet, desc=f"{NAME}: chart"):
        cell = _cell(kind, H, s.N_IN)
        full_bytes = cell.recorded_bytes(T, B, s.DTYPE)
        budget = max(1, int(frac * full_bytes))
        t0 = time.perf_counter()
        options = plan(cell, T, B, budget, s.DTYPE)
        planning = time.perf_counter() - t0
        best = best_exact(options)
        trunc = next((o for o in options if _family(o.strategy) == "truncated"), None)
        c = cost[(kind, B, H)]
        exact = [o for o in options if o.fits and o.exact]
        rows.append(dict(
            cell=kind, B=B, H=H, T=T, budget_fraction=frac, budget_bytes=budget,
            full_bytes=full_bytes,
            strategy=best.strategy if best else "none fits",
            family=_family(best.strategy) if best else "none",
            peak_bytes=best.peak_bytes if best else None,
            memory_fraction=best.peak_bytes / full_bytes if best else None,
            forward_steps=best.forward_steps if best else None,
            recompute_factor=best.recompute_factor if best else None,
            predicted_time_ratio=(predicted_ratio(best.forward_steps, T, c["forward_us"],
                                                  c["backward_us"]) if best else None),
            runner_up=exact[1].strategy if len(exact) > 1 else "",
            planning_seconds=planning,
            truncation=trunc.strategy if trunc else "",
            truncation_k2=(int(trunc.peak_bytes // cell.residual_bytes(B, s.DTYPE))
                           if trunc else 0),
        ))
    return rows


# -- (3) truncation instead ---------------------------------------------------------------


def truncation_errors(s: SimpleNamespace, rows: list[dict], quiet: bool) -> None:
    """Fill `truncation_error` (‖g − g*‖/‖g*‖ over the cell's parameters, `grad_error`:
    the readout's gradient is exact under truncation, NOTE [recurrent error] in
    truncation_bias) where T <= TRUNCATION_MAX_T, at the first size: plan's truncated
    option run on the same random problem as full(), the model at its initialisation.
    Deterministic; no timing."""
    for r in rows:
        r["truncation_error"] = None
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        if (r["T"] <= s.TRUNCATION_MAX_T and r["truncation"]
                and (r["B"], r["H"]) == tuple(s.SIZES[0])):
            groups.setdefault((r["cell"], r["B"], r["H"], r["T"]), []).append(r)
    for (kind, B, H, T), rs in _common.progress(list(groups.items()), quiet=quiet,
                                                desc=f"{NAME}: truncation"):
        model = bm.Model(_cell(kind, H, s.N_IN), s.N_OUT)
        rng = np.random.default_rng(s.SEED)
        params = model.init(rng, s.DTYPE)
        xs, ys = random_problem(model, T, B, rng, s.DTYPE)
        exact = bm.full().run(model, params, xs, ys).grads
        errors: dict[int, float] = {}
        for r in rs:
            k2 = r["truncation_k2"]
            if k2 not in errors:
                run = bm.truncated(k2, k2).run(model, params, xs, ys)
                errors[k2] = grad_error(run.grads, exact, keys=model.cell.param_shapes())[0]
            r["truncation_error"] = errors[k2]


# -- (4) spot checks ----------------------------------------------------------------------


def spot_checks(s: SimpleNamespace, costs: Sequence[dict], quiet: bool) -> list[dict]:
    """Real runs at SPOT_T: the chart's choice, its runner-up and full(), interleaved on
    one BLAS thread; measured time ratios beside the predicted ones."""
    cost = {(c["cell"], c["B"], c["H"]): c for c in costs}
    out = []
    for kind, B, H, frac in _common.progress(s.SPOT_CHECKS, quiet=quiet,
                                             desc=f"{NAME}: spot checks"):
        T = s.SPOT_T
        cell = _cell(kind, H, s.N_IN)
        model = bm.Model(cell, s.N_OUT)
        rng = np.random.default_rng(s.SEED)
        params = model.init(rng, s.DTYPE)
        xs, ys = random_problem(model, T, B, rng, s.DTYPE)
        full_bytes = cell.recorded_bytes(T, B, s.DTYPE)
        options = [o for o in plan(cell, T, B, max(1, int(frac * full_bytes)), s.DTYPE)
                   if o.fits and o.exact and o.strategy != "full()"][:2]
        contenders: dict[str, bm.Strategy] = {"full()": bm.full()}
        for o in options:
            contenders[o.strategy] = _strategy(o.strategy)

        def runner(st: bm.Strategy) -> Callable[[], Any]:
            return lambda: st.run(model, params, xs, ys)

        t = interleaved({n: runner(st) for n, st in contenders.items()}, s.SPOT_ROUNDS,
                        threads=1)
        c = cost[(kind, B, H)]
        for rank, o in enumerate(options):
            res = t[o.strategy].value
            ratios = t[o.strategy].ratios(t["full()"])
            out.append(dict(
                cell=kind, B=B, H=H, T=T, budget_fraction=frac, rank=rank + 1,
                strategy=o.strategy, peak_bytes=res.stats.peak_bytes,
                planned_peak_bytes=o.peak_bytes, forward_steps=res.stats.forward_steps,
                planned_forward_steps=o.forward_steps,
                predicted_time_ratio=predicted_ratio(o.forward_steps, T, c["forward_us"],
                                                     c["backward_us"]),
                measured_time_ratio=t[o.strategy].median / t["full()"].median,
                measured_low=min(ratios), measured_high=max(ratios),
                grad_rel_error=grad_error(res.grads, t["full()"].value.grads)[0]))
    return out


def _strategy(name: str) -> bm.Strategy:
    """The strategy `plan` names, e.g. "binomial(slots=12)" -> bm.binomial(slots=12)."""
    family, args = name.rstrip(")").split("(", 1)
    kwargs = {k.strip(): int(v) for k, v in (a.split("=") for a in args.split(",") if a)}
    return bm.STRATEGIES[family](**kwargs)


# -- figures ------------------------------------------------------------------------------


def plot_chart(s: SimpleNamespace, rows: Sequence[dict]) -> plt.Figure:
    """One panel per (size, cell): T across, budget up, the chosen family's colour and its
    predicted time over full()'s written in each square."""
    colors = ["#dddddd"] + [_common.strategy_color(f) for f in FAMILIES]
    cmap = ListedColormap(colors)
    index = {"none": 0, **{f: i + 1 for i, f in enumerate(FAMILIES)}}
    n_rows, n_cols = len(s.SIZES), len(s.CELLS)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(4.2 * n_cols, 3.4 * n_rows + 0.6),
                             squeeze=False, sharex=True, sharey=True)
    by = {(r["cell"], r["B"], r["H"], r["T"], r["budget_fraction"]): r for r in rows}
    for i, (B, H) in enumerate(s.SIZES):
        for j, kind in enumerate(s.CELLS):
            ax = axes[i][j]
            grid = np.zeros((len(s.FRACTIONS), len(s.STEPS)))
            for y, frac in enumerate(s.FRACTIONS):
                for x, T in enumerate(s.STEPS):
                    r = by[(kind, B, H, T, frac)]
                    grid[y, x] = index[r["family"]]
                    label = ("—" if r["predicted_time_ratio"] is None
                             else f"{r['predicted_time_ratio']:.2f}×")
                    ax.text(x, y, label, ha="center", va="center", fontsize=7)
            ax.imshow(grid, cmap=cmap, vmin=0, vmax=len(colors) - 1, origin="lower",
                      aspect="auto")
            ax.set_xticks(range(len(s.STEPS)), [f"1e{round(math.log10(T))}" for T in s.STEPS])
            ax.set_yticks(range(len(s.FRACTIONS)), [f"{100 * f:g}%" for f in s.FRACTIONS])
            ax.set_title(f"{kind}, B={B}, H={H}", fontsize=10)
            if i == n_rows - 1:
                ax.set_xlabel("T (steps)")
            if j == 0:
                ax.set_ylabel("budget (% of full()'s bytes)")
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in colors]
    fig.legend(handles, ["nothing exact fits", *FAMILIES], loc="lower center",
               ncol=len(colors), frameon=False)
    fig.suptitle("The fastest exact strategy within a memory budget "
                 "(its predicted time over full()'s in each square)", fontsize=11)
    fig.tight_layout(rect=(0, 0.06, 1, 0.96))
    return fig


def plot_cost(s: SimpleNamespace, rows: Sequence[dict]) -> plt.Figure:
    """Predicted time over full()'s against the budget, one line per T, per cell at the
    first size; truncation's measured gradient error beside it."""
    B, H = s.SIZES[0]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    ax, ax_err = axes
    for kind, style in zip(s.CELLS, ("-", "--", ":")):
        for T in s.STEPS:
            pts = [(r["budget_fraction"], r["predicted_time_ratio"]) for r in rows
                   if (r["cell"], r["B"], r["H"], r["T"]) == (kind, B, H, T)
                   and r["predicted_time_ratio"] is not None]
            if pts:
                x, y = zip(*pts)
                color = plt.cm.viridis(s.STEPS.index(T) / max(1, len(s.STEPS) - 1))
                ax.plot(x, y, style, marker="o", ms=3, color=color,
                        label=f"{kind} T=1e{round(math.log10(T))}")
        for T in [T for T in s.STEPS if T <= s.TRUNCATION_MAX_T]:
            pts = [(r["budget_fraction"], r["truncation_error"]) for r in rows
                   if (r["cell"], r["B"], r["H"], r["T"]) == (kind, B, H, T)
                   and r["truncation_error"] is not None]
            if pts:
                x, y = zip(*pts)
                ax_err.plot(x, [max(v, 1e-17) for v in y], style, marker="o", ms=3,
                            label=f"{kind} T={T}")
    ax.set_xscale("log")
    ax.set_xlabel("budget (fraction of full()'s bytes)")
    ax.set_ylabel("predicted time / full()'s")
    ax.set_title(f"The best exact strategy's cost (B={B}, H={H})", fontsize=10)
    ax.legend(fontsize=6, ncol=3)
    ax_err.set_xscale("log")
    ax_err.set_yscale("log")
    ax_err.set_xlabel("budget (fraction of full()'s bytes)")
    ax_err.set_ylabel("truncated(k2, k2)'s gradient rel. error")
    ax_err.set_title("Truncating to the same budget instead (model at init)", fontsize=10)
    ax_err.legend(fontsize=7)
    fig.tight_layout()
    return fig


# -- the report ---------------------------------------------------------------------------


def _fmt_ratio(x: float | None) -> str:
    return "—" if x is None else f"{x:.2f}×"


def _range(values: Sequence[float]) -> str:
    if not values:
        return "—"
    lo, hi = min(values), max(values)
    return f"{lo:.2f}×" if f"{lo:.2f}" == f"{hi:.2f}" else f"{lo:.2f}–{hi:.2f}×"


def _lead(s: SimpleNamespace, rows: Sequence[dict]) -> str:
    """The answer in one paragraph, from the chart's own rows."""
    parts = []
    for frac in sorted(s.FRACTIONS, reverse=True):
        at = [r for r in rows if r["budget_fraction"] == frac]
        priced = [r["predicted_time_ratio"] for r in at if r["predicted_time_ratio"] is not None]
        families = sorted({r["family"] for r in at if r["family"] != "none"},
                          key=FAMILIES.index)
        none = sum(r["family"] == "none" for r in at)
        parts.append(f"at {100 * frac:g}% of full()'s bytes, {' or '.join(families) or 'nothing'}"
                     + (f" ({_range(priced)} full()'s time)" if priced else "")
                     + (f", nothing exact in {none} of {len(at)} cases" if none else ""))
    return ("Give `bptt-memory plan` your T, cell, batch, hidden size and budget: its answer "
            "is the chart's. Across every cell, size and T from "
            f"{min(s.STEPS):,} to {max(s.STEPS):,}: " + "; ".join(parts) + ". Below the "
            "smallest budgets the exact strategies run out of room before they run out of "
            "time: the floor is one stored state and one step's residuals.")


def _families_line(rows: Sequence[dict]) -> str:
    counts = {f: sum(r["family"] == f for r in rows) for f in ("none", *FAMILIES)}
    return ", ".join(f"{n} {'have nothing exact that fits' if f == 'none' else f'pick {f}'}"
                     for f, n in counts.items() if n)


def _grid_table(s: SimpleNamespace, rows: Sequence[dict], kind: str, B: int, H: int) -> str:
    by = {(r["T"], r["budget_fraction"]): r for r in rows
          if (r["cell"], r["B"], r["H"]) == (kind, B, H)}
    table = []
    for T in s.STEPS:
        line: dict[str, Any] = {"T": f"{T:,}"}
        for frac in s.FRACTIONS:
            r = by[(T, frac)]
            line[f"{100 * frac:g}%"] = ("none fits" if r["family"] == "none" else
                                        f"{r['strategy']} {_fmt_ratio(r['predicted_time_ratio'])}")
        table.append(line)
    return _common.md_table(table)


def write_report(d: Path, s: SimpleNamespace, costs: list[dict], rows: list[dict],
                 spots: list[dict], seconds: float, load: tuple[float, float],
                 command: str) -> Path:
    B0, H0 = s.SIZES[0]
    planning = {T: [r["planning_seconds"] for r in rows if r["T"] == T] for T in s.STEPS}
    plan_table = _common.md_table([
        {"T": f"{T:,}", "median plan() time": f"{statistics.median(v) * 1e3:.3g} ms",
         "slowest": f"{max(v) * 1e3:.3g} ms"} for T, v in planning.items()])
    trunc = [r for r in rows if r["truncation_error"] is not None and r["B"] == B0
             and r["H"] == H0]
    trunc_table = _common.md_table([
        {"cell": r["cell"], "T": r["T"], "budget": f"{100 * r['budget_fraction']:g}%",
         "truncation": r["truncation"], "gradient rel. error": f"{r['truncation_error']:.2g}",
         "exact choice": r["strategy"], "its time": _fmt_ratio(r["predicted_time_ratio"])}
        for r in trunc if r["budget_fraction"] < 1])
    spot_table = _common.md_table([
        {"config": f"{r['cell']} B={r['B']} H={r['H']} T={r['T']}",
         "budget": f"{100 * r['budget_fraction']:g}%", "rank": r["rank"],
         "strategy": r["strategy"], "predicted": _fmt_ratio(r["predicted_time_ratio"]),
         "measured (median)": _fmt_ratio(r["measured_time_ratio"]),
         "per-round range": f"{r['measured_low']:.2f}–{r['measured_high']:.2f}×",
         "peak as planned": r["peak_bytes"] == r["planned_peak_bytes"],
         "steps as planned": r["forward_steps"] == r["planned_forward_steps"],
         "grad rel. error": f"{r['grad_rel_error']:.1e}"} for r in spots])
    order_held = [(a, b) for a, b in zip(spots, spots[1:])
                  if a["rank"] == 1 and b["rank"] == 2 and a["cell"] == b["cell"]
                  and a["budget_fraction"] == b["budget_fraction"]]
    held = sum(a["measured_time_ratio"] <= b["measured_time_ratio"] for a, b in order_held)
    apart = [(a, b) for a, b in order_held
             if b["predicted_time_ratio"] > (1 + APART) * a["predicted_time_ratio"]]
    held_apart = sum(a["measured_time_ratio"] <= b["measured_time_ratio"] for a, b in apart)
    errors = [abs(r["measured_time_ratio"] / r["predicted_time_ratio"] - 1) for r in spots]
    cost_table = _common.md_table([
        {"cell": c["cell"], "B": c["B"], "H": c["H"],
         "forward step": f"{c['forward_us']:.3g} µs", "backward step": f"{c['backward_us']:.3g} µs",
         "full() run": f"{c['run_seconds'] * 1e3:.3g} ms at T={c['T']}"} for c in costs])
    other_tables = [part for B, H in s.SIZES for kind in s.CELLS
                    if (kind, B, H) != ("lstm", B0, H0)
                    for part in (f"**{kind}, B={B}, H={H}**", _grid_table(s, rows, kind, B, H))]
    smoke = ("> **Smoke run at toy sizes: the figures below exercise the code and answer "
             "nothing.**" if s.small else "")
    lstm_table = (_grid_table(s, rows, "lstm", B0, H0) if "lstm" in s.CELLS else "")
    lead = [smoke, _lead(s, rows), _common.figure("chart.png", "the decision chart"), f"""\
Each square is a sequence length T and a memory budget, as a share of what full() would
hold (`cell.recorded_bytes(T, B)`, {DTYPE}); its colour is the exact strategy
`bptt_memory.compare.plan` picks, the one ``bptt-memory plan`` names, and the figure in it
that strategy's predicted time over full()'s. Grey: not even one stored state and one
step's residuals fit. Budgets are per sequence of B={B0}-wide batches; I={s.N_IN},
a readout of {s.N_OUT} at every step."""]
    report = _common.Report("Which strategy should I use?",
                            "\n\n".join(part for part in lead if part))
    report.section(
        f"The chart as a table: lstm, B={B0}, H={H0}",
        """\
Every cell and size is in [chart.csv](chart.csv) (also the runner-up, the peak bytes,
the forward steps and the planning time of every point).""",
        lstm_table)
    report.section(
        "What it costs, and what truncation would cost instead",
        _common.figure("cost.png", "cost against budget, and truncation's error"),
        f"""\
Truncating to the same budget keeps k2 = budget / (one step's residuals) steps and costs
no extra time, but biases the gradient. Measured where full() gives the exact gradient
(T ≤ {s.TRUNCATION_MAX_T:,}, at B={B0}, H={H0}), on a random problem with the model at its
initialisation, as the relative error over the cell's parameters
(`bptt_memory.compare.grad_error`; the readout's gradient is exact under truncation): how much
truncation loses depends on the task and on training (see
[truncation_bias](../truncation_bias/report.md) for recurrent weights, spectral radii and
trained models), so read this as the size of the effect, not as a promise.""",
        trunc_table)
    report.section(
        "Spot checks: real runs",
        f"""\
The chart's choice (rank 1) and the runner-up (rank 2) at T = {s.SPOT_T:,}, each run
against full() in {s.SPOT_ROUNDS} interleaved rounds on one BLAS thread
(`bptt_memory.timing`); the prediction is from the step costs below. Every run's peak
bytes and forward steps are checked against plan's; the measured time is within
{max(errors) * 100 if errors else 0:.0f}% of the predicted one in the worst case. The
choice was at least as fast as its runner-up in {held} of {len(order_held)} pairs; in the
{len(apart)} pair{"s" * (len(apart) != 1)} whose predictions differ by more than
{100 * APART:g}%, in {held_apart} (where they differ by less, the order is within the
rounds' spread).""",
        spot_table)
    report.section(
        "How the times are predicted",
        f"""\
Every exact strategy makes T backward steps and some number F ≥ T of forward steps
(`Plan.forward_steps`, the schedule simulator's count). Its time over full()'s is
predicted as (F·f + T·b) / (T·(f + b)), with f and b full()'s median forward and backward
seconds per step, measured on this machine (one BLAS thread, {s.STEP_COST_ROUNDS}
interleaved rounds of full() at T = {s.STEP_COST_T}; phase times from
`bm.Profile(products=False)`). The prediction leaves out the executor's bookkeeping
between steps, which the spot checks include; for the same reason the fewest forward
steps is the fastest choice.""",
        cost_table,
        # Provenance is _common's, the same for every study: this run's own time and load
        # go beside the timings they qualify
        f"""\
The study took {seconds:.0f} s; the 1-minute load average was {load[0]:.2f} before and
{load[1]:.2f} after on {os.cpu_count()} cores (the step costs and spot checks are timings on
a machine that may be shared: read their ratios, not their seconds).""")
    report.section(
        "How long planning takes",
        "Wall time of one `plan()` call (every option, the chosen one included), by T:",
        plan_table,
        f"""\
`plan` prices every option through its own `Strategy.cost` (closed forms, or optimal's
planner), and the chart calls nothing else: a faster or a different planner shows up here
when the study is run again, and `tests/test_study_choosing_a_strategy.py` fails on a
committed chart that `bptt-memory plan` no longer agrees with. Of the {len(rows)} points,
{_families_line(rows)}.""")
    report.section("The other cells and sizes", *other_tables)
    report.file("step_costs.csv", "per cell and size: full()'s median forward and backward "
                                  f"microseconds per step over {s.STEP_COST_ROUNDS} interleaved "
                                  f"rounds at T = {s.STEP_COST_T}, and the median seconds of a "
                                  "whole full() run.")
    report.file("chart.csv", "one row per (cell, B, H, T, budget fraction): the budget and "
                             "full()'s bytes; plan's exact choice (strategy and family), its "
                             "peak bytes, share of full()'s, forward steps, recompute factor "
                             "and predicted time over full()'s; the runner-up; the planning "
                             "time; and the truncation that fits the same budget, its k2 and "
                             "its gradient error where it was measured.")
    report.file("spot_checks.csv", "one row per spot check and rank: the strategy's peak bytes "
                                   "and forward steps beside plan's, its predicted and measured "
                                   "time over full()'s (median and per-round range) and its "
                                   "gradient error against full()'s.")
    report.file("summary.json", "the settings, the seconds the study took and the number of "
                                "CPUs.")
    return report.write(d, command, pinned=1)


# -- run ----------------------------------------------------------------------------------


def run(out: Path | str | None = None, *, small: bool = False, quiet: bool = False) -> Path:
    """Measure step costs, plan every point, check a few by real runs; write the report."""
    start, load_before = time.perf_counter(), os.getloadavg()[0]
    s = _settings(small)
    d = _common.report_dir(out, NAME, small)
    costs = step_costs(s, quiet)
    rows = chart(s, costs, quiet)
    truncation_errors(s, rows, quiet)
    spots = spot_checks(s, costs, quiet)
    seconds = time.perf_counter() - start
    _common.write_csv(d / "step_costs.csv", costs)
    _common.write_csv(d / "chart.csv", rows)
    _common.write_csv(d / "spot_checks.csv", spots)
    _common.write_json(d / "summary.json", {"settings": vars(s), "seconds": seconds,
                                            "cpus": os.cpu_count()})
    _common.save_figure(plot_chart(s, rows), d / "chart.png")
    _common.save_figure(plot_cost(s, rows), d / "cost.png")
    return write_report(d, s, costs, rows, spots, seconds, (load_before, os.getloadavg()[0]),
                        _common.command_line(NAME, small))


def main(argv: Sequence[str] | None = None) -> None:
    _common.study_main(NAME, run, __doc__, argv)


if __name__ == "__main__":
    main()


