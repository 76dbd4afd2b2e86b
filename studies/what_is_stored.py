"""What must be kept to backpropagate through time? The states and activations, not the weights.

For each cell this study lists the arrays one recorded step keeps for its VJP (names,
shapes, bytes, and which one a step recorded right after another shares with it), against
the bytes of one state and of the weights, and measures with
tracemalloc how full() memory grows with T while the weights stay fixed: the evidence
that BPTT's memory is the per-step activations, and what each strategy keeps instead.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np

import bptt_memory as bm
from bptt_memory.compare import default_strategies, format_bytes
from bptt_memory.tasks import random_problem

from . import _common as C

# ---- constants ---------------------------------------------------------------------
BATCH = 32  # B
INPUTS = 32  # I
HIDDEN = 128  # H
OUTPUTS = 10  # readout size
DTYPE = np.float64
STEPS = (50, 100, 200, 400)  # T values for the measured growth of full()'s memory
STRATEGY_STEPS = 1000  # T for the "what each strategy keeps" table (simulated, exact)
SEED = 0
SMALL = dict(BATCH=4, INPUTS=3, HIDDEN=8, STEPS=(5, 10, 20), STRATEGY_STEPS=50)

NAME = "what_is_stored"


def _cells(I: int, H: int) -> dict[str, bm.Cell]:
    return {"vanilla (tanh)": bm.vanilla(I, H), "lstm": bm.lstm(I, H), "gru": bm.gru(I, H)}


def run(out: Path | str | None = None, *, small: bool = False, quiet: bool = False) -> Path:
    cfg = {k: globals()[k] for k in ("BATCH", "INPUTS", "HIDDEN", "STEPS", "STRATEGY_STEPS")}
    if small:
        cfg.update(SMALL)
    B, I, H = cfg["BATCH"], cfg["INPUTS"], cfg["HIDDEN"]
    d = C.report_dir(out, NAME, small)
    item = np.dtype(DTYPE).itemsize

    # 1. the arrays a recorded step keeps, per cell, and those it shares with the step
    # before when that one is still held (NOTE [linked steps] in bptt_memory/cells/_gated.py)
    per_cell, arrays = [], []
    for label, cell in _cells(I, H).items():
        model = bm.Model(cell, OUTPUTS)
        weights = sum(int(np.prod(s)) for s in model.param_shapes().values()) * item
        zero = tuple(np.zeros((B, H), DTYPE) for _ in cell.state_names)
        before, _ = cell.enter(zero)
        res, _ = cell.enter(zero, before)
        for name, a in zip(cell.residual_names, res):
            linked = next((n for n, b in zip(cell.residual_names, before) if a is b), None)
            arrays.append({"cell": label, "array": name, "shape": str(a.shape), "bytes": a.nbytes,
                           "linked to": f"the step before's {linked}" if linked else ""})
        sb, rb, lb = (cell.state_bytes(B, DTYPE), cell.residual_bytes(B, DTYPE),
                      cell.link_bytes(B, DTYPE))
        per_cell.append({
            "cell": label,
            "state": " + ".join(cell.state_names),
            "state_bytes": sb,
            "residual_bytes": rb,
            "link_bytes": lb,
            "bytes_per_step_in_run": rb - lb,
            "residuals_per_state": rb / sb,
            "weight_bytes": weights,
            "steps_to_match_weights": weights / (rb - lb),
        })

    # 2. measured: full()'s traced peak grows with T; the weights do not
    growth = []
    rng = np.random.default_rng(SEED)
    for label, cell in C.progress(_cells(I, H).items(), quiet=quiet, desc=NAME):
        model = bm.Model(cell, OUTPUTS)
        params = model.init(rng, DTYPE)
        for T in cfg["STEPS"]:
            xs, ys = random_problem(model, T, B, rng, DTYPE)
            s = bm.full().run(model, params, xs, ys, trace_memory=True).stats
            growth.append({"cell": label, "T": T, "peak_bytes": s.peak_bytes,
                           "traced_peak_bytes": s.traced_peak_bytes,
                           "weight_bytes": sum(p.nbytes for p in params.values())})

    # 3. what each strategy keeps instead (exact, from the simulator: no arrays)
    T = cfg["STRATEGY_STEPS"]
    cell = bm.lstm(I, H)
    sizes = cell.sizes(B, DTYPE)
    kept = []
    for name, s in default_strategies(cell, T, B, DTYPE).items():
        cost = s.cost(T, **sizes)  # every strategy prices itself, truncated's ring included
        states, residuals, peak = cost.peak_states, cost.peak_residuals, cost.peak_bytes
        fwd = cost.forward_steps
        kept.append({"strategy": s.name, "stored states (peak)": states,
                     "recorded steps (peak)": residuals, "peak_bytes": peak,
                     "forward steps": f"{fwd / T:.2f}×T", "exact": name != "truncated"})

    C.write_csv(d / "residual_arrays.csv", arrays)
    C.write_json(d / "data.json", {"per_cell": per_cell, "growth": growth, "strategies": kept,
                                   "config": {**cfg, "dtype": np.dtype(DTYPE).name}})
    _figure(per_cell, growth, d / "bytes_per_step.png")

    report = C.Report("What must be kept to backpropagate through time?", "\n".join([
        "**The activations and states, not the weights.** The weights are needed by the",
        "backward pass, but they are the same at every step and are kept once whatever T is;",
        "what grows with T is what each step computed. Below, per cell, the arrays one",
        f"recorded step keeps for its vector-Jacobian product (B={B}, I={I}, H={H}, float64).",
        "",
        C.md_table(arrays),
        "A step's first arrays are the state entering it, which is the new state of the step",
        "before. A step recorded right after the previous one, while that one's arrays are",
        "still held, shares them instead of copying (*linked*): vanilla's h_prev is the step",
        "before's h, the LSTM's c_prev the step before's c; the GRU keeps no h' of its own to",
        "share. So a run of n recorded steps holds rb + (n − 1)·(rb − lb) bytes",
        "(`Cell.recorded_bytes`, rb = `residual_bytes`, lb = `link_bytes`).",
        "",
        "Per step, against one stored state and against all the weights:",
        "",
        C.md_table([{**r, **{k: format_bytes(r[k]) for k in (
            "state_bytes", "residual_bytes", "link_bytes", "bytes_per_step_in_run",
            "weight_bytes")}} for r in per_cell]),
        "- `residual_bytes`: one recorded step on its own; `link_bytes`: what it shares with",
        "  the step before when linked; `bytes_per_step_in_run`: what each step after the",
        "  first adds to a long recorded run such as full()'s (residual_bytes − link_bytes).",
        "- `steps_to_match_weights`: weight_bytes / bytes_per_step_in_run: after about this",
        "  many steps, full() already holds more than every weight of the model.",
        "- `residuals_per_state`: a recorded step costs this many stored states. This is why",
        "  a checkpointing strategy stores *states* and recomputes, and why `optimal`, which",
        "  may also keep residuals, beats `binomial` when the budget is in bytes.",
    ]))
    report.section(
        "Measured: full()'s memory grows with T, the weights do not",
        C.md_table([{**g, "peak_bytes": format_bytes(g["peak_bytes"]),
                     "traced_peak_bytes": format_bytes(g["traced_peak_bytes"]),
                     "weight_bytes": format_bytes(g["weight_bytes"])} for g in growth]),
        "`peak_bytes` is the library's exact count of what it held for the backward pass;\n"
        "`traced_peak_bytes` is tracemalloc's peak over the same run (it also sees the\n"
        "gradients and transient temporaries).",
        C.figure("bytes_per_step.png", "bytes per step"))
    report.section(
        f"What each strategy keeps instead (LSTM, T={T}, exact counts from the simulator)",
        C.md_table([{**k, "peak_bytes": format_bytes(k["peak_bytes"])} for k in kept]),
        "- `peak_bytes` counts each step recorded right after a held one at\n"
        "  residual_bytes − link_bytes (linked); truncated's ring does not link.\n"
        "- `full()` keeps every step's residuals; `truncated` a ring of k2 of them (biased\n"
        "  gradient); `uniform`, `binomial` and `optimal` keep a few states (and, for\n"
        "  `optimal`, some residuals) and recompute the rest: exact gradients for more\n"
        "  forward steps.")
    report.file("residual_arrays.csv",
                "the arrays one recorded step keeps, per cell: name, shape, bytes, and which "
                "array of the step before it shares when linked (the first table).")
    report.file("data.json",
                "per cell, the bytes of one state, one recorded step, its link and the weights "
                "(`per_cell`); full()'s exact and traced peaks against T, with the weights' "
                f"bytes (`growth`); what each strategy keeps at T = {T} (`strategies`); and the "
                "settings (`config`).")
    return report.write(d, C.command_line(NAME, small))


def _figure(per_cell: list[dict], growth: list[dict], path: Path) -> None:
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    labels = [r["cell"] for r in per_cell]
    x = np.arange(len(labels))
    a.bar(x - 0.27, [r["state_bytes"] / 2**10 for r in per_cell], 0.27, label="one stored state")
    a.bar(x, [r["residual_bytes"] / 2**10 for r in per_cell], 0.27, label="one recorded step")
    a.bar(x + 0.27, [r["bytes_per_step_in_run"] / 2**10 for r in per_cell], 0.27,
          label="a step in a long recorded run (linked)")
    a.set_xticks(x, labels)
    a.set_ylabel("KiB")
    a.set_title("Bytes per step")
    a.set_ylim(0, 1.4 * max(r["residual_bytes"] for r in per_cell) / 2**10)  # room for the legend
    a.legend(fontsize=8, loc="upper left")
    for label in labels:
        pts = [g for g in growth if g["cell"] == label]
        b.plot([g["T"] for g in pts], [g["traced_peak_bytes"] / 2**20 for g in pts], "o-",
               label=f"{label}: full() traced peak")
    w = growth[0]["weight_bytes"] if growth else 0
    b.axhline(w / 2**20, color="k", ls="--", label="weights (vanilla)")
    b.set_xlabel("T (steps)")
    b.set_ylabel("MiB")
    b.set_title("full(): memory grows with T")
    b.legend(fontsize=8)
    C.save_figure(fig, path)


def main(argv: Sequence[str] | None = None) -> None:
    C.study_main(NAME, run, __doc__, argv)


if __name__ == "__main__":
    main()
