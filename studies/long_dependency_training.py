"""Training on a long dependency: what each strategy's memory saving costs in learning.

Every strategy trains the same GRU on the adding problem (the target, read at the last
step, is the sum of two marked numbers, the first more than T/2 steps back) from the
same init, on the same batches, with the same Adam and gradient clipping, one update per
sequence. The exact strategies (full, uniform, binomial, optimal, and truncated with
k2 >= T) compute the same gradient to rounding, so their learning curves should coincide
while their memory differs by an order of magnitude; truncation shorter than the
dependency cuts the gradient from the first marker, and the study measures what that
does to learning.

References: Hochreiter & Schmidhuber 1997 and Le et al. 2015 (the adding problem);
Kingma & Ba 2015 (Adam, Algorithm 1); Pascanu et al. 2013 (clipping by global norm).

Run: ``bptt-memory study long_dependency_training [--small] [--out DIR]``.
"""

from __future__ import annotations

import concurrent.futures
import math
import multiprocessing
import os
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Sequence

import matplotlib.pyplot as plt
import matplotlib.ticker
import numpy as np

import bptt_memory as bm
from bptt_memory.compare import OPTIMAL_FRACTION, compare, format_bytes, grad_error
from bptt_memory.tasks import adding_problem

from . import _common

NAME = "long_dependency_training"
CELL_FACTORIES = bm.CELLS  # every built-in cell, by name

