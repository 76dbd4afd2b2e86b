"""Checkpointing a PyTorch cell loop: `bptt_memory.torch.scan` against torch's own tools.

Question: on a PyTorch model, what do this library's schedules cost in time at a given
memory, against plain autograd and `torch.utils.checkpoint` (issue #18)?

Contenders, all on the same cell (nn.LSTMCell / nn.GRUCell) in a Python loop, the same
weights, data and loss (a linear readout of h at every step, Σ_t mean squared error):

- plain: the loop under autograd;
- torch checkpoint: the loop cut into √T segments, each in
  ``torch.utils.checkpoint.checkpoint(..., use_reentrant=False)`` with its losses inside;
- scan full(), scan binomial(slots=√T);
- scan optimal at the bytes torch's checkpoint holds, and at 5% of plain autograd's (at
  least one step's saved tensors, the least optimal can run in: only toy sizes need that);
- fused nn.LSTM / nn.GRU (plain autograd), a reference line.

NOTE [bytes] Plain and fused: the bytes of the unique storages autograd saves during the
forward pass (all alive when backward starts), counted with a saved-tensor pack hook,
params and xs/ys left out. scan: ``Stats.peak_bytes`` (stored states plus the saved
tensors of recorded steps, NOTE [what a step holds] in bptt_memory/torch.py). torch's
checkpoint hides its saved tensors behind its own hooks, so its bytes are those of the
same programme in this library's accounting: √T stored boundary states and one segment's
recorded steps, i.e. ``uniform(every=√T)``'s plan from `bptt_memory.torch.cost`.

NOTE [timing] One process; torch and BLAS pinned to THREADS threads. Per configuration
every contender runs once untimed (warm-up, bytes, optimal's planning, which is memoised
and timed apart), then ROUNDS rounds in which each runs once, the order rotated every
round and reversed every other one; garbage collected before and off during each run.
Medians with min–max; ratios are taken against plain autograd (or the checkpointed loop)
from the same rounds.

Targets (reported, never asserted): (1) optimal at ≤ torch checkpoint's bytes ≤ 1.0× its
time; (2) optimal at 5% of plain's bytes ≤ 1.5× plain's time at T = 1000; (3) scan
full() ≤ 1.1× plain's time.

Run: ``python -m studies.torch_checkpointing [--small] [--out DIR] [--grid H:T,...]``;
writes DIR/torch_checkpointing/report.md, results.csv, results.json, time_vs_bytes.png.
``--small`` runs toy sizes into a temporary folder and judges no target.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from bptt_memory.cli import add_study_options
from bptt_memory.timing import interleaved

from . import output_folder
from ._common import (
    DEFAULT_OUT,
    Report,
    command_line,
    figure,
    md_table,
    plt,
    report_dir,
    save_figure,
    strategy_color,
    verdict,
    write_csv,
    write_json,
)

NAME = "torch_checkpointing"

# --- constants ---------------------------------------------------------------------------
CELLS = ("lstm", "gru")
B, I = 32, 32               # batch, input width
GRID = [(128, 1000), (512, 1000), (128, 10_000), (512, 10_000)]  # (H, T), the issue's
THREADS = 1                 # torch and BLAS threads for every timing
ROUNDS = 5                  # timed rounds per configuration
LONG_ROUNDS = 3             # ... where T >= 10 000 (a round of seven contenders takes minutes)
LOW_FRACTION = 0.05         # optimal's second budget: this fraction of plain's bytes
SEED = 0
# --small: toy sizes, seconds
SMALL_GRID = [(16, 30), (24, 50)]
SMALL_ROUNDS = 2

CONTENDERS = ("plain", "torch_checkpoint", "scan_full", "scan_binomial", "scan_optimal_ckpt",
              "scan_optimal_5pct", "fused")


def _setup(torch: Any, kind: str, H: int, T: int) -> dict:
    """Cell, readout, fused module with the same weights, data."""
    nn = torch.nn
    torch.manual_seed(SEED)
    cell = (nn.LSTMCell if kind == "lstm" else nn.GRUCell)(I, H)
    fused = (nn.LSTM if kind == "lstm" else nn.GRU)(I, H)
    with torch.no_grad():
        for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            getattr(fused, n + "_l0").copy_(getattr(cell, n))

    class Readout(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(H, 1)

        def forward(self, state: Any, y: Any) -> Any:
            h = state[0] if isinstance(state, tuple) else state
            return (self.lin(h) - y).square().mean()

    readout = Readout()
    xs = torch.randn(T, B, I)
    ys = torch.randn(T, B, 1)
    h0 = (torch.zeros(B, H), torch.zeros(B, H)) if kind == "lstm" else torch.zeros(B, H)
    return dict(cell=cell, fused=fused, readout=readout, xs=xs, ys=ys, h0=h0, T=T, H=H, kind=kind)


def _contenders(torch: Any, bm: Any, scan: Callable, cost: Callable, c: dict
                ) -> tuple[dict[str, Callable[[], Any]], dict[str, Any]]:
    """Each contender as a callable running forward and backward; and the budgets."""
    from torch.utils.checkpoint import checkpoint

    cell, readout, fused, xs, ys, h0, T = (c[k] for k in
                                           ("cell", "readout", "fused", "xs", "ys", "h0", "T"))
    seg = max(1, round(math.sqrt(T)))

    def loop(s: Any, n0: int, n1: int) -> tuple[Any, Any]:
        loss = 0
        for t in range(n0, n1):
            s = cell(xs[t], s)
            loss = loss + readout(s, ys[t])
        return s, loss

    def plain() -> None:
        loop(h0, 0, T)[1].backward()

    def checkpointed() -> None:
        s, total = h0, 0
        for n0 in range(0, T, seg):
            n1 = min(T, n0 + seg)

            def piece(*state: Any, n0: int = n0, n1: int = n1) -> tuple:
                out, loss = loop(state if len(state) > 1 else state[0], n0, n1)
                return (*out, loss) if isinstance(out, tuple) else (out, loss)

            out = checkpoint(piece, *(s if isinstance(s, tuple) else (s,)), use_reentrant=False)
            s = tuple(out[:-1]) if len(out) > 2 else out[0]
            total = total + out[-1]
        total.backward()

    def fused_run() -> None:
        out, _ = fused(xs, (h0[0][None], h0[1][None]) if isinstance(h0, tuple) else h0[None])
        ((readout.lin(out) - ys).square().mean(dim=(1, 2))).sum().backward()

    def with_scan(strategy: Any) -> Callable[[], None]:
        def run() -> None:
            scan(cell, xs, h0, ys=ys, loss_fn=readout, strategy=strategy)[0].backward()
        return run

    plain_bytes = _saved_bytes(torch, plain, [*cell.parameters(), *readout.parameters(), xs, ys])
    ckpt_bytes = cost(cell, xs, h0, ys=ys, loss_fn=readout,
                      strategy=bm.uniform(every=seg)).peak_bytes
    from bptt_memory.torch import measure_step

    one_step = measure_step(cell, xs, h0, ys=ys, loss_fn=readout).residual_bytes
    low = max(int(LOW_FRACTION * plain_bytes), one_step)  # optimal needs one step's residuals
    budgets = {"plain": plain_bytes, "torch_checkpoint": ckpt_bytes, "low": low, "segment": seg,
               "fused": _saved_bytes(torch, fused_run, [*fused.parameters(),
                                                        *readout.parameters(), xs, ys])}
    strategies = {"scan_full": bm.full(), "scan_binomial": bm.binomial(slots=seg),
                  "scan_optimal_ckpt": bm.optimal(budget_bytes=ckpt_bytes),
                  "scan_optimal_5pct": bm.optimal(budget_bytes=low)}
    runs = {"plain": plain, "torch_checkpoint": checkpointed, "fused": fused_run}
    runs.update({k: with_scan(s) for k, s in strategies.items()})
    budgets["strategies"] = strategies
    return runs, budgets


def _saved_bytes(torch: Any, run: Callable[[], None], shared: Sequence[Any]) -> int:
    """Peak bytes of the unique storages autograd holds saved (NOTE [bytes])."""
    skip = {a.untyped_storage().data_ptr() for a in shared}
    seen: dict[int, int] = {}

    def pack(t: Any) -> Any:
        k = t.untyped_storage().data_ptr()
        if k not in skip:
            seen[k] = t.untyped_storage().nbytes()
        return t.detach()

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        run()
    return sum(seen.values())


def _measure(torch: Any, bm: Any, kind: str, H: int, T: int, rounds: int) -> list[dict]:
    from bptt_memory.torch import cost, scan

    c = _setup(torch, kind, H, T)
    runs, budgets = _contenders(torch, bm, scan, cost, c)
    params = [*c["cell"].parameters(), *c["readout"].parameters(), *c["fused"].parameters()]

    def zero() -> None:
        for p in params:
            p.grad = None

    rows, extra = [], {}
    for k, strategy in budgets["strategies"].items():  # warm-up with stats: bytes, steps, planning
        zero()
        start = time.perf_counter()
        plan = cost(c["cell"], c["xs"], c["h0"], ys=c["ys"], loss_fn=c["readout"],
                    strategy=strategy)
        plan_s = time.perf_counter() - start
        loss, _, st = scan(c["cell"], c["xs"], c["h0"], ys=c["ys"], loss_fn=c["readout"],
                           strategy=strategy, stats=True)
        loss.backward()
        extra[k] = dict(bytes=st.peak_bytes, forward_steps=st.forward_steps, plan_seconds=plan_s,
                        planned_bytes=plan.peak_bytes, strategy=strategy.name)
    def zeroed(run: Callable[[], None]) -> Callable[[], None]:
        def go() -> None:
            zero()
            run()
        return go

    # the scan contenders were warmed up above; the rest warm up here
    for k in ("plain", "torch_checkpoint", "fused"):
        zeroed(runs[k])()
    times = interleaved({k: zeroed(runs[k]) for k in CONTENDERS}, rounds, warmup=False,
                        threads=THREADS)
    seg = budgets["segment"]
    base = {"plain": dict(bytes=budgets["plain"], forward_steps=T, strategy="autograd"),
            "torch_checkpoint": dict(bytes=budgets["torch_checkpoint"],
                                     forward_steps=2 * T,  # every segment runs twice
                                     strategy=f"checkpoint({math.ceil(T / seg)} segments)"),
            "fused": dict(bytes=budgets["fused"], forward_steps=T, strategy="nn." + kind.upper())}
    base.update(extra)
    for k in CONTENDERS:
        tk = times[k]
        vs_plain, vs_ckpt = tk.ratios(times["plain"]), tk.ratios(times["torch_checkpoint"])
        rows.append(dict(cell=kind, H=H, T=T, contender=k, strategy=base[k]["strategy"],
                         median_s=tk.median, min_s=tk.spread[0], max_s=tk.spread[1],
                         bytes=base[k]["bytes"], forward_steps=base[k]["forward_steps"],
                         plan_seconds=base[k].get("plan_seconds", 0.0),
                         vs_plain=statistics.median(vs_plain), vs_plain_min=min(vs_plain),
                         vs_plain_max=max(vs_plain), vs_checkpoint=statistics.median(vs_ckpt),
                         vs_checkpoint_min=min(vs_ckpt), vs_checkpoint_max=max(vs_ckpt),
                         rounds=rounds,
                         budget_bytes=getattr(budgets["strategies"].get(k), "budget_bytes", "")))
    return rows


def _targets(rows: list[dict]) -> list[dict]:
    out = []
    by = {(r["cell"], r["H"], r["T"], r["contender"]): r for r in rows}
    for (kind, H, T, k), r in sorted(by.items()):
        ck = by[kind, H, T, "torch_checkpoint"]
        if k == "scan_optimal_ckpt":
            out.append(dict(target="1: optimal at <= checkpoint's bytes, <= 1.0x its time",
                            config=f"{kind} H={H} T={T}", ratio=r["vs_checkpoint"],
                            ratio_min=r["vs_checkpoint_min"], ratio_max=r["vs_checkpoint_max"],
                            bytes_ok=r["bytes"] <= ck["bytes"],
                            met=r["vs_checkpoint"] <= 1.0 and r["bytes"] <= ck["bytes"]))
        if k == "scan_optimal_5pct" and T == 1000:
            out.append(dict(target="2: optimal at 5% of plain's bytes, <= 1.5x plain's time",
                            config=f"{kind} H={H} T={T}", ratio=r["vs_plain"],
                            ratio_min=r["vs_plain_min"], ratio_max=r["vs_plain_max"], bytes_ok=True,
                            met=r["vs_plain"] <= 1.5))
        if k == "scan_full":
            out.append(dict(target="3: scan full() <= 1.1x plain's time",
                            config=f"{kind} H={H} T={T}", ratio=r["vs_plain"],
                            ratio_min=r["vs_plain_min"], ratio_max=r["vs_plain_max"], bytes_ok=True,
                            met=r["vs_plain"] <= 1.1))
    return out


MARKERS = {"plain": "o", "torch_checkpoint": "s", "scan_full": "^", "scan_binomial": "v",
           "scan_optimal_ckpt": "D", "scan_optimal_5pct": "P", "fused": "x"}


def _figure(rows: list[dict], path: Path) -> None:
    configs = sorted({(r["cell"], r["H"], r["T"]) for r in rows})
    fig, axes = plt.subplots(1, len(configs), figsize=(4 * len(configs), 3.6), squeeze=False)
    for ax, (kind, H, T) in zip(axes[0], configs):
        for r in rows:
            if (r["cell"], r["H"], r["T"]) == (kind, H, T):
                ax.errorbar(r["bytes"] / 2**20, r["median_s"],
                            yerr=[[r["median_s"] - r["min_s"]], [r["max_s"] - r["median_s"]]],
                            fmt=MARKERS[r["contender"]], label=r["contender"],
                            color=strategy_color(r["strategy"] if r["contender"].startswith("scan")
                                                 else "torch"))
        ax.set_xscale("log")
        ax.set_xlabel("peak saved bytes (MiB)")
        ax.set_ylabel("seconds, forward + backward")
        ax.set_title(f"{kind} H={H} T={T}")
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path)


def _write(d: Path, rows: list[dict], small: bool, command: str, torch: Any,
           seconds: float) -> Path:
    write_csv(d / "results.csv", rows)
    targets = [] if small else _targets(rows)
    write_json(d / "results.json", {"rows": rows, "targets": targets})
    _figure(rows, d / "time_vs_bytes.png")
    if small:
        answer = ("Toy sizes (`--small`): a smoke run of the harness. Its timings say nothing "
                  "about the targets, which are not judged here.")
    else:
        met = sum(t["met"] for t in targets)
        answer = (f"{met} of {len(targets)} target checks met on this machine. "
                  + "; ".join(f"target {t['target'][0]} {t['config']}: {t['ratio']:.2f}x "
                              f"({verdict(t['met'], small)})" for t in targets) + ".")
    ran = sorted({(r["H"], r["T"]) for r in rows})
    skipped = sorted(set(GRID) - set(ran)) or "none"
    cols = ["cell", "H", "T", "contender", "strategy", "median_s", "min_s", "max_s",
            "vs_plain", "vs_plain_min", "vs_plain_max", "vs_checkpoint", "bytes",
            "forward_steps", "plan_seconds"]
    lead = answer + "\n\n" + figure("time_vs_bytes.png", "time against peak saved bytes")
    report = Report("Checkpointing a PyTorch cell loop: bptt_memory.torch.scan against torch",
                    lead)
    report.section(
        "Targets",
        "`ratio` is the median of per-round ratios, `ratio_min`–`ratio_max` their range.",
        md_table(targets, ["target", "config", "ratio", "ratio_min", "ratio_max", "bytes_ok",
                           "met"]) if targets else "Not judged at toy sizes.")
    report.section(
        "Every contender",
        "Seconds are forward + backward, median (min, max) over the timed rounds; `vs_plain` "
        "and `vs_checkpoint` are medians of per-round ratios (`vs_plain_min`, `vs_plain_max`: "
        "their range). `bytes`: NOTE [bytes] in the study (torch checkpoint's in this "
        "library's accounting). `plan_seconds`: `cost(...)`, i.e. one traced step plus "
        "planning; optimal's tables are memoised, so each timed run pays only for reading "
        "its plan out of them.",
        md_table(rows, cols))
    report.section(
        "How it was made",
        "\n".join([
            f"- torch {torch.__version__}, {THREADS} torch thread(s) for every timing; timed "
            "with `bptt_memory.timing.interleaved` (NOTE [timing] in the study)",
            f"- Configurations (H, T): {ran}; of the issue's grid, not run: {skipped}"]))
    report.run_line(f"Wall time of the study: {seconds:.0f} s")
    report.file("results.csv", "one row per (cell, H, T, contender): its strategy, median, "
                "min and max seconds, ratios to plain autograd and to torch's checkpoint "
                "(medians of per-round ratios and their range), bytes (NOTE [bytes]), forward "
                "steps, planning seconds, rounds, and the scan strategies' budget.")
    report.file("results.json", "the same rows, and the target checks (none at toy sizes).")
    return report.write(d, command, pinned=THREADS)


def run(out: Path | str | None = DEFAULT_OUT, *, small: bool = False, quiet: bool = False,
        grid: Sequence[tuple[int, int]] | None = None, cells: Sequence[str] = CELLS,
        rounds: int | None = None, command: str | None = None) -> Path:
    """Measure the grid and write the report; return its path (`report_dir` picks the
    folder: with no ``out``, a temporary one for ``small``, else the repository's reports/)."""
    import torch

    import bptt_memory as bm

    start = time.perf_counter()
    d = report_dir(out, NAME, small=small)
    grid = list(grid or (SMALL_GRID if small else GRID))
    old = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    rows: list[dict] = []
    try:
        for H, T in grid:
            for kind in cells:
                if not quiet:
                    print(f"{NAME}: {kind} H={H} T={T}", file=sys.stderr, flush=True)
                n = rounds or (SMALL_ROUNDS if small else LONG_ROUNDS if T >= 10_000 else ROUNDS)
                rows += _measure(torch, bm, kind, H, T, n)
    finally:
        torch.set_num_threads(old)
    command = command or command_line(NAME, small)
    return _write(d, rows, small, command, torch, time.perf_counter() - start)


def _grid(text: str) -> list[tuple[int, int]]:
    try:
        pairs = [tuple(int(v) for v in g.split(":")) for g in text.split(",")]
    except ValueError:
        pairs = []
    if not pairs or any(len(p) != 2 or min(p) < 1 for p in pairs):
        raise argparse.ArgumentTypeError(f"--grid {text!r}: give H:T pairs of positive "
                                         "integers, comma-separated, e.g. 128:1000,512:1000")
    return [(p[0], p[1]) for p in pairs]


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog=f"python -m studies.{NAME}", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_study_options(p)
    p.add_argument("--grid", type=_grid, default=None,
                   help=f"H:T pairs, e.g. 128:1000,512:1000 (default: {GRID}; "
                   f"--small: {SMALL_GRID})")
    p.add_argument("--rounds", type=int, default=None,
                   help=f"timed rounds per configuration (default: {ROUNDS}, {LONG_ROUNDS} at "
                   f"T >= 10000; --small: {SMALL_ROUNDS})")
    args = p.parse_args(argv)
    if args.rounds is not None and args.rounds < 1:
        p.error(f"--rounds {args.rounds}: needs at least one timed round")
    command = " ".join(["python -m studies." + NAME, *(argv if argv is not None else sys.argv[1:])])
    out = output_folder(args.out, small=args.small)
    if args.small and args.out is None:
        print(f"smoke run (toy sizes): writing to {out}, not to the committed reports")
    path = run(out, small=args.small, quiet=args.quiet, grid=args.grid, rounds=args.rounds,
               command=command)
    print(f"{NAME}: wrote {path}")


if __name__ == "__main__":
    main()
