"""Truncation bias: how far TBPTT(k1, k2)'s gradient lies from the exact one.

Truncated BPTT keeps only the last k2 steps, so every dependency longer than k2 steps is
cut out of the gradient. How much that matters depends on how fast the backward signal
decays, i.e. on the recurrent Jacobian, which we control through the spectral radius ρ
of W_hh: contracting (ρ < 1), near the edge (ρ ≈ 1) and expanding (ρ > 1). We measure
the relative error ‖g − g*‖/‖g*‖ and the cosine of truncated gradients against full()'s,
over k1, k2 and ρ, for a tanh Elman cell and an LSTM, losses at every step.

References: Williams & Peng 1990 (TBPTT(k1, k2)); Pascanu, Mikolov & Bengio 2013,
"On the difficulty of training recurrent neural networks" (ρ(W_hh) < 1 is sufficient for
vanishing gradients in a tanh RNN, ρ > 1 necessary for exploding ones).

Run: ``bptt-memory study truncation_bias [--small] [--out DIR]``.
"""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace
from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np

import bptt_memory as bm
from bptt_memory.compare import grad_error
from bptt_memory.tasks import adding_problem, random_problem

from . import _common

NAME = "truncation_bias"

# -- the experiment -------------------------------------------------------------------
T = 200  # steps per sequence; a loss at every step (standard-normal targets, mse)
BATCH = 16  # sequences per batch
N_IN = 8  # input features, standard normal
HIDDEN = 32  # H
N_OUT = 4  # outputs read out at every step
CELLS = ("vanilla", "lstm", "gru")  # vanilla is tanh
RADII = (0.5, 0.9, 1.0, 1.5)  # spectral radius of W_hh (of each gate block for the LSTM)
SEEDS = (0, 1, 2, 3, 4)  # params and data; errors are summarised over seeds by their
# geometric mean (they span decades) with the min-max band
K2S = (1, 2, 5, 10, 20, 50, 100, 200)  # k2 values; T itself is always added
GRID_RADIUS = 1.0  # the full (k1, k2) grid is run at this radius; others get k1 = 1 and k1 = k2
FLOOR = 1e-16  # errors below this are drawn at this value on log axes
# -- does it hold elsewhere? (NOTE [other conditions]) ----------------------------------
LONG_T = 1000  # the same problem at GRID_RADIUS, five times longer
TRAIN_UPDATES = 400  # a model trained on the adding problem, T steps, with full() and Adam
TRAIN_LR = 1e-2  # Adam step size
TRAIN_CLIP = 1.0  # gradients are rescaled to this global norm when longer
# -- toy sizes for --small (seconds) ----------------------------------------------------
SMALL = dict(T=16, BATCH=4, HIDDEN=8, RADII=(0.5, 1.0, 1.5), SEEDS=(0, 1), K2S=(1, 2, 4, 8),
             LONG_T=40, TRAIN_UPDATES=5)


def _settings(small: bool) -> SimpleNamespace:
    s = _common.settings(globals(), ("T", "BATCH", "N_IN", "HIDDEN", "N_OUT", "CELLS", "RADII",
                                     "SEEDS", "K2S", "GRID_RADIUS", "LONG_T", "TRAIN_UPDATES",
                                     "TRAIN_LR", "TRAIN_CLIP"), small)
    s.K2S = tuple(sorted({k for k in s.K2S if k < s.T} | {s.T}))
    return s


def set_spectral_radius(cell: bm.Cell, params: dict, radius: float) -> None:
    """Rescale W_hh in place so that each (H, H) gate block has spectral radius `radius`.

    NOTE [LSTM radius] An LSTM's W_hh stacks four square blocks (i, f, g, o), and the
    (4H, H) whole has no eigenvalues. Scaling each block to the same radius keeps the
    gates' relative roles and makes "ρ" mean the same gain for the candidate g (the
    block that feeds the cell state) as for a tanh RNN's W_hh. It does not set the
    memory of the cell state c, whose own Jacobian ∂c'/∂c = diag(f) bypasses W_hh; the
    forget gate f, reported beside the errors, sets that.
    """
    H = cell.n_hidden
    W = params["weight_hh"]  # (G·H, H)
    for g in range(cell.n_gates):
        block = W[g * H:(g + 1) * H]
        block *= radius / np.max(np.abs(np.linalg.eigvals(block)))


def _mean_forget_gate(model: bm.Model, params: dict, xs: np.ndarray) -> float:
    """Mean LSTM forget gate over the run (NaN for cells without one)."""
    cell = model.cell
    if cell.kind != "lstm":
        return float("nan")
    B = xs.shape[1]
    state, total = model.zero_state(B, xs.dtype), 0.0
    for x in xs:
        state, res = cell.record(params, x, state)
        total += float(res[2][1].mean())  # gates (i, f, g, o), (4, B, H): f is the second
    return total / xs.shape[0]


def _pairs(s: SimpleNamespace, radius: float) -> list[tuple[int, int]]:
    """(k1, k2) pairs to run: k1 = 1 and k1 = k2 always, the whole k1 <= k2 grid at GRID_RADIUS."""
    pairs = {(k1, k2) for k2 in s.K2S for k1 in (1, k2)}
    if radius == s.GRID_RADIUS:
        pairs |= {(k1, k2) for k2 in s.K2S for k1 in s.K2S if k1 <= k2}
    return sorted(pairs, key=lambda p: (p[1], p[0]))


