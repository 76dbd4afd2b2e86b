"""What does a cell written against the protocol alone cost, against a built-in one?

A user's cell needs only the protocol's six methods (`bptt_memory.Cell`); the built-in
cells also implement its optional `kernels` hook, which batches the input projections of
a chunk of steps and the weight gradients of a window into one matrix product each, and
links consecutive recorded steps. This study times full() on a protocol-only copy of the
vanilla relu cell against ``bm.vanilla(..., activation="relu")``, the same equations and
parameters, side by side in one process (BLAS pinned to one thread, rounds interleaved,
medians with their range), and checks that both give the same gradient.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Sequence

import numpy as np

import bptt_memory as bm

from . import _common as C

# ---- constants ---------------------------------------------------------------------
BATCH = 32  # B
INPUTS = 32  # I
HIDDEN = 128  # H
OUTPUTS = 10  # readout size
STEPS = 1000  # T
DTYPES = ("float64", "float32")
ROUNDS = 7  # timed rounds per contender, interleaved, after one warm-up round
LIMIT = 3.0  # the protocol-only cell's full() time over the built-in's that the issue allows
SEED = 0
SMALL = dict(BATCH=2, INPUTS=3, HIDDEN=4, STEPS=20, ROUNDS=2)

NAME = "user_cell_speed"


class ProtocolRelu(bm.Cell):
    """h' = relu(x·W_ihᵀ + b_ih + h·W_hhᵀ + b_hh) with the protocol's methods only (and
    `residual_output`), parameters named like ``bm.vanilla``'s so both run on one dict."""

    def __init__(self, n_in: int, n_hidden: int) -> None:
        self.I, self.H = n_in, n_hidden

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        H, I = self.H, self.I
        return {"weight_ih": (H, I), "weight_hh": (H, H), "bias_ih": (H,), "bias_hh": (H,)}

    def state_shapes(self, batch: int) -> tuple[tuple[int, ...], ...]:
        return ((batch, self.H),)

    def residual_shapes(self, batch: int) -> tuple[tuple[int, ...], ...]:
        return ((batch, self.H), (batch, self.H))  # h_prev, h'

    def step(self, params: dict, x: np.ndarray, state: tuple) -> tuple:
        z = x @ params["weight_ih"].T + params["bias_ih"] + state[0] @ params["weight_hh"].T
        z += params["bias_hh"]
        return (np.maximum(z, 0.0),)

    def record(self, params: dict, x: np.ndarray, state: tuple) -> tuple:
        new = self.step(params, x, state)
        return new, (state[0].copy(), new[0])

    def residual_output(self, residuals: tuple) -> np.ndarray:
        return residuals[1]

    def vjp(self, params: dict, x: np.ndarray, residuals: tuple, dstate: tuple) -> tuple:
        h_prev, h = residuals
        dz = dstate[0] * (h > 0)
        db = dz.sum(axis=0)
        dparams = {"weight_ih": dz.T @ x, "weight_hh": dz.T @ h_prev, "bias_ih": db, "bias_hh": db}
        return (dz @ params["weight_hh"],), dparams


def run(out: Path | str = C.DEFAULT_OUT, *, small: bool = False, quiet: bool = False) -> Path:
    cfg = {k: globals()[k] for k in ("BATCH", "INPUTS", "HIDDEN", "STEPS", "ROUNDS")}
    if small:
        cfg.update(SMALL)
    B, I, H, T, rounds = (cfg[k] for k in ("BATCH", "INPUTS", "HIDDEN", "STEPS", "ROUNDS"))
    d = C.report_dir(out, NAME)
    rows = []
    with C.pinned_blas(1):
        for dtype in C.progress(DTYPES, quiet=quiet, desc=NAME):
            rng = np.random.default_rng(SEED)
            builtin = bm.Model(bm.vanilla(I, H, activation="relu"), OUTPUTS)
            mine = bm.Model(ProtocolRelu(I, H), OUTPUTS)
            params = builtin.init(rng, dtype)
            xs = rng.standard_normal((T, B, I)).astype(dtype)
            ys = rng.standard_normal((T, B, OUTPUTS)).astype(dtype)
            runs = {"built-in": lambda: bm.full().run(builtin, params, xs, ys),
                    "protocol only": lambda: bm.full().run(mine, params, xs, ys)}
            results = {k: f() for k, f in runs.items()}  # warm-up, and the gradients
            a, b = results["built-in"], results["protocol only"]
            err = max(float(np.abs(a.grads[k] - b.grads[k]).max() / np.abs(a.grads[k]).max())
                      for k in params)
            times: dict[str, list[float]] = {k: [] for k in runs}
            for r in range(rounds):
                for name in (list(runs) if r % 2 == 0 else list(runs)[::-1]):
                    t0 = time.process_time()
                    runs[name]()
                    times[name].append(time.process_time() - t0)
            ratios = [m / t for m, t in zip(times["protocol only"], times["built-in"])]
            rows.append({
                "dtype": dtype,
                "built_in_ms": 1e3 * statistics.median(times["built-in"]),
                "protocol_only_ms": 1e3 * statistics.median(times["protocol only"]),
                "ratio_median": statistics.median(ratios),
                "ratio_min": min(ratios), "ratio_max": max(ratios),
                "peak_bytes_built_in": a.stats.peak_bytes,
                "peak_bytes_protocol_only": b.stats.peak_bytes,
                "max_rel_grad_diff": err,
            })
    C.write_csv(d / "results.csv", rows)
    if small:
        answer = "A smoke run at toy sizes: its times say nothing, and no verdict is drawn."
    else:
        worst = max(r["ratio_median"] for r in rows)
        verdict = "within" if worst <= LIMIT else "over"
        answer = (
            f"full() on a protocol-only copy of the vanilla relu cell takes at most "
            f"{worst:.2f}× the built-in cell's time (median over {rounds} interleaved rounds), "
            f"{verdict} the {LIMIT:.0f}× the library allows a cell without the optional "
            "`kernels` hook. The difference is the hook's batching: the built-in cell makes "
            "one input-projection product per chunk of 16 steps and one weight-gradient "
            "product per window, where the protocol makes them step by step.")
    # a report with no sections of its own: the answer, the setup, the table and its notes
    # are all its lead
    report = C.Report("A cell of one's own: what the protocol alone costs", "\n\n".join([
        answer,
        f"B = {B}, I = {I}, H = {H}, T = {T}; user-mode CPU time per full() run.",
        C.md_table(rows).rstrip("\n"),
        "`max_rel_grad_diff`: the largest difference between the two cells' gradients, "
        "relative to the largest gradient entry (the same equations, summed in another order).\n"
        "The protocol-only cell holds more bytes: it does not link a step to the one before "
        "(NOTE [linked steps] in bptt_memory/cells/_gated.py), so it keeps h_prev beside h'.",
    ]))
    report.file("results.csv", "one row per dtype: each cell's median full() time (ms, "
                "user-mode CPU time), the protocol-only cell's time divided by the built-in's "
                "(median, min and max across rounds), each cell's peak_bytes, and "
                "`max_rel_grad_diff`")
    return report.write(d, C.command_line(NAME, small), pinned=1)


def main(argv: Sequence[str] | None = None) -> None:
    C.study_main(NAME, run, __doc__, argv)


if __name__ == "__main__":
    main()
