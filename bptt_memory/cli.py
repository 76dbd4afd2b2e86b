"""The `bptt-memory` command: compare strategies, plan a budget, run the studies.

    bptt-memory compare [--cell lstm --steps 1000 --batch 32 --hidden 128 ...]
    bptt-memory plan --steps 100000 --budget 64MiB --cell lstm --batch 32 --hidden 256
    bptt-memory study NAME|all [--small] [--out DIR]

Also ``python -m bptt_memory ...``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from dataclasses import asdict
from pathlib import Path
from types import ModuleType
from typing import Any, Sequence

import numpy as np

from . import STRATEGIES, __version__
from .cell import Cell
from .cells import CELLS, Gated
from .compare import (
    NotEnoughMemory,
    check_memory,
    compare,
    default_strategies,
    format_bytes,
    parse_bytes,
    parse_count,
    plan,
)
from .model import Model
from .tasks import random_problem
from .timing import DEFAULT_THREADS, blas_threads_line

__all__ = ["main"]

#: compare names the strategies that took this many page faults per run (1 MiB of 4 KiB pages)
_FAULTS_WORTH_NOTING = 256


def _cell(args: argparse.Namespace) -> Cell:
    return CELLS[args.cell](args.inputs, args.hidden)


def _positive(text: str) -> int:
    try:
        return parse_count(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _budget(text: str) -> int:
    try:
        return parse_bytes(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def studies() -> ModuleType:
    """The studies package: `bptt_memory.studies` once installed (the repository's
    studies/ folder, installed inside the library's namespace); the repository's own
    `studies` when running from a source checkout that was not installed."""
    try:
        return importlib.import_module("bptt_memory.studies")
    except ModuleNotFoundError:
        return importlib.import_module("studies")


def _problem_args(p: argparse.ArgumentParser, steps: int, batch: int, hidden: int) -> None:
    p.add_argument("--cell", choices=sorted(CELLS), default="lstm", help="(default lstm)")
    p.add_argument("--steps", type=_positive, default=steps, help=f"T (default {steps})")
    p.add_argument("--batch", type=_positive, default=batch, help=f"B (default {batch})")
    p.add_argument("--hidden", type=_positive, default=hidden, help=f"H (default {hidden})")
    p.add_argument("--inputs", type=_positive, default=32, help="n_in (default 32)")
    p.add_argument("--dtype", choices=["float32", "float64"], default="float64",
                   help="(default float64)")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="bptt-memory",
        description="What must be kept to backpropagate through time, and what keeping less costs.",
    )
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    c = sub.add_parser("compare", help="run every strategy on one random problem; print a table",
                       description="Run every strategy on one random problem and print a "
                       "table: exact and traced peak bytes, forward steps, time against full() "
                       "(interleaved rounds, medians, on pinned BLAS threads), gradient error. "
                       "Refuses before running when full(), the baseline, cannot fit in memory.")
    _problem_args(c, steps=1000, batch=32, hidden=128)
    c.add_argument("--outputs", type=_positive, default=10, help="n_out (default 10)")
    c.add_argument("--strategies", nargs="+", choices=sorted(STRATEGIES), default=list(STRATEGIES),
                   metavar="NAME", help=f"subset of {', '.join(STRATEGIES)} (default: all)")
    c.add_argument("--repeats", type=_positive, default=5, help="timed rounds (median; default 5)")
    c.add_argument("--threads", type=_positive, default=DEFAULT_THREADS,
                   help=f"BLAS threads for the timings (default {DEFAULT_THREADS})")
    c.add_argument("--seed", type=int, default=0, help="(default 0)")
    c.add_argument("--json", action="store_true", help="machine-readable output (default: a table)")
    c.add_argument("--quiet", action="store_true",
                   help="no progress bar (default: a bar on stderr when it is a terminal)")

    pl = sub.add_parser("plan", help="which strategy fits a memory budget, before running")
    _problem_args(pl, steps=100000, batch=32, hidden=256)
    pl.add_argument("--budget", type=_budget, required=True, help="e.g. 64MiB, 1.5GB, 1048576")
    pl.add_argument("--json", action="store_true")

    s = sub.add_parser("study", help="run a study and write its report",
                       description="Run a study and write its report. A full run writes the "
                       "repository's reports/ folder (from a source checkout); --small writes a "
                       "new temporary folder unless --out names one.")
    s.add_argument("name", choices=[*studies().STUDIES, "all"])
    add_study_options(s)
    return p


def add_study_options(p: argparse.ArgumentParser) -> None:
    """--small, --out and --quiet: what `bptt-memory study` and every study's own command
    line take."""
    p.add_argument("--small", action="store_true",
                   help="toy sizes, seconds: a smoke run (default: the report's sizes)")
    p.add_argument("--out", type=Path, default=None,
                   help="folder to write NAME/report.md into (default: the repository's "
                   "reports/ for a full run, a new temporary folder with --small)")
    p.add_argument("--quiet", action="store_true",
                   help="no progress bars (default: bars on stderr when it is a terminal)")


def _progress(quiet: bool) -> Any:
    """A tqdm bar factory, or None: bars only on a terminal, and not when told to be quiet."""
    if quiet or not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    return lambda total: tqdm(total=total, file=sys.stderr, leave=False, desc="runs")


def _compare(args: argparse.Namespace) -> int:
    dtype = np.dtype(args.dtype)
    cell = _cell(args)
    try:
        check_memory(cell, args.steps, args.batch, args.inputs, args.outputs, dtype)
    except NotEnoughMemory as e:
        print(f"bptt-memory compare: error: {e}", file=sys.stderr)
        return 1
    # the compiled float32 kernels are the built-in gated cells' (NOTE [fused float32 LSTM])
    fused = isinstance(cell, Gated) and cell.uses_fused(dtype)
    model = Model(cell, n_out=args.outputs, loss="mse")
    rng = np.random.default_rng(args.seed)
    params = model.init(rng, dtype)
    xs, ys = random_problem(model, args.steps, args.batch, rng, dtype)
    chosen = default_strategies(cell, args.steps, args.batch, dtype)
    strategies = {n: chosen[n] for n in args.strategies}
    rows = compare(model, params, xs, ys, strategies, repeats=args.repeats, threads=args.threads,
                   progress=None if args.json else _progress(args.quiet))
    if args.json:
        print(json.dumps({"problem": {k: v for k, v in vars(args).items() if k != "func"},
                          "blas_threads": args.threads,
                          "fused_kernels": fused,
                          "rows": [asdict(r) for r in rows]}, indent=2))
        return 0
    print(f"{args.cell} T={args.steps} B={args.batch} H={args.hidden} I={args.inputs} "
          f"{args.dtype}; "
          f"time (wall) and cpu (user-mode CPU) are medians of {args.repeats} interleaved runs, "
          f"relative to full(), with the range of the per-round ratios; "
          f"{blas_threads_line(args.threads)}")
    head = ("strategy", "peak (exact)", "peak (traced)", "% of full", "fwd steps", "time",
            "time range", "cpu", "grad rel err", "cosine")
    table = [head]
    for r in rows:
        spread = ("-" if r.time_ratio_low is None or r.time_ratio_high is None
                  else f"{r.time_ratio_low:.2f}–{r.time_ratio_high:.2f}")
        table.append((r.strategy, format_bytes(r.peak_bytes),
                      "-" if r.traced_peak_bytes is None else format_bytes(r.traced_peak_bytes),
                      f"{100 * r.memory_fraction:.1f}%", f"{r.forward_factor:.2f}×T",
                      f"{r.time_ratio:.2f}×", spread,
                      "-" if r.cpu_ratio is None else f"{r.cpu_ratio:.2f}×",
                      f"{r.grad_rel_error:.1e}", f"{r.grad_cosine:.6f}"))
    print(_format(table))
    # NOTE [cpu time] in compare.py; a few faults per run are the interpreter's own
    faulted = [f"{r.strategy} {r.page_faults:,}" for r in rows
               if r.page_faults is not None and r.page_faults >= _FAULTS_WORTH_NOTING]
    if faulted:
        print("page faults per run, the system handing out fresh memory (in time, not in cpu): "
              + "; ".join(faulted))
    if fused:
        print("steps ran on the compiled float32 LSTM kernels (numba; BPTT_MEMORY_FUSED=0 for "
              "numpy's)")
    return 0


def _plan(args: argparse.Namespace) -> int:
    dtype = np.dtype(args.dtype)
    cell = _cell(args)
    options = plan(cell, args.steps, args.batch, args.budget, dtype)
    if args.json:  # strict JSON: every figure is finite
        problem = {"T": args.steps, "B": args.batch, "H": args.hidden, "n_in": args.inputs,
                   "cell": args.cell, "dtype": args.dtype}
        print(json.dumps({"problem": problem, "budget_bytes": args.budget,
                          "options": [asdict(o) for o in options]}, indent=2, allow_nan=False))
        return 0
    full_bytes = cell.recorded_bytes(args.steps, args.batch, dtype)
    print(f"{args.cell} T={args.steps} B={args.batch} H={args.hidden} {args.dtype}: "
          f"budget {format_bytes(args.budget)}; full() would hold {format_bytes(full_bytes)}")
    best = next((o for o in options if o.fits and o.exact), None)
    if best is None:
        print(f"No exact strategy fits: the minimum is one step's residuals, "
              f"{format_bytes(cell.residual_bytes(args.batch, dtype))}.")
    else:
        print(f"Best exact strategy: {best.strategy}, {best.recompute_factor:.2f}× the forward "
              f"steps of full(), peak {format_bytes(best.peak_bytes)}.")
    table = [("strategy", "exact", "fits", "peak", "forward steps", "note")]
    for o in options:
        table.append((o.strategy, "yes" if o.exact else "no", "yes" if o.fits else "no",
                      format_bytes(o.peak_bytes) if o.peak_bytes else "-",
                      f"{o.recompute_factor:.2f}×T" if o.forward_steps else "-", o.note))
    print(_format(table))
    return 0


def _study(args: argparse.Namespace) -> int:
    package = studies()
    names = package.STUDIES if args.name == "all" else [args.name]
    try:
        out = package.output_folder(args.out, small=args.small)
    except package.NoReportsFolder as e:
        print(f"bptt-memory study: error: {e}", file=sys.stderr)
        return 1
    if args.small and args.out is None:
        print(f"smoke run (toy sizes): writing to {out}, not to the committed reports")
    for name in names:
        module = importlib.import_module(f"{package.__name__}.{name}")
        path = module.run(out, small=args.small, quiet=args.quiet or not sys.stderr.isatty())
        print(f"{name}: wrote {path}")
    return 0


def _format(rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    return {"compare": _compare, "plan": _plan, "study": _study}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