def measure(s: SimpleNamespace, quiet: bool) -> tuple[list[dict], list[dict]]:
    """Rows of (cell, radius, seed, k1, k2, errors) and one row per (cell, radius, seed)."""
    jobs = [(c, r, seed) for c in s.CELLS for r in s.RADII for seed in s.SEEDS]
    n_runs = sum(len(_pairs(s, r)) for _, r, _ in jobs)
    rows, problems = [], []
    bar = _common.progress(total=n_runs, quiet=quiet, desc=NAME)
    for kind, radius, seed in jobs:
        rng = np.random.default_rng(seed)
        cell = bm.CELLS[kind](s.N_IN, s.HIDDEN)
        recurrent = list(cell.param_shapes())  # the cell's own: not the readout's
        model = bm.Model(cell, s.N_OUT)
        params = model.init(rng)
        set_spectral_radius(cell, params, radius)
        xs, ys = random_problem(model, s.T, s.BATCH, rng)
        exact = bm.full().run(model, params, xs, ys)
        g_norm = math.sqrt(sum(float((g * g).sum()) for g in exact.grads.values()))
        problems.append(dict(cell=kind, radius=radius, seed=seed, loss=exact.loss,
                             exact_grad_norm=g_norm,
                             mean_forget_gate=_mean_forget_gate(model, params, xs)))
        for k1, k2 in _pairs(s, radius):
            r = bm.truncated(k1, k2).run(model, params, xs, ys)
            # NOTE [recurrent error] the readout's gradient is exact under truncation (it
            # needs only each step's h), and it is about half of the whole gradient's norm
            # here, so an error over every parameter dilutes what truncation does: the
            # error is measured over the cell's parameters, the whole one kept beside it
            rel, cos = grad_error(r.grads, exact.grads, keys=recurrent)
            rel_all, _ = grad_error(r.grads, exact.grads)
            rows.append(dict(cell=kind, radius=radius, seed=seed, k1=k1, k2=k2,
                             rel_error=rel, cosine=cos, rel_error_all_params=rel_all,
                             backward_steps=r.stats.backward_steps,
                             peak_bytes=r.stats.peak_bytes))
            bar.update()
    bar.close()
    return rows, problems


# NOTE [other conditions] The grid above is one sequence length at initialisation, with
# losses at every step. Two more conditions test whether what it finds carries over:
# - "init, T = LONG_T": the same random problem and ρ = GRID_RADIUS, five times longer;
# - "trained": each cell at its default init (no rescaling) trained with full() and Adam
#   for TRAIN_UPDATES updates on the adding problem (`bm.tasks.adding_problem`: one loss, at
#   the last step, that depends on two inputs at least T/2 steps apart), then measured on a
#   fresh batch of that problem. Training is what gives a recurrence long memory, and this
#   loss is all long dependency, so it is where truncation should cost most.
# Both run TBPTT(1, k) and TBPTT(k, k) for every k on the grid shorter than their T.


def _trained(s: SimpleNamespace, kind: str, seed: int) -> tuple[bm.Model, dict, float, float]:
    """A cell trained on the adding problem (NOTE [other conditions]): model, params, and
    the held-out MSE before and after training."""
    rng = np.random.default_rng(seed)
    model = bm.Model(bm.CELLS[kind](2, s.HIDDEN), 1)
    params = model.init(rng)
    data = np.random.default_rng(10_000 + seed)
    xt, yt, mt = adding_problem(s.T, 4 * s.BATCH, np.random.default_rng(20_000 + seed))
    full = bm.full()
    before = full.run(model, params, xt, yt, mask=mt).loss
    m = {k: np.zeros_like(p) for k, p in params.items()}
    v = {k: np.zeros_like(p) for k, p in params.items()}
    for i in range(1, s.TRAIN_UPDATES + 1):
        xs, ys, mask = adding_problem(s.T, s.BATCH, data)
        r = full.run(model, params, xs, ys, mask=mask)
        _common.adam_step(params, r.grads, m, v, i, lr=s.TRAIN_LR, clip=s.TRAIN_CLIP)
    return model, params, before, full.run(model, params, xt, yt, mask=mt).loss