# -- the task -----------------------------------------------------------------------------
T = 200  # steps per sequence; the first marker lies in [0, T/2), the second in [T/2, T)
BATCH = 32  # sequences per update, fresh every update (the same ones for every strategy)
TEST_SIZE = 1000  # held-out sequences for test MSE and accuracy
TOLERANCE = 0.04  # a prediction is "correct" when |error| < TOLERANCE
# -- the model and optimiser (the same for every strategy) --------------------------------
CELL = "gru"  # trials: an LSTM (forget bias 1 or 3) sat at the baseline for 400 updates
HIDDEN = 32  # H
UPDATES = 3000  # one update per sequence batch: long enough for the exact runs to plateau
# a truncated run that has not plateaued after UPDATES goes on, a quarter of UPDATES at a
# time, until it plateaus or reaches MAX_UPDATES (NOTE [train to a plateau])
MAX_UPDATES = 4 * UPDATES
LR = 1e-2  # Adam step size
BETAS = (0.9, 0.999)  # Adam's moment decays
EPS = 1e-8  # Adam's denominator guard
CLIP = 1.0  # gradients are rescaled to this global norm when longer
SEED = 0  # params; the training batches use SEED + 1 and the test set SEED + 2
# full() and the truncated strategies are also trained from these seeds (params and batches;
# the test set stays): the exact strategies repeat full()'s curve, so they run once
EXTRA_SEEDS = (1, 2)
PLATEAU = 0.25  # a run has plateaued when its median test MSE over the last quarter of the
# updates is less than this (relative) below the median over the quarter before, ...
PLATEAU_ABS = 0.01  # ... or less than this fraction of the baseline MSE below it (NOTE [plateau])
EVAL_EVERY = 25  # updates between test evaluations
# -- strategies ----------------------------------------------------------------------------
SHORT_K = (20, T // 4)  # truncated(k, k) with k shorter than the dependency
LONG_K1 = T // 4  # truncated(LONG_K1, T): updates as often as truncated(T/4), exact
TIMING_REPEATS = 5  # interleaved timed runs per strategy (bm.compare), median reported
WORKERS = 2  # training runs in parallel processes; timing is done alone afterwards
# -- toy sizes for --small (seconds) ---------------------------------------------------------
SMALL = dict(T=16, BATCH=8, TEST_SIZE=64, HIDDEN=8, UPDATES=12, MAX_UPDATES=24, EVAL_EVERY=3,
             SHORT_K=(2, 4), LONG_K1=4, TIMING_REPEATS=1, WORKERS=1, EXTRA_SEEDS=(1,))


def _settings(small: bool) -> SimpleNamespace:
    names = ("T", "BATCH", "TEST_SIZE", "TOLERANCE", "CELL", "HIDDEN", "UPDATES", "MAX_UPDATES",
             "LR", "BETAS", "EPS", "CLIP", "SEED", "EVAL_EVERY", "SHORT_K", "LONG_K1",
             "TIMING_REPEATS", "WORKERS", "EXTRA_SEEDS", "PLATEAU", "PLATEAU_ABS")
    return _common.settings(globals(), names, small)


def _model(s: SimpleNamespace) -> bm.Model:
    return bm.Model(CELL_FACTORIES[s.CELL](2, s.HIDDEN), n_out=1, loss="mse")


def strategies(s: SimpleNamespace) -> dict[str, bm.Strategy]:
    """Every strategy trained, by label; the exact ones first."""
    cell, T = _model(s).cell, s.T
    rb = cell.residual_bytes(s.BATCH, np.float64)
    # OPTIMAL_FRACTION of full()'s bytes, its linked steps counted (`Cell.recorded_bytes`)
    full_bytes = cell.recorded_bytes(T, s.BATCH, np.float64)
    out: dict[str, bm.Strategy] = {
        "full": bm.full(),
        "uniform": bm.uniform(),
        "binomial": bm.binomial(slots=max(1, round(math.sqrt(T)))),
        "optimal": bm.optimal(budget_bytes=max(rb, int(OPTIMAL_FRACTION * full_bytes))),
        f"truncated({s.LONG_K1}, {T})": bm.truncated(s.LONG_K1, T),
    }
    for k in s.SHORT_K:
        out[f"truncated({k}, {k})"] = bm.truncated(k, k)
    return out


def is_exact(strategy: bm.Strategy, T: int) -> bool:
    return not isinstance(strategy, bm.Truncated) or strategy.k2 >= T


# -- training -----------------------------------------------------------------------------


def predict(model: bm.Model, params: dict, xs: np.ndarray) -> np.ndarray:
    """The model's output at the last step, (B,): a plain forward pass, nothing kept."""
    cell = model.cell
    state = model.zero_state(xs.shape[1], xs.dtype)
    for x in xs:
        state = cell.step(params, x, state)
    return cell.output(state) @ params["weight_out"][0] + params["bias_out"][0]


def train(s: SimpleNamespace, label: str, seed: int | None = None) -> dict:
    """Train from the shared init with one strategy; the curves and the final params.

    At every evaluation the update's gradient is also compared with full()'s on the same
    batch at the same params, so a biased strategy shows its bias along the way. `seed`
    (SEED by default) draws the params and, offset by one, the training batches. Runs
    UPDATES updates; a biased strategy's run goes on to a plateau (NOTE [train to a
    plateau]).
    """
    seed = s.SEED if seed is None else seed
    strategy = strategies(s)[label]
    extend = not is_exact(strategy, s.T)
    model = _model(s)
    params = model.init(np.random.default_rng(seed))
    data = np.random.default_rng(seed + 1)  # the same batches for every strategy
    xt, yt, _ = adding_problem(s.T, s.TEST_SIZE, np.random.default_rng(s.SEED + 2))
    baseline = float(np.var(yt[-1, :, 0]))
    m = {k: np.zeros_like(p) for k, p in params.items()}
    v = {k: np.zeros_like(p) for k, p in params.items()}
    losses, norms, evals = [], [], []
    stop = s.UPDATES
    i = 0
    with _common.pinned_blas(1):
        while i < stop:
            i += 1
            xs, ys, mask = adding_problem(s.T, s.BATCH, data)
            r = strategy.run(model, params, xs, ys, mask=mask)
            losses.append(r.loss)
            check = i % s.EVAL_EVERY == 0 or i == stop
            if check:  # before the step: full() at the same params, on the same batch
                exact = r if label == "full" else bm.full().run(model, params, xs, ys, mask=mask)
                rel, cos = grad_error(r.grads, exact.grads)
            norms.append(_common.adam_step(params, r.grads, m, v, i, lr=s.LR, betas=s.BETAS,
                                                eps=s.EPS, clip=s.CLIP))
            if check:
                err = predict(model, params, xt) - yt[-1, :, 0]
                evals.append(dict(update=i, test_mse=float(np.mean(err * err)),
                                  test_accuracy=float(np.mean(np.abs(err) < s.TOLERANCE)),
                                  grad_rel_error=rel, grad_cosine=cos))
            if (i == stop and extend and i < s.MAX_UPDATES
                    and not plateaued(s, evals, baseline)):
                stop = min(s.MAX_UPDATES, stop + max(1, s.UPDATES // 4))
    return dict(label=label, seed=seed, updates=i, losses=losses, grad_norms=norms, evals=evals,
                params=params,
                peak_bytes=r.stats.peak_bytes, forward_steps=r.stats.forward_steps,
                backward_steps=r.stats.backward_steps,
                error_by_distance=error_by_distance(s, model, params))


def error_by_distance(s: SimpleNamespace, model: bm.Model, params: dict) -> list[dict]:
    """Test MSE grouped by how far back from the last step each marker lies.

    A marker at step index n is d = T − n steps back (d = 1 at the last step), inside
    the window of truncated(k1, k2)'s last update exactly when d <= k2. The second
    marker is 1 … T/2 steps back, the first T/2 + 1 … T.
    """
    xt, yt, _ = adding_problem(s.T, s.TEST_SIZE, np.random.default_rng(s.SEED + 2))
    markers = xt[:, :, 1]  # (T, B)
    back = {"second": 1 + np.argmax(markers[::-1], axis=0),  # (B,) steps back
            "first": s.T - np.argmax(markers, axis=0)}
    err = predict(model, params, xt) - yt[-1, :, 0]
    half = s.T // 2
    edges = {"second": [0, *sorted(set(s.SHORT_K)), half],
             "first": [half, half + (s.T - half) // 2, s.T]}
    rows = []
    for marker, e in edges.items():
        for lo, hi in zip(e, e[1:]):
            sel = (back[marker] > lo) & (back[marker] <= hi)
            rows.append(dict(marker=marker, lo=int(lo), hi=int(hi), n=int(sel.sum()),
                             test_mse=float(np.mean(err[sel] ** 2)) if sel.any() else float("nan")))
    return rows


def _mse_where(rows: Sequence[dict], marker: str, lo: int, hi: int) -> float:
    """Pooled test MSE over the groups of `marker` that lie within (lo, hi] steps back."""
    sel = [r for r in rows if r["marker"] == marker and lo <= r["lo"] and r["hi"] <= hi and r["n"]]
    return sum(r["test_mse"] * r["n"] for r in sel) / sum(r["n"] for r in sel)


def train_all(s: SimpleNamespace, quiet: bool) -> tuple[dict[str, dict], list[dict]]:
    """Every strategy from SEED (by label), and full() and the truncated strategies from
    each of EXTRA_SEEDS too (a list of runs, SEED's included)."""
    labels = list(strategies(s))
    strats = strategies(s)
    jobs = [(label, s.SEED) for label in labels] + [
        (label, seed) for seed in s.EXTRA_SEEDS for label in labels
        if label == "full" or not is_exact(strats[label], s.T)]
    bar = _common.progress(total=len(jobs), quiet=quiet, desc=f"{NAME}: training")
    done: dict[tuple[str, int], dict] = {}
    if s.WORKERS > 1:
        # NOTE [parallel training] Each run is deterministic and independent, so runs go to
        # separate processes (spawned: nothing inherited); times per update are measured
        # afterwards, alone, by `compare`.
        ctx = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(s.WORKERS, mp_context=ctx) as pool:
            futures = [pool.submit(train, s, label, seed) for label, seed in jobs]
            for f in concurrent.futures.as_completed(futures):
                r = f.result()
                done[r["label"], r["seed"]] = r
                bar.update()
    else:
        for label, seed in jobs:
            done[label, seed] = train(s, label, seed)
            bar.update()
    bar.close()
    first = {label: done[label, s.SEED] for label in labels}
    seeded = [r for r in done.values() if r["label"] == "full" or not is_exact(
        strats[r["label"]], s.T)]
    return first, seeded


# NOTE [plateau] A run has plateaued when its last quarter of updates lowered the median
# test MSE little: by less than PLATEAU of itself, or by less than PLATEAU_ABS of the
# baseline MSE (predicting the mean). The second clause is for runs that have solved the
# task: near zero, Adam at a constant step keeps shaving the error by large fractions of
# itself (1e-4 to 5e-5 is a halving) while it moves by nothing at the task's scale.
#
# NOTE [train to a plateau] "Is truncation worse, or only slower?" is only answered by
# runs that have stopped improving. So a biased run that has not plateaued after UPDATES
# goes on, a quarter of UPDATES at a time, judged on its own last quarter each time, until
# it plateaus or reaches MAX_UPDATES. Exact runs stop at UPDATES: they repeat full()'s
# curve, which is compared with theirs update by update; if full() has not plateaued, the
# verdict says so. A biased run is given more updates than full(), never fewer, so
# "worse" is a conservative verdict.


def late_fall(evals: Sequence[dict], baseline: float) -> tuple[float, float]:
    """How much the median test MSE still fell from the third quarter of a run's updates
    to the last (0 when it rose: no progress): relative to the last, and as a fraction
    of the baseline MSE. The run's length is its last evaluation's update."""
    if not evals:
        return float("inf"), float("inf")
    n = evals[-1]["update"]
    third = [e["test_mse"] for e in evals if 0.5 * n < e["update"] <= 0.75 * n]
    last = [e["test_mse"] for e in evals if e["update"] > 0.75 * n]
    if not third or not last:
        return float("inf"), float("inf")
    m3, m4 = float(np.median(third)), float(np.median(last))
    return max(0.0, (m3 - m4) / max(m4, 1e-300)), max(0.0, (m3 - m4) / baseline)


def plateaued(s: SimpleNamespace, evals: Sequence[dict], baseline: float) -> bool:
    """Whether a run's test curve has plateaued (NOTE [plateau])."""
    rel, absolute = late_fall(evals, baseline)
    return rel < s.PLATEAU or absolute < s.PLATEAU_ABS


def over_seeds(s: SimpleNamespace, seeded: Sequence[dict], threshold: float,
               baseline: float) -> list[dict]:
    """Per strategy trained from several seeds: its final test MSE's median and range,
    when it first got below `threshold` (median over seeds that did), and whether every
    run plateaued (NOTE [plateau]; `baseline` is the baseline MSE)."""
    out = []
    for label in dict.fromkeys(r["label"] for r in seeded):
        rs = [r for r in seeded if r["label"] == label]
        finals = [r["evals"][-1]["test_mse"] for r in rs]
        firsts = [f for r in rs if (f := first_below(r["evals"], threshold)) is not None]
        falls = [late_fall(r["evals"], baseline) for r in rs]
        updates = [r["evals"][-1]["update"] for r in rs]
        out.append(dict(strategy=label, seeds=len(rs),
                        updates=(f"{min(updates)}" if min(updates) == max(updates)
                                 else f"{min(updates)}–{max(updates)}"),
                        final_test_mse_median=float(np.median(finals)),
                        final_test_mse_min=min(finals), final_test_mse_max=max(finals),
                        reached_threshold=f"{len(firsts)} of {len(rs)}",
                        first_below_median=float(np.median(firsts)) if firsts else None,
                        plateaued=all(plateaued(s, r["evals"], baseline) for r in rs),
                        largest_late_change=max(f[0] for f in falls),
                        largest_late_change_of_baseline=max(f[1] for f in falls)))
    return out


def worse_or_slower(rows: Sequence[dict]) -> list[str]:
    """For each truncated strategy against full() over the same seeds: "worse" when its
    best final MSE is above full()'s worst, "only slower" when the ranges overlap."""
    by = {r["strategy"]: r for r in rows}
    full = by["full"]
    out = []
    for label, r in by.items():
        if label == "full":
            continue
        if r["final_test_mse_min"] > full["final_test_mse_max"]:
            verdict = "worse: its best seed ends above full()'s worst"
        else:
            verdict = "only slower or level: its final MSE overlaps full()'s over the seeds"
        if not (r["plateaued"] and full["plateaued"]):
            verdict += " (not every run had plateaued, so this is provisional)"
        out.append(f"`{label}` is {verdict}")
    return out


# -- analysis -------------------------------------------------------------------------------


def curve_differences(s: SimpleNamespace, runs: dict[str, dict]) -> list[dict]:
    """Each exact strategy's largest departure from full()'s run, over all updates."""
    ref = runs["full"]
    L = np.array(ref["losses"])
    P = np.concatenate([ref["params"][k].ravel() for k in sorted(ref["params"])])
    out = []
    for label, r in runs.items():
        if label == "full" or not is_exact(strategies(s)[label], s.T):
            continue
        diff = np.abs(np.array(r["losses"]) - L)
        p = np.concatenate([r["params"][k].ravel() for k in sorted(r["params"])])
        out.append(dict(strategy=label, max_abs_loss_diff=float(diff.max()),
                        max_rel_loss_diff=float((diff / np.abs(L)).max()),
                        final_params_rel_diff=float(np.linalg.norm(p - P) / np.linalg.norm(P))))
    return out


def first_below(evals: Sequence[dict], threshold: float) -> int | None:
    return next((e["update"] for e in evals if e["test_mse"] < threshold), None)


def time_strategies(s: SimpleNamespace, quiet: bool) -> list:
    """One gradient per strategy at the initial params, timed interleaved (`bm.compare`)."""
    model = _model(s)
    params = model.init(np.random.default_rng(s.SEED))
    xs, ys, mask = adding_problem(s.T, s.BATCH, np.random.default_rng(s.SEED + 3))
    strats = strategies(s)
    with _common.pinned_blas(1):
        def bar(total: int) -> Any:
            return _common.progress(total=total, quiet=quiet, desc=f"{NAME}: timing")

        return compare(model, params, xs, ys, strats, mask=mask, repeats=s.TIMING_REPEATS,
                       trace_memory=True, progress=bar)


# -- figures ------------------------------------------------------------------------------


def _styles(s: SimpleNamespace, labels: Sequence[str]) -> dict[str, dict]:
    """Exact strategies share a colour family with different dashes so overlaps show."""
    exact_colors = plt.cm.Blues(np.linspace(0.95, 0.45, 5))
    short_colors = plt.cm.Oranges(np.linspace(0.85, 0.55, max(1, len(s.SHORT_K))))
    dashes = [(None, None), (6, 2), (2, 2), (8, 3, 2, 3), (1, 3)]
    out, e, t = {}, 0, 0
    for label in labels:
        if is_exact(strategies(s)[label], s.T):
            out[label] = dict(color=exact_colors[e % 5], lw=2.6 - 0.4 * e, dashes=dashes[e % 5])
            e += 1
        else:
            out[label] = dict(color=short_colors[t % len(short_colors)], lw=1.6,
                              dashes=(None, None))
            t += 1
    return out


def _smooth(y: Sequence[float], w: int) -> np.ndarray:
    y = np.asarray(y, float)
    w = max(1, min(w, len(y)))
    c = np.cumsum(np.insert(y, 0, 0.0))
    out = np.empty_like(y)
    for i in range(len(y)):  # trailing mean over the last w updates
        j = max(0, i + 1 - w)
        out[i] = (c[i + 1] - c[j]) / (i + 1 - j)
    return out


def plot_curves(s: SimpleNamespace, runs: dict[str, dict], baseline: float) -> plt.Figure:
    fig, (a, b, c) = plt.subplots(1, 3, figsize=(17, 4.6))
    styles = _styles(s, list(runs))
    w = max(1, s.UPDATES // 25)
    # Truncated runs first, so the exact ones (dashed, on top) show that they coincide.
    order = sorted(runs, key=lambda label: is_exact(strategies(s)[label], s.T))
    for label in order:
        r, st = runs[label], styles[label]
        kw = dict(color=st["color"], lw=st["lw"], label=label)
        line, = a.plot(np.arange(1, len(r["losses"]) + 1), _smooth(r["losses"], w), **kw)
        if st["dashes"][0] is not None:
            line.set_dashes(st["dashes"])
        u = [e["update"] for e in r["evals"]]
        line, = b.plot(u, [e["test_mse"] for e in r["evals"]], marker="o", ms=2.5, **kw)
        if st["dashes"][0] is not None:
            line.set_dashes(st["dashes"])
        if not is_exact(strategies(s)[label], s.T):  # exact ones are 0: off a log axis
            c.plot(u, [e["grad_rel_error"] for e in r["evals"]], marker="o", ms=2.5, **kw)
    for ax in (a, b):
        ax.axhline(baseline, color="grey", ls=":", lw=1, label=f"predict the mean ({baseline:.3f})")
        ax.set(yscale="log", xlabel="update")
        ax.grid(True, alpha=0.3)
    a.set(ylabel=f"training MSE (trailing mean of {w} updates)",
          title=f"{s.CELL.upper()} H={s.HIDDEN}, adding problem T={s.T}, B={s.BATCH}")
    b.set(ylabel=f"test MSE ({s.TEST_SIZE} sequences)", title="held-out test MSE")
    b.legend(fontsize=7, loc="lower left")
    c.set(yscale="log", xlabel="update", ylabel="‖g − g_full‖ / ‖g_full‖ on the training batch",
          title="truncated gradient's error along training")
    c.grid(True, alpha=0.3)
    if c.lines:
        c.legend(fontsize=7)
    fig.tight_layout()
    return fig


def plot_cost(rows: Sequence[dict]) -> plt.Figure:
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 3.8))
    labels = [r["strategy"] for r in rows]
    y = np.arange(len(rows))
    colors = ["tab:blue" if r["exact"] else "tab:orange" for r in rows]
    peaks = [r["peak_bytes"] / 2**10 for r in rows]
    a.barh(y, peaks, color=colors)
    a.set(xscale="log", xlabel="peak bytes kept for the backward pass (KiB, log)",
          xlim=(min(peaks) / 2, max(peaks) * 4))
    a.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    for i, r in enumerate(rows):
        a.text(peaks[i] * 1.1, i, format_bytes(r["peak_bytes"]), va="center", fontsize=8)
    ms = [r["seconds_per_update"] * 1e3 for r in rows]
    b.barh(y, ms, color=colors)
    b.set(xlabel="time per update (ms, median)", xlim=(0, max(ms) * 1.25))
    for i, r in enumerate(rows):
        b.text(ms[i], i, f" {r['time_ratio']:.2f}× full", va="center", fontsize=8)
    for ax in (a, b):
        ax.set_yticks(y, labels)
        ax.invert_yaxis()
        ax.grid(True, axis="x", alpha=0.3)
    b.set_yticklabels([])
    fig.suptitle("Blue: exact gradient. Orange: truncated shorter than the dependency.", fontsize=9)
    fig.tight_layout()
    return fig


# -- report ---------------------------------------------------------------------------------


def run(out: Path | str | None = None, *, small: bool = False, quiet: bool = False) -> Path:
    """Train, time, plot and write reports/long_dependency_training/report.md; return its path."""
    s = _settings(small)
    d = _common.report_dir(out, NAME, small)
    t0 = time.perf_counter()
    runs, seeded = train_all(s, quiet)
    train_wall = time.perf_counter() - t0
    load = os.getloadavg()[0]  # the timings below are only as quiet as the machine
    timing = {row.strategy: row for row in time_strategies(s, quiet)}
    strats = strategies(s)

    _, yt, _ = adding_problem(s.T, s.TEST_SIZE, np.random.default_rng(s.SEED + 2))
    y_test = yt[-1, :, 0]
    baseline_mse = float(np.var(y_test))  # predicting the test mean; 1/6 in expectation
    baseline_acc = float(np.mean(np.abs(y_test - y_test.mean()) < s.TOLERANCE))
    threshold = 0.1 * baseline_mse

    table, curve_rows = [], []
    full_peak = runs["full"]["peak_bytes"]
    for label, r in runs.items():
        st, tm = strats[label], timing[strats[label].name]
        last = r["evals"][-1]
        table.append(dict(
            strategy=label, exact=is_exact(st, s.T), peak_bytes=r["peak_bytes"],
            memory_fraction=r["peak_bytes"] / full_peak, traced_peak_bytes=tm.traced_peak_bytes,
            forward_per_T=r["forward_steps"] / s.T, backward_per_T=r["backward_steps"] / s.T,
            seconds_per_update=tm.seconds, time_ratio=tm.time_ratio,
            grad_rel_error_at_init=tm.grad_rel_error, final_test_mse=last["test_mse"],
            final_test_accuracy=last["test_accuracy"],
            first_update_below_10pct_baseline=first_below(r["evals"], threshold),
            updates=r["updates"],
            final_train_mse_mean_last_25=float(np.mean(r["losses"][-25:])),
        ))
        for i, (loss, norm) in enumerate(zip(r["losses"], r["grad_norms"]), start=1):
            curve_rows.append(dict(strategy=label, update=i, train_mse=loss, grad_norm=norm))
    evals = [dict(strategy=label, **e) for label, r in runs.items() for e in r["evals"]]
    diffs = curve_differences(s, runs)
    seeds_table = over_seeds(s, seeded, threshold, baseline_mse)
    _common.write_csv(d / "seeds.csv", seeds_table)

    _common.write_csv(d / "curves.csv", curve_rows)
    _common.write_csv(d / "test_curves.csv", evals)
    _common.write_csv(d / "summary.csv", table)
    _common.write_csv(d / "exact_curve_differences.csv", diffs)
    _common.write_csv(d / "error_by_distance.csv", [
        dict(strategy=label, **row) for label, r in runs.items() for row in r["error_by_distance"]])
    _common.write_json(d / "summary.json", dict(
        settings=vars(s), baseline_mse=baseline_mse, baseline_accuracy=baseline_acc,
        train_wall_seconds=train_wall, load_average_at_timing=load, table=table,
        exact_curve_differences=diffs,
        strategies={label: st.name for label, st in strats.items()}))
    _common.save_figure(plot_curves(s, runs, baseline_mse), d / "learning_curves.png")
    _common.save_figure(plot_cost(table), d / "memory_time.png")
    return write_report(d, s, runs, table, diffs, baseline_mse, baseline_acc, threshold,
                        train_wall, load, _common.command_line(NAME, small), seeds_table)


GRU_NOTE = ("(A GRU was chosen after trial runs outside this script: with the same settings, "
            "an LSTM with its forget-gate bias set to 1 or 3 was still at the baseline after "
            "400 updates, while this GRU had learned the task.)")


def _fmt_bytes(n: int | None) -> str:
    return "–" if n is None else format_bytes(n)


def write_report(d: Path, s: SimpleNamespace, runs: dict[str, dict], table: Sequence[dict],
                 diffs: Sequence[dict], baseline_mse: float, baseline_acc: float,
                 threshold: float, train_wall: float, load: float, command: str,
                 seeds_table: Sequence[dict] = ()) -> Path:
    strats = strategies(s)
    rows = [{
        "strategy": f"`{strats[r['strategy']].name}`",
        "exact": "yes" if r["exact"] else "no",
        "peak (stats)": _fmt_bytes(r["peak_bytes"]),
        "of full": f"{r['memory_fraction']:.3f}",
        "traced peak": _fmt_bytes(r["traced_peak_bytes"]),
        "fwd/T": f"{r['forward_per_T']:.2f}",
        "bwd/T": f"{r['backward_per_T']:.2f}",
        "ms/update": f"{r['seconds_per_update'] * 1e3:.1f}",
        "× full": f"{r['time_ratio']:.2f}",
        "grad err @init": f"{r['grad_rel_error_at_init']:.2g}",
        "updates": r["updates"],
        "test MSE": f"{r['final_test_mse']:.4f}",
        f"acc (err < {s.TOLERANCE:g})": f"{r['final_test_accuracy']:.3f}",
        f"first MSE < {threshold:.4f}": r["first_update_below_10pct_baseline"] or "never",
    } for r in table]
    by = {r["strategy"]: r for r in table}
    exact = [r for r in table if r["exact"]]
    short = [r for r in table if not r["exact"]]
    full = by["full"]
    worst_rel = max((x["max_rel_loss_diff"] for x in diffs), default=0.0)
    worst_par = max((x["final_params_rel_diff"] for x in diffs), default=0.0)
    cheapest = min(exact, key=lambda r: r["peak_bytes"])
    worst_grad = max([r["grad_rel_error_at_init"] for r in exact]
                     + [e["grad_rel_error"] for label, r in runs.items() if by[label]["exact"]
                        for e in r["evals"]])
    learned = full["final_test_mse"] < threshold
    first = full["first_update_below_10pct_baseline"]

    findings = [
        f"**Did the model learn?** With full() the test MSE went from the baseline "
        f"{baseline_mse:.4f} (predicting the mean) to {full['final_test_mse']:.4g} after "
        f"{s.UPDATES} updates ({full['final_test_accuracy']:.1%} of test sums within "
        f"{s.TOLERANCE:g}, against {baseline_acc:.1%} for the mean); "
        + (f"it first fell below 10% of the baseline at update {first}." if first else
           "it never fell below 10% of the baseline.")
        + ("" if learned else " **The model did not learn the task within this budget**, so "
           "the comparison below is between strategies that all stayed near the baseline."),
        (f"**Exact strategies learn identically: bitwise.** Every one of the {s.UPDATES} "
         f"training losses of {', '.join(x['strategy'] for x in diffs)} and every final "
         f"parameter equals full()'s exactly (difference 0.0), as do their gradients at the "
         f"initial params and at every evaluation."
         if worst_rel == 0 and worst_par == 0 and worst_grad == 0 else
         f"**Exact strategies learn identically.** Over all {s.UPDATES} updates the training "
         f"losses of {', '.join(x['strategy'] for x in diffs)} differ from full()'s by at most "
         f"{worst_rel:.2g} relative, their final params by at most {worst_par:.2g} relative "
         f"(per strategy in the table below), and their gradients, at init and at every "
         f"evaluation, by at most {worst_grad:.2g} relative."),
        f"**…at a fraction of the memory.** {cheapest['strategy']} kept "
        f"{_fmt_bytes(cheapest['peak_bytes'])} ({cheapest['memory_fraction']:.1%} of full()'s "
        f"{_fmt_bytes(full['peak_bytes'])}) for {cheapest['forward_per_T']:.2f}×T forward steps "
        f"and {cheapest['time_ratio']:.2f}× full()'s time per update; "
        + "; ".join(f"{r['strategy']}: {r['memory_fraction']:.1%} of the memory, "
                    f"{r['time_ratio']:.2f}× the time" for r in exact
                    if r is not full and r is not cheapest) + ".",
    ]
    for r in short:
        ev = runs[r["strategy"]]["evals"]
        worst = max(ev, key=lambda e: e["grad_rel_error"])
        first_t = r["first_update_below_10pct_baseline"]
        findings.append(
            f"**{r['strategy']}** "
            + (f"(k2 < T/2 = {s.T // 2}: shorter than the distance to every first marker), "
               if strats[r['strategy']].k2 < s.T // 2 else "(k2 < T), ")
            + f"{r['memory_fraction']:.1%} of full()'s memory: final test MSE "
            f"{r['final_test_mse']:.4g} after {r['updates']} updates "
            f"({100 * r['final_test_mse'] / baseline_mse:.2g}% of the "
            f"baseline; full(): {full['final_test_mse']:.4g}), accuracy "
            f"{r['final_test_accuracy']:.1%} (full(): {full['final_test_accuracy']:.1%}); "
            + (f"below 10% of the baseline first at update {first_t} (full(): {first}). "
               if first_t else "never below 10% of the baseline. ")
            + f"Its gradient's relative error against full()'s on the same batch was "
            f"{r['grad_rel_error_at_init']:.2g} at init, {worst['grad_rel_error']:.2g} at its "
            f"worst (update {worst['update']}, cosine {worst['grad_cosine']:.3f}) and "
            f"{ev[-1]['grad_rel_error']:.2g} at the end.")
    partial = [r for r in short if r["final_test_mse"] < 0.5 * baseline_mse]
    if partial:
        findings.append(
            "**Truncation slowed learning here but did not stop it** for "
            + ", ".join(r["strategy"] for r in partial)
            + ". "
            + ("At init the exact gradient has almost nothing beyond k2 steps back (the "
               "errors at init above), so the first updates agree; the bias grows as the "
               "model learns to carry information over long spans. "
               if max(r["grad_rel_error_at_init"] for r in partial) < 1e-2 else "")
            + "A likely reason it learns at all "
            "(not tested here): the task's solution is the same at every step (add the "
            "marked number to a running sum, hold the sum), so gradients from short windows "
            "shape the same weights that must carry the first marker.")
    else:
        findings.append(
            "**Truncation shorter than the dependency did not learn the task**: "
            + ", ".join(f"{r['strategy']} ended at {r['final_test_mse'] / baseline_mse:.0%} of "
                        "the baseline MSE" for r in short) + ".")
    half, three_q = s.T // 2, s.T // 2 + (s.T - s.T // 2) // 2
    where = []
    for label in ["full", *(r["strategy"] for r in short)]:
        rows_ = runs[label]["error_by_distance"]
        k2 = strats[label].k2 if isinstance(strats[label], bm.Truncated) else None
        where.append(
            f"{label}: "
            + (f"{_mse_where(rows_, 'second', 0, k2):.4f} with the second marker inside its last "
               f"window (d <= {k2}) vs {_mse_where(rows_, 'second', k2, half):.4f} outside; "
               if k2 else "")
            + f"{_mse_where(rows_, 'first', half, three_q):.4f} with the first marker "
            f"{half + 1}–{three_q} back vs {_mse_where(rows_, 'first', three_q, s.T):.4f} "
            f"{three_q + 1}–{s.T} back")
    findings.append("**Where the error is** (final test MSE, table below): "
                    + "; ".join(where) + ".")

    dist_rows = []
    for label, r in runs.items():
        row = {"strategy": label}
        for b in r["error_by_distance"]:
            row[f"{b['marker']} d={b['lo'] + 1}–{b['hi']} (n={b['n']})"] = f"{b['test_mse']:.4f}"
        dist_rows.append(row)

    diff_rows = [{"strategy": x["strategy"], "max abs Δ loss": f"{x['max_abs_loss_diff']:.3g}",
                  "max abs Δ loss / loss": f"{x['max_rel_loss_diff']:.3g}",
                  "‖Δ params‖/‖params‖ at the end": f"{x['final_params_rel_diff']:.3g}"}
                 for x in diffs]

    report = _common.Report(f"Training on a long dependency: the adding problem at T = {s.T}",
                            f"""\
**Question.** Does the choice of backward strategy change what a model learns? Exact
strategies should not (same gradient, less memory); truncation shorter than the
dependency should fail.

**Setup.** Adding problem (`bm.tasks.adding_problem`): at each step a U(0, 1) number and
a marker; the target, read only at the last step (mask), is the sum of the two marked
numbers; the first marker lies in [0, T/2), so the dependency spans more than T/2 = {s.T // 2}
steps. Model: {s.CELL.upper()} with H = {s.HIDDEN}, linear readout, mse loss, float64, PyTorch's
default init, seed {s.SEED}. Every strategy starts from the same params and sees the same
{s.UPDATES} batches of B = {s.BATCH} (one update per batch; a truncated run not yet on a
plateau then goes on with the next batches, {max(1, s.UPDATES // 4)} at a time, until it is,
or until {s.MAX_UPDATES}: NOTE [train to a plateau]), with the same optimiser: Adam
(lr {s.LR:g}, betas {s.BETAS}, eps {s.EPS:g}, `adam_step` in studies/_common.py) after clipping
the gradient to global norm {s.CLIP:g}. Truncated strategies contribute one update per
sequence too: `truncated(k1, k2).run` sums its update points, all at the same params.
Test set: {s.TEST_SIZE} held-out sequences, evaluated every {s.EVAL_EVERY} updates. Baseline:
predicting the test targets' mean gives MSE {baseline_mse:.4f} (1/6 ≈ 0.1667 in
expectation: the variance of a sum of two U(0, 1)) and accuracy {baseline_acc:.3f}.
{GRU_NOTE if s.CELL == 'gru' else ''}""")
    for finding in findings:
        report.finding(finding)
    report.section(
        "Memory, time and accuracy",
        f"""\
Peak (stats) is `stats.peak_bytes`, the bytes the strategy keeps for the backward pass;
traced peak is tracemalloc's cross-check (it also sees grads and temporaries). Time per
update is the median of {s.TIMING_REPEATS} gradient computations, interleaved across
strategies by `bm.compare` with BLAS pinned to one thread (the Adam step is excluded;
it is the same for all); the machine's 1-minute load average when timing began was
{load:.1f} on {os.cpu_count()} cores, so compare ratios rather than absolute times.
"grad err @init" is ‖g − g_full‖/‖g_full‖ on one batch at the
initial params. Test MSE and accuracy are after the last update (`updates`).""",
        _common.md_table(rows),
        _common.figure("learning_curves.png", "learning curves"),
        _common.figure("memory_time.png", "memory and time per update"),
        f"""\
Training ran in {s.WORKERS} process{'es' if s.WORKERS > 1 else ''} and took {train_wall:.0f} s of
wall time; the times per update above were measured afterwards, alone.""")
    report.section(
        "Over seeds: is truncation worse, or only slower?",
        f"""\
full() and each truncated strategy trained again from seeds {list(s.EXTRA_SEEDS)} (params
and batches; the same test set): the final test MSE's median and range over
{1 + len(s.EXTRA_SEEDS)} seeds, how many runs got below {threshold:.4f} and when (median
update), how many updates the runs took (truncated runs go on until they plateau, up to
{s.MAX_UPDATES}), and whether every run had plateaued: its median test MSE over the last
quarter of its updates less than {s.PLATEAU:.0%} below the median over the quarter before, or
less than {s.PLATEAU_ABS:.0%} of the baseline MSE below it (NOTE [plateau] in the study:
near zero, Adam keeps halving an error that no longer moves at the task's scale).
{"; ".join(worse_or_slower(seeds_table)) if seeds_table else ""}.""",
        _common.md_table(seeds_table) if seeds_table else "(not run)")
    report.section(
        "Where the error is: test MSE by how far back each marker lies",
        f"""\
d is the number of steps from a marker to the last step (d <= k2: inside truncated(k,
k2)'s last window). The second marker is 1–{s.T // 2} steps back, the first
{s.T // 2 + 1}–{s.T}. Final params, {s.TEST_SIZE} test sequences (n per group in the header).""",
        _common.md_table(dist_rows))
    report.section("Exact strategies against full(), over the whole run",
                   _common.md_table(diff_rows) if diff_rows else "(none)")
    report.file("curves.csv", "training MSE and gradient norm (before clipping) per strategy and "
                              "update.")
    report.file("test_curves.csv", f"every {s.EVAL_EVERY} updates, test MSE and accuracy after "
                                   "the update, and the update's gradient error and cosine "
                                   "against full()'s on its batch.")
    report.file("summary.csv", "the table of memory, time and accuracy.")
    report.file("summary.json", "that table, the settings and the baselines.")
    report.file("exact_curve_differences.csv", "the table of exact strategies against full().")
    report.file("error_by_distance.csv", "the by-distance table.")
    report.file("seeds.csv", "the table over seeds.")
    return report.write(d, command, pinned=1)


def main(argv: Sequence[str] | None = None) -> None:
    _common.study_main(NAME, run, __doc__, argv)


if __name__ == "__main__":
    main()