def other_conditions(s: SimpleNamespace, quiet: bool) -> tuple[list[dict], list[dict]]:
    """Rows of (condition, cell, seed, k1, k2, errors) and one row per trained model."""
    conds = [f"init, T={s.LONG_T}", f"trained, T={s.T}"]
    jobs = [(c, kind, seed) for c in conds for kind in s.CELLS for seed in s.SEEDS]
    rows, trained = [], []
    bar = _common.progress(total=len(jobs), quiet=quiet, desc=f"{NAME} (other conditions)")
    for cond, kind, seed in jobs:
        mask = None
        if cond.startswith("init"):
            T = s.LONG_T
            rng = np.random.default_rng(seed)
            cell = bm.CELLS[kind](s.N_IN, s.HIDDEN)
            model = bm.Model(cell, s.N_OUT)
            params = model.init(rng)
            set_spectral_radius(cell, params, s.GRID_RADIUS)
            xs, ys = random_problem(model, T, s.BATCH, rng)
        else:
            T = s.T
            model, params, before, after = _trained(s, kind, seed)
            trained.append(dict(cell=kind, seed=seed, updates=s.TRAIN_UPDATES,
                                test_mse_before=before, test_mse_after=after))
            xs, ys, mask = adding_problem(T, s.BATCH, np.random.default_rng(30_000 + seed))
        recurrent = list(model.cell.param_shapes())
        exact = bm.full().run(model, params, xs, ys, mask=mask)
        for k in [k for k in s.K2S if k < T]:
            for k1 in sorted({1, k}):
                r = bm.truncated(k1, k).run(model, params, xs, ys, mask=mask)
                rel, cos = grad_error(r.grads, exact.grads, keys=recurrent)
                rows.append(dict(condition=cond, cell=kind, seed=seed, T=T, k1=k1, k2=k,
                                 rel_error=rel, cosine=cos,
                                 backward_steps=r.stats.backward_steps))
        bar.update()
    bar.close()
    return rows, trained


def summarise_conditions(rows: Sequence[dict]) -> list[dict]:
    """`summarise` per (condition, cell, k1, k2)."""
    return summarise(rows, key=("condition", "cell", "k1", "k2"))


def geometric_mean(values: Sequence[float]) -> float:
    """exp(mean(log x)): the summary of errors spanning decades; 0 when any is exactly 0
    (truncation that cuts nothing).

    >>> round(geometric_mean([1e-2, 1e-4, 1e-6]), 12)
    0.0001
    """
    x = np.asarray(values, float)
    return 0.0 if (x <= 0).any() else float(np.exp(np.log(x).mean()))


def summarise(rows: Sequence[dict],
              key: Sequence[str] = ("cell", "radius", "k1", "k2")) -> list[dict]:
    """Over seeds, for each group of rows equal on `key`: the geometric mean of the errors,
    their median, min and max (and the geometric mean of the error on all params, where
    rows have it); the median cosine and its min; and the backward steps and peak bytes,
    which the seed does not change, where rows have them."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault(tuple(r[k] for k in key), []).append(r)
    out = []
    for values, g in groups.items():
        err = np.array([r["rel_error"] for r in g])
        cos = np.array([r["cosine"] for r in g])
        row = dict(zip(key, values), seeds=len(g),
                   rel_error=geometric_mean(err), rel_error_median=float(np.median(err)),
                   rel_error_min=float(err.min()), rel_error_max=float(err.max()))
        if "rel_error_all_params" in g[0]:
            row["rel_error_all_params"] = geometric_mean([r["rel_error_all_params"] for r in g])
        row.update(cosine=float(np.median(cos)), cosine_min=float(cos.min()))
        row.update({k: g[0][k] for k in ("backward_steps", "peak_bytes") if k in g[0]})
        out.append(row)
    return out


def _lookup(summary: Sequence[dict], kind: str, radius: float, k1: int, k2: int) -> dict:
    for r in summary:
        if (r["cell"], r["radius"], r["k1"], r["k2"]) == (kind, radius, k1, k2):
            return r
    raise KeyError((kind, radius, k1, k2))


def decay_rates(summary: Sequence[dict], kind: str, radius: float,
                K2S: Sequence[int], T: int) -> tuple[float, float]:
    """(e-folding length of TBPTT(1, k)'s error, log-log slope of TBPTT(k, k)'s error).

    NOTE [two decay laws] TBPTT(1, k) backpropagates every loss through k steps, so what
    it misses is the tail beyond k of each loss's backward signal: its error falls like
    exp(−k/τ) when the recurrence contracts. TBPTT(k, k) backpropagates the j-th loss of
    a window (j = 1 right after the previous update) through only k − j + 1 steps, so a
    fraction ~ τ/k of the losses is always cut short: its error falls only like 1/k. The
    first is fitted to ln(error) against k over the k < T whose error is above rounding
    (1e-13); the second
    to ln(error) against ln(k) over the k < T with k >= 10 (k >= 2 at toy sizes).
    """
    ks = np.array([k for k in K2S if k < T], float)
    e1 = np.array([_lookup(summary, kind, radius, 1, int(k))["rel_error"] for k in ks])
    ek = np.array([_lookup(summary, kind, radius, int(k), int(k))["rel_error"] for k in ks])
    keep = e1 > 1e-13
    slope = np.polyfit(ks[keep], np.log(e1[keep]), 1)[0] if keep.sum() >= 2 else 0.0
    tau = -1.0 / slope if slope < 0 else float("inf")
    big = ks >= (10 if T > 50 else 2)
    return float(tau), float(np.polyfit(np.log(ks[big]), np.log(ek[big]), 1)[0])


def first_k2(points: dict, same: bool, target: float) -> int | None:
    """The smallest k2 among `points` ({(k1, k2): summary row}) whose mean error is below
    `target`, with k1 = k2 (`same`) or k1 = 1; None when there is none."""
    for k2 in sorted({k2 for _, k2 in points}):
        r = points.get((k2 if same else 1, k2))
        if r is not None and r["rel_error"] < target:
            return k2
    return None


def _k2_for(summary: Sequence[dict], kind: str, radius: float, same: bool, target: float,
            K2S: Sequence[int]) -> int:
    """`first_k2` for one cell and radius; the grid's largest k2 when none is below."""
    points = {(r["k1"], r["k2"]): r for r in summary
              if (r["cell"], r["radius"]) == (kind, radius) and r["k2"] in K2S}
    k2 = first_k2(points, same, target)
    return K2S[-1] if k2 is None else k2


def frontier(s: SimpleNamespace, summary: Sequence[dict]) -> list[dict]:
    """Every truncating (k1, k2) at GRID_RADIUS (k2 < T: with k2 = T, TBPTT(T, T) is
    full BPTT, exact at one backward step per step, and holds T steps) with its cost,
    backward steps per step of the sequence, and whether it is on the cost-versus-accuracy
    frontier: no other pair has both no more backward work and a smaller error (so (1, k)
    and (k1, k2) compare at equal cost, not only at equal k2)."""
    out = []
    for kind in s.CELLS:
        pts = [r for r in summary if r["cell"] == kind and r["radius"] == s.GRID_RADIUS
               and r["k2"] < s.T]
        for r in pts:
            cost = r["backward_steps"] / s.T
            dominated = any(q["backward_steps"] <= r["backward_steps"]
                            and q["rel_error"] < r["rel_error"] for q in pts)
            out.append(dict(cell=kind, radius=s.GRID_RADIUS, k1=r["k1"], k2=r["k2"],
                            backward_per_step=cost, rel_error=r["rel_error"],
                            on_frontier=not dominated))
    return sorted(out, key=lambda r: (r["cell"], r["backward_per_step"], r["rel_error"]))


# -- figures ----------------------------------------------------------------------------


def plot_frontier(s: SimpleNamespace, points: Sequence[dict]) -> plt.Figure:
    fig, axes = plt.subplots(1, len(s.CELLS), figsize=(5.2 * len(s.CELLS), 4.2), squeeze=False)
    for j, kind in enumerate(s.CELLS):
        ax = axes[0, j]
        pts = [p for p in points if p["cell"] == kind]
        for label, pick, style in (("k1 = 1", lambda p: p["k1"] == 1, "o"),
                                   ("k1 = k2", lambda p: p["k1"] == p["k2"] > 1, "s"),
                                   ("other k1", lambda p: 1 < p["k1"] < p["k2"], "^")):
            sel = [p for p in pts if pick(p)]
            ax.plot([p["backward_per_step"] for p in sel],
                    [max(p["rel_error"], FLOOR) for p in sel], style, ms=4, alpha=0.7,
                    label=label)
        front = [p for p in pts if p["on_frontier"]]
        ax.plot([p["backward_per_step"] for p in front],
                [max(p["rel_error"], FLOOR) for p in front], "-", color="black", lw=1,
                label="frontier")
        for p in front:
            ax.annotate(f"({p['k1']},{p['k2']})", (p["backward_per_step"],
                                                   max(p["rel_error"], FLOOR)),
                        fontsize=6, xytext=(3, 3), textcoords="offset points")
        ax.set(xscale="log", yscale="log", xlabel="backward steps per step of the sequence",
               ylabel="relative error (recurrent params)",
               title=f"{kind}, ρ={s.GRID_RADIUS:g}, T={s.T}")
        ax.grid(True, alpha=0.3)
    axes[0, 0].legend(fontsize=7)
    fig.suptitle("Cost against accuracy: every (k1, k2), geometric mean over seeds",
                 fontsize=10)
    fig.tight_layout()
    return fig


def plot_error_vs_k2(s: SimpleNamespace, summary: Sequence[dict]) -> plt.Figure:
    fig, axes = plt.subplots(2, len(s.CELLS), figsize=(5.2 * len(s.CELLS), 7.5), squeeze=False,
                             sharex=True)
    colors = plt.cm.viridis(np.linspace(0.0, 0.9, len(s.RADII)))
    k2 = np.array(s.K2S)
    for j, kind in enumerate(s.CELLS):
        for radius, color in zip(s.RADII, colors):
            for same, style in ((False, "-"), (True, "--")):
                rs = [_lookup(summary, kind, radius, k if same else 1, k) for k in s.K2S]
                label = f"ρ={radius:g}, " + ("TBPTT(k, k)" if same else "TBPTT(1, k)")
                err = np.maximum([r["rel_error"] for r in rs], FLOOR)
                lo = np.maximum([r["rel_error_min"] for r in rs], FLOOR)
                hi = np.maximum([r["rel_error_max"] for r in rs], FLOOR)
                axes[0, j].plot(k2, err, style, marker="o", ms=3, color=color, label=label)
                axes[0, j].fill_between(k2, lo, hi, color=color, alpha=0.12, lw=0)
                axes[1, j].plot(k2, [r["cosine"] for r in rs], style, marker="o", ms=3,
                                color=color, label=label)
        axes[0, j].set(xscale="log", yscale="log", title=f"{kind} (H={s.HIDDEN}, T={s.T})",
                       ylabel="relative error ‖g − g*‖ / ‖g*‖")
        axes[1, j].set(xscale="log", xlabel="k2 (steps backpropagated)", ylabel="cosine(g, g*)",
                       ylim=(max(-1.05, min(r["cosine_min"] for r in summary) - 0.05), 1.02))
        for ax in axes[:, j]:
            ax.axvline(s.T, color="grey", lw=0.8, ls=":")
            ax.grid(True, which="major", alpha=0.3)
    axes[0, -1].legend(fontsize=7, ncol=2, loc="lower left")
    fig.suptitle(f"Truncated vs exact gradient of the recurrent parameters, geometric mean of "
                 f"{len(s.SEEDS)} seeds (band: min–max); errors below {FLOOR:g} drawn at "
                 f"{FLOOR:g}", fontsize=10)
    fig.tight_layout()
    return fig


def plot_grid(s: SimpleNamespace, summary: Sequence[dict]) -> plt.Figure:
    fig, axes = plt.subplots(1, len(s.CELLS), figsize=(5.6 * len(s.CELLS), 4.8), squeeze=False)
    n = len(s.K2S)
    for j, kind in enumerate(s.CELLS):
        grid = np.full((n, n), np.nan)  # rows k1, columns k2
        for a, k1 in enumerate(s.K2S):
            for b, k2 in enumerate(s.K2S):
                if k1 <= k2:
                    grid[a, b] = np.log10(max(
                        _lookup(summary, kind, s.GRID_RADIUS, k1, k2)["rel_error"], FLOOR))
        ax = axes[0, j]
        im = ax.imshow(grid, origin="lower", cmap="magma_r", vmin=math.log10(FLOOR), vmax=0.5)
        for a in range(n):
            for b in range(n):
                if not np.isnan(grid[a, b]):
                    ax.text(b, a, f"{grid[a, b]:.1f}", ha="center", va="center", fontsize=7,
                            color="white" if grid[a, b] > -8 else "black")
        ax.set_xticks(range(n), [str(k) for k in s.K2S])
        ax.set_yticks(range(n), [str(k) for k in s.K2S])
        ax.set(xlabel="k2 (steps backpropagated)", ylabel="k1 (steps between updates)",
               title=f"{kind}, ρ={s.GRID_RADIUS:g}: log10 relative error")
        fig.colorbar(im, ax=ax, shrink=0.85)
    fig.tight_layout()
    return fig


def _condition_curves(s: SimpleNamespace, summary: Sequence[dict], other: Sequence[dict]
                      ) -> dict[tuple[str, str], dict[tuple[int, int], dict]]:
    """(condition, cell) -> {(k1, k2): summary row}, the main grid's ρ = GRID_RADIUS
    included as its own condition, k2 < T only."""
    main = f"init, T={s.T}"
    out: dict[tuple[str, str], dict[tuple[int, int], dict]] = {}
    for r in summary:
        if r["radius"] == s.GRID_RADIUS and r["k2"] < s.T and r["k1"] in (1, r["k2"]):
            out.setdefault((main, r["cell"]), {})[r["k1"], r["k2"]] = r
    for r in other:
        out.setdefault((r["condition"], r["cell"]), {})[r["k1"], r["k2"]] = r
    return out


def plot_conditions(s: SimpleNamespace, curves: dict) -> plt.Figure:
    conds = list(dict.fromkeys(c for c, _ in curves))
    colors = plt.cm.tab10(np.arange(len(conds)))
    fig, axes = plt.subplots(1, len(s.CELLS), figsize=(5.2 * len(s.CELLS), 4.2), squeeze=False)
    for j, kind in enumerate(s.CELLS):
        ax = axes[0, j]
        for cond, color in zip(conds, colors):
            pts = curves.get((cond, kind), {})
            for same, style in ((False, "-"), (True, "--")):
                ks = sorted(k2 for k1, k2 in pts if (k1 == k2) == same and (same or k1 == 1))
                if same:
                    ks = [k for k in ks if k > 1]  # (1, 1) is drawn once, on the solid line
                ax.plot(ks, [max(pts[(k if same else 1), k]["rel_error"], FLOOR) for k in ks],
                        style, marker="o", ms=3, color=color,
                        label=f"{cond}, " + ("TBPTT(k, k)" if same else "TBPTT(1, k)"))
        ax.set(xscale="log", yscale="log", xlabel="k2 (steps backpropagated)",
               ylabel="relative error (recurrent params)", title=kind)
        ax.grid(True, alpha=0.3)
    axes[0, -1].legend(fontsize=6)
    fig.suptitle(f"Other conditions (ρ = {s.GRID_RADIUS:g} at init; trained: default init, "
                 f"{s.TRAIN_UPDATES} Adam updates on the adding problem); geometric mean over "
                 "seeds", fontsize=9)
    fig.tight_layout()
    return fig


def _k2_reaching(pts: dict, same: bool, target: float) -> str:
    k2 = first_k2(pts, same, target)
    return "none < T" if k2 is None else str(k2)


def conditions_section(s: SimpleNamespace, curves: dict, trained: Sequence[dict]
                       ) -> tuple[str, list[str]]:
    """The other conditions' section of the report: its heading and its parts."""
    table = []
    mid = [k for k in s.K2S if k < s.T]
    k_lo = mid[min(3, len(mid) - 1)]  # the main table's, e.g. 10 at full size
    for (cond, kind), pts in curves.items():
        row = {"condition": cond, "cell": kind,
               "k2 for 1%: (1,k)": _k2_reaching(pts, False, 0.01),
               "(k,k)": _k2_reaching(pts, True, 0.01),
               f"err (1,{k_lo})": _fmt(pts[1, k_lo]["rel_error"]),
               f"err ({k_lo},{k_lo})": _fmt(pts[k_lo, k_lo]["rel_error"])}
        table.append(row)
    table.sort(key=lambda r: (r["cell"], r["condition"]))
    fit = []
    for kind in s.CELLS:
        g = [t for t in trained if t["cell"] == kind]
        fit.append({"cell": kind, "updates": s.TRAIN_UPDATES,
                    "held-out MSE before": f"{np.median([t['test_mse_before'] for t in g]):.3g}",
                    "after (median of seeds)": f"{np.median([t['test_mse_after'] for t in g]):.3g}",
                    "after, min–max": f"{min(t['test_mse_after'] for t in g):.3g}–"
                                      f"{max(t['test_mse_after'] for t in g):.3g}"})
    return "Does it hold elsewhere? Longer sequences and trained models", [
        f"""\
NOTE [other conditions] in the study: the main grid's ρ = {s.GRID_RADIUS:g} problem again at
T = {s.LONG_T}; and each cell trained with full() and Adam (lr {s.TRAIN_LR:g}, clipped to
norm {s.TRAIN_CLIP:g}) for {s.TRAIN_UPDATES} updates of B = {s.BATCH} on the adding problem
(T = {s.T}, one loss at the last step depending on inputs at least T/2 steps back), then
measured on a fresh batch of it. Same seeds, same error over the cell's parameters; "k2
for 1%" is the smallest k2 on the grid below T whose geometric mean error is under 1%.""",
        _common.md_table(table),
        """The adding problem's baseline (predicting the mean, 1) has MSE 1/6 ≈ 0.167; how far
training got:""",
        _common.md_table(fit),
        _common.figure("conditions.png", "other conditions"),
    ]


# -- report -------------------------------------------------------------------------------


def _fmt(x: float) -> str:
    return "0" if x == 0 else f"{x:.2g}"


def write_report(d: Path, s: SimpleNamespace, summary: Sequence[dict], problems: Sequence[dict],
                 fronts: Sequence[dict], command: str,
                 conditions: tuple[str, Sequence[str]] | None = None) -> Path:
    """The report in the one layout (NOTE [one report layout]); `conditions` is
    `conditions_section`'s heading and parts, when the other conditions were run."""
    K2S, T = s.K2S, s.T
    mid = [k for k in K2S if k < T]
    k_lo, k_hi = mid[min(3, len(mid) - 1)], mid[-1]  # e.g. 10 and 100 at full size

    # One table row per (cell, radius).
    table = []
    for kind in s.CELLS:
        for radius in s.RADII:
            probs = [p for p in problems if p["cell"] == kind and p["radius"] == radius]
            row = {"cell": kind, "ρ": radius,
                   "‖g*‖": float(np.mean([p["exact_grad_norm"] for p in probs]))}
            if kind == "lstm":
                row["mean f"] = float(np.mean([p["mean_forget_gate"] for p in probs]))
            else:
                row["mean f"] = "–"
            for k in (k_lo, k_hi):
                row[f"err (1,{k})"] = _fmt(_lookup(summary, kind, radius, 1, k)["rel_error"])
                row[f"err ({k},{k})"] = _fmt(_lookup(summary, kind, radius, k, k)["rel_error"])
            cos = _lookup(summary, kind, radius, k_lo, k_lo)["cosine"]
            row[f"cos ({k_lo},{k_lo})"] = f"{cos:.3f}"
            tau, slope = decay_rates(summary, kind, radius, K2S, T)
            row["τ of (1,k)"] = f"{tau:.3g}"
            row["slope of (k,k)"] = f"{slope:.2f}"
            row["k2 for 1%: (1,k)"] = _k2_for(summary, kind, radius, False, 0.01, K2S)
            row["(k,k)"] = _k2_for(summary, kind, radius, True, 0.01, K2S)
            table.append(row)

    exact_rows = [r for r in summary if r["k2"] >= T]
    worst_exact = max(r["rel_error_max"] for r in exact_rows)
    below = [r for r in summary if 1 < r["k2"] < T and r["k1"] == 1]  # (1, 1) is (k, k)
    better = sum(_lookup(summary, r["cell"], r["radius"], 1, r["k2"])["rel_error"]
                 <= _lookup(summary, r["cell"], r["radius"], r["k2"], r["k2"])["rel_error"]
                 for r in below)
    ratios = [_lookup(summary, r["cell"], r["radius"], r["k2"], r["k2"])["rel_error"]
              / r["rel_error"]
              for r in below if r["rel_error"] > 1e-8]  # above rounding

    # Backward work: TBPTT(1, k) does about k·T steps, TBPTT(k, k) T.
    cost = {}
    for kind in s.CELLS:
        r1 = _lookup(summary, kind, s.RADII[0], 1, k_hi)
        rk = _lookup(summary, kind, s.RADII[0], k_hi, k_hi)
        cost[kind] = (r1["backward_steps"], rk["backward_steps"])

    findings = []
    for kind in s.CELLS:
        lo_r, hi_r = s.RADII[0], s.RADII[-1]
        e_lo = _lookup(summary, kind, lo_r, 1, k_lo)["rel_error"]
        e_hi = _lookup(summary, kind, hi_r, 1, k_lo)["rel_error"]
        findings.append(
            f"**{kind}**: at k2 = {k_lo} the TBPTT(1, k2) error is {_fmt(e_lo)} at ρ = {lo_r:g} "
            f"and {_fmt(e_hi)} at ρ = {hi_r:g}; an error below 1% needs k2 = "
            + ", ".join(f"{_k2_for(summary, kind, r, False, 0.01, K2S)} (ρ = {r:g})"
                        for r in s.RADII)
            + " with k1 = 1, and k2 = "
            + ", ".join(f"{_k2_for(summary, kind, r, True, 0.01, K2S)}" for r in s.RADII)
            + " with k1 = k2 (a k2 of T means no tested truncation reached 1%).")
        if kind == "lstm":
            f = [np.mean([p["mean_forget_gate"] for p in problems
                          if p["cell"] == kind and p["radius"] == r]) for r in s.RADII]
            findings[-1] += (
                f" Its mean forget gate is {min(f):.3f}–{max(f):.3f} across ρ: the cell state, "
                "whose own Jacobian diag(f) bypasses W_hh, is scaled by about that per step "
                "whatever ρ, which fits ρ moving the LSTM's τ less than the tanh cell's (next "
                "findings).")
    findings.append(
        f"**k1 = 1 vs k1 = k2**: TBPTT(1, k) is at least as accurate as TBPTT(k, k) in "
        f"{better} of {len(below)} (cell, ρ, 1 < k < T) cases; where both errors are above "
        f"1e-8, the ratio (k, k)/(1, k) has median {np.median(ratios):.3g} "
        f"(range {min(ratios):.3g}–{max(ratios):.3g}). "
        f"TBPTT(k, k) backpropagates each loss through between 1 and k steps (k/2 on "
        f"average), TBPTT(1, k) through k; the price is backward work: at k = {k_hi}, "
        + ", ".join(f"{kind} {a} vs {b} backward steps" for kind, (a, b) in cost.items())
        + f" (T = {T}).")
    rates = {(kind, r): decay_rates(summary, kind, r, K2S, T) for kind in s.CELLS for r in s.RADII}
    findings.append(
        "**Two decay laws** (NOTE [two decay laws]): TBPTT(1, k)'s error falls exponentially "
        "in k, with e-folding length τ = "
        + "; ".join(f"{kind}: " + ", ".join(f"{rates[kind, r][0]:.3g}" for r in s.RADII)
                    for kind in s.CELLS)
        + f" steps at ρ = {', '.join(f'{r:g}' for r in s.RADII)}; TBPTT(k, k)'s only like a "
        "power of k, log-log slope "
        + "; ".join(f"{kind}: " + ", ".join(f"{rates[kind, r][1]:.2f}" for r in s.RADII)
                    for kind in s.CELLS)
        + ". The first loss of every TBPTT(k, k) window (the step right after the previous "
        "update) is backpropagated through one step only, so k1 = k2 never gets the "
        "exponential gain, however much the recurrence contracts.")
    kg = k_hi
    k1s = [k for k in K2S if k <= kg]
    k1_half = max(k for k in k1s if 2 * k <= kg)
    findings.append(
        f"**The (k1, k2) grid** at ρ = {s.GRID_RADIUS:g}: what matters is how far every loss "
        f"is backpropagated, k2 − k1 + 1 steps at least. At k2 = {kg}: "
        + "; ".join(f"{kind}: " + ", ".join(
            f"k1 = {k1} → {_fmt(_lookup(summary, kind, s.GRID_RADIUS, k1, kg)['rel_error'])}"
            for k1 in sorted({1, k1_half, kg})) for kind in s.CELLS) + ".")
    for kind in s.CELLS:
        front = [p for p in fronts if p["cell"] == kind and p["on_frontier"]]
        findings.append(
            f"**Cost against accuracy, {kind}** (ρ = {s.GRID_RADIUS:g}, "
            f"{_common.figure('frontier.png', '')}): "
            "the pairs no other beats at no more backward work are "
            + ", ".join(f"({p['k1']}, {p['k2']}) at {p['backward_per_step']:.3g} backward "
                        f"steps per step, error {_fmt(p['rel_error'])}" for p in front)
            + ".")
    findings.append(
        f"**k2 >= T is exact**: for every k1, the largest relative error with k2 = T is "
        f"{worst_exact:.2g} (floating-point rounding).")

    report = _common.Report("Truncation bias: TBPTT(k1, k2) against the exact gradient", f"""\
**Question.** How far is the truncated gradient from the exact one, as a function of k1,
k2 and how fast the recurrence forgets (the spectral radius ρ of W_hh)?

**Setup.** {', '.join(s.CELLS)} cells (vanilla = tanh), H = {s.HIDDEN}, {s.N_IN} standard-normal
inputs, {s.N_OUT} outputs read out at every step with an mse loss against standard-normal
targets (`bm.tasks.random_problem`), T = {T}, B = {s.BATCH}, float64, PyTorch's default
init U(±1/√H) and then W_hh rescaled to spectral radius
ρ ∈ {{{', '.join(f'{r:g}' for r in s.RADII)}}}.
For the LSTM each of the four (H, H) gate blocks of W_hh is rescaled to ρ: the (4H, H)
matrix has no eigenvalues, and per block keeps the gates' relative roles (see
`set_spectral_radius`, NOTE [LSTM radius]; the GRU's three blocks likewise). Seeds
{list(s.SEEDS)}; errors are summarised over seeds by their geometric mean (they span
decades, where an arithmetic mean is the worst seed's), with the min–max band, cosines by
their median. The exact gradient g* is `bm.full()`'s; g is `bm.truncated(k1, k2).run`'s
(the sum of its updates, all at the same params); errors come from
`bm.compare.grad_error` (relative error ‖g − g*‖/‖g*‖ and cosine) over the **cell's
parameters** (weight_ih, weight_hh and biases): the readout's gradient is exact under
truncation and would dilute the error (NOTE [recurrent error]; the error over every
parameter is in `summary.csv` as `rel_error_all_params`). TBPTT(1, k) and
TBPTT(k, k) are run for every k2 ∈ {list(K2S)} at every ρ; the whole k1 ≤ k2 grid at
ρ = {s.GRID_RADIUS:g}.""")
    for finding in findings:
        report.finding(finding)
    report.section(
        "Errors by cell and spectral radius",
        """\
"err (k1,k2)" is the geometric mean relative error over seeds; "k2 for 1%" the smallest k2
on the grid whose geometric mean error is below 1% (T when none short of T is). ‖g*‖ is
the exact gradient's norm, "mean f" the LSTM's mean forget gate over the run.""",
        _common.md_table(table),
        _common.figure("error_vs_k2.png", "error and cosine vs k2"),
        _common.figure("grid_k1_k2.png", "log10 error over (k1, k2)"),
        f"""**Reading the figures.** Solid lines are TBPTT(1, k2), dashed TBPTT(k2, k2); the band
spans the seeds. The dotted vertical line is k2 = T, where truncation cuts nothing and
the error drops to rounding (drawn at {FLOOR:g}). In the grid, rows are k1 and columns k2;
cells show log10 of the geometric mean relative error at ρ = {s.GRID_RADIUS:g}.""")
    if conditions is not None:
        report.section(conditions[0], *conditions[1])
    report.file("errors.csv", "one row per (cell, ρ, seed, k1, k2): relative error, cosine, "
                              "backward steps and peak bytes of the truncated run.")
    report.file("summary.csv", "the same over seeds: geometric mean, median, min and max.")
    report.file("frontier.csv", f"the cost-versus-accuracy frontier at ρ = {s.GRID_RADIUS:g}.")
    report.file("problems.csv", "per (cell, ρ, seed): the exact loss, ‖g*‖ and the LSTM's "
                                "mean forget gate.")
    if conditions is not None:
        report.file("conditions.csv", "the other conditions, per seed.")
        report.file("conditions_summary.csv", "the other conditions, over seeds.")
        report.file("trained.csv", "the trained models' held-out MSE before and after training.")
    report.file("summary.json", "the settings and the summary.")
    return report.write(d, command)


def run(out: Path | str | None = None, *, small: bool = False, quiet: bool = False) -> Path:
    """Measure, plot and write reports/truncation_bias/report.md; return its path."""
    s = _settings(small)
    d = _common.report_dir(out, NAME, small)
    with _common.pinned_blas(1):
        rows, problems = measure(s, quiet)
        other, trained = other_conditions(s, quiet)
    summary = summarise(rows)
    other_summary = summarise_conditions(other)
    curves = _condition_curves(s, summary, other_summary)
    _common.write_csv(d / "conditions.csv", other)
    _common.write_csv(d / "conditions_summary.csv", other_summary)
    _common.write_csv(d / "trained.csv", trained)
    _common.save_figure(plot_conditions(s, curves), d / "conditions.png")
    fronts = frontier(s, summary)
    _common.write_csv(d / "errors.csv", rows)
    _common.write_csv(d / "frontier.csv", fronts)
    _common.write_csv(d / "summary.csv", summary)
    _common.write_csv(d / "problems.csv", problems)
    _common.write_json(d / "summary.json", {"settings": vars(s), "summary": summary,
                                            "problems": problems})
    _common.save_figure(plot_error_vs_k2(s, summary), d / "error_vs_k2.png")
    _common.save_figure(plot_grid(s, summary), d / "grid_k1_k2.png")
    _common.save_figure(plot_frontier(s, fronts), d / "frontier.png")
    return write_report(d, s, summary, problems, fronts, _common.command_line(NAME, small),
                        conditions_section(s, curves, trained))


def main(argv: Sequence[str] | None = None) -> None:
    _common.study_main(NAME, run, __doc__, argv)


if __name__ == "__main__":
    main()
