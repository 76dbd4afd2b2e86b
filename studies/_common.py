"""What every study shares: where reports go, atomic report files, one report layout
(`Report`), provenance, progress bars, the strategies' palette, and verdicts that toy runs
never give. Timing is `bptt_memory.timing` (one harness for the studies and `compare`);
the gradient-error metric is `bptt_memory.compare.grad_error`.

Every file a study writes goes through a temporary file in the same folder and
`os.replace`, so an interrupted study leaves either the old file or the new one, never
a truncated one. `report.md` is written last.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import platform
import re
import sys
import tempfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Iterable, Iterator, Mapping, Sequence

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from tqdm import tqdm  # noqa: E402

import bptt_memory  # noqa: E402
from bptt_memory.timing import pinned_threads  # noqa: E402

from . import output_folder  # noqa: E402

__all__ = ["atomic_write", "write_text", "write_json", "write_csv", "save_figure",
           "provenance", "progress", "pinned_blas", "report_dir", "fit_loglog_slope", "md_table",
           "recomputation_ratio", "DEFAULT_OUT", "study_main", "settings", "verdict",
           "STRATEGY_COLORS", "strategy_color", "adam_step", "Report", "figure",
           "unlisted_files"]


@contextlib.contextmanager
def atomic_write(path: Path, mode: str = "w") -> Iterator[Any]:
    """Open a temporary file beside `path`; on success rename it over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode) as f:
            yield f
        os.chmod(tmp, 0o644)  # mkstemp makes it private; a report is for reading
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_text(path: Path, text: str) -> Path:
    with atomic_write(path) as f:
        f.write(text)
    return Path(path)


def write_json(path: Path, obj: Any) -> Path:
    return write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_jsonable) + "\n")


def _jsonable(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def write_csv(path: Path, rows: Sequence[dict]) -> Path:
    """Rows of dicts with the same keys, one CSV line each."""
    buf = io.StringIO()
    if rows:
        w = csv.DictWriter(buf, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return write_text(path, buf.getvalue())


def save_figure(fig: plt.Figure, path: Path) -> Path:
    """Save a figure as PNG atomically and close it."""
    path = Path(path)
    with atomic_write(path, "wb") as f:
        fig.savefig(f, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


#: A study's ``run(out=DEFAULT_OUT, ...)``: None, which `report_dir` resolves with
#: `studies.output_folder` (the repository's reports/, or a temporary folder for --small).
DEFAULT_OUT: Path | None = None


def report_dir(out: Path | str | None, name: str, small: bool = False) -> Path:
    """`out`/`name`, made if needed; with no `out`, `studies.output_folder`'s choice."""
    d = output_folder(out, small=small) / name
    d.mkdir(parents=True, exist_ok=True)
    return d


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def provenance(command: str, pinned: int | None = None) -> str:
    """A markdown block: the command that made the report, when, on what, with what.

    ``pinned``: the BLAS threads the study's measurements ran with (`pinned_blas`), which
    the report states beside the count the process has otherwise; without it, that count.
    """
    import matplotlib as mpl
    from threadpoolctl import threadpool_info

    def threads(n: int) -> str:
        count = f"{n} thread{'s' * (n != 1)}"
        if pinned is None:
            return count
        return (f"{pinned} thread{'s' * (pinned != 1)} for the measurements"
                + ("" if n == pinned else f", {n} otherwise"))

    blas = ", ".join(f"{i['internal_api']} {i.get('version')} ({threads(i['num_threads'])})"
                     for i in threadpool_info() if i.get("user_api") == "blas") or "unknown"
    return "\n".join([
        f"- Command: `{command}`",
        f"- Date: {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- Machine: {_cpu_model()}, {os.cpu_count()} cores, {platform.system()} "
        f"{platform.machine()}",
        f"- Python {platform.python_version()}, numpy {np.__version__}, "
        f"matplotlib {mpl.__version__}, "
        f"bptt_memory {bptt_memory.__version__}; BLAS: {blas}",
    ])


def command_line(name: str, small: bool) -> str:
    return f"bptt-memory study {name}" + (" --small" if small else "")


def progress(iterable: Iterable | None = None, *, quiet: bool = False, **kw: Any) -> tqdm:
    """A tqdm bar on stderr, only when stderr is a terminal and not quiet."""
    return tqdm(iterable, disable=quiet or not sys.stderr.isatty(), file=sys.stderr, leave=False,
                **kw)


@contextlib.contextmanager
def pinned_blas(threads: int = 1) -> Iterator[None]:
    """Pin BLAS threads so timings are comparable across runs and machines
    (`bptt_memory.timing.pinned_threads`, which `interleaved` also uses)."""
    with pinned_threads(threads):
        yield


def settings(constants: Mapping[str, Any], names: Iterable[str], small: bool) -> SimpleNamespace:
    """A study's settings: its module constants `names` (from ``globals()``), with its
    SMALL toy sizes over them for a smoke run, and ``small`` saying which it is."""
    s = SimpleNamespace(**{n: constants[n] for n in names})
    if small:
        vars(s).update(constants["SMALL"])
    s.small = small
    return s


def verdict(met: bool, small: bool) -> str:
    """"met" or "not met"; a smoke run's toy timings judge nothing."""
    if small:
        return "not judged (toy sizes)"
    return "met" if met else "not met"


#: One colour per strategy family, in every study's figures (matplotlib's tab10 order).
STRATEGY_COLORS = {
    "full": "tab:blue",
    "truncated": "tab:red",
    "uniform": "tab:green",
    "binomial": "tab:orange",
    "optimal": "tab:purple",
    "online": "tab:brown",
    "torch": "tab:gray",
}


def strategy_color(name: str) -> str:
    """The palette's colour for a strategy, by family: "binomial(slots=3)" -> binomial's."""
    family = name.split("(", 1)[0].split()[0].split("_")[0]
    return STRATEGY_COLORS.get(family, "black")


def adam_step(params: dict, grads: dict, m: dict, v: dict, i: int, *, lr: float,
              betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
              clip: float | None = None) -> float:
    """Clip grads to global norm `clip` (None: no clipping), then Adam's update i >= 1 of
    `params` in place (Kingma & Ba 2015, Algorithm 1), with moments m and v; returns the
    gradient's norm before clipping. The studies that train share it.

    >>> p, g = {"w": np.array([1.0])}, {"w": np.array([2.0])}
    >>> m, v = {"w": np.zeros(1)}, {"w": np.zeros(1)}
    >>> adam_step(p, g, m, v, 1, lr=0.1), p["w"].round(6)  # a first step moves lr·sign(g)
    (2.0, array([0.9]))
    """
    norm = float(np.sqrt(sum(float((g * g).sum()) for g in grads.values())))
    scale = min(1.0, clip / norm) if clip is not None and norm > 0 else 1.0
    b1, b2 = betas
    for k, p in params.items():
        g = grads[k] * scale
        m[k] = b1 * m[k] + (1 - b1) * g
        v[k] = b2 * v[k] + (1 - b2) * g * g
        p -= lr * (m[k] / (1 - b1 ** i)) / (np.sqrt(v[k] / (1 - b2 ** i)) + eps)
    return norm


def fit_loglog_slope(x: Sequence[float], y: Sequence[float]) -> float:
    """Least-squares slope of log y against log x: 1 for O(T), 0.5 for O(√T), 0 for O(1)."""
    lx, ly = np.log(np.asarray(x, float)), np.log(np.asarray(y, float))
    return float(np.polyfit(lx, ly, 1)[0])


def recomputation_ratio(forward_steps: int, backward_steps: int, n_steps: int,
                        forward_seconds: float, backward_seconds: float) -> float:
    """Time over full()'s that a run of `forward_steps` and `backward_steps` would take if
    it cost only its steps, each at the cost it has inside full(): (F·f + B·b) / (T·(f + b)),
    with f and b full()'s `forward_seconds` and `backward_seconds` (a `bm.Profile`'s) over T.
    What a checkpointing strategy takes beyond it is its executor's overhead (or steps that
    cost more where it runs them than inside full())."""
    if (n_steps < 1 or min(forward_seconds, backward_seconds) < 0
            or forward_seconds + backward_seconds <= 0):
        raise ValueError(f"recomputation_ratio: needs n_steps >= 1 and full()'s phase seconds "
                         f"(>= 0, not both 0); got n_steps={n_steps}, "
                         f"forward_seconds={forward_seconds}, backward_seconds={backward_seconds}")
    f, b = forward_seconds / n_steps, backward_seconds / n_steps
    return (forward_steps * f + backward_steps * b) / (n_steps * (f + b))


def md_table(rows: Sequence[dict], columns: Sequence[str] | None = None) -> str:
    """A markdown table from dicts (floats to 4 significant figures)."""
    if not rows:
        return "(no rows)\n"
    cols = list(columns or rows[0])

    def cell(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.4g}"
        return str(v)

    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(cell(r.get(c, "")) for c in cols) + " |" for r in rows]
    return "\n".join(lines) + "\n"


# NOTE [one report layout] Every study writes its data as tidy rows (csv/json) and its
# report through `Report`: the title, a lead (the question and the setup), Findings
# (sentences computed from those rows), the study's own sections (tables are `md_table`
# over the rows, figures `figure`), Files (what each data file holds) and Provenance, in
# that order. The sentences around the numbers are each study's own template (an
# f-string over its rows: what a finding says differs by study); the layout, the file
# list and its check, and the provenance are written here, once.


def figure(name: str, alt: str) -> str:
    """A markdown image of a figure in the report's folder."""
    return f"![{alt}]({name})"


@dataclass
class Report:
    """A report in the one layout (NOTE [one report layout]); `write` renders and writes it."""

    title: str
    lead: str = ""
    findings: list[str] = field(default_factory=list)
    sections: list[tuple[str, str]] = field(default_factory=list)
    files: dict[str, str] = field(default_factory=dict)
    run_lines: list[str] = field(default_factory=list)

    def finding(self, text: str) -> None:
        """One finding: a bullet of one or more sentences."""
        self.findings.append(text.strip().removeprefix("- "))

    def section(self, heading: str, *parts: str) -> None:
        """A section of its own: paragraphs, tables and figures, blank-line separated."""
        self.sections.append((heading, "\n\n".join(p.strip("\n") for p in parts if p.strip())))

    def file(self, name: str, what: str) -> None:
        """A data file the study wrote beside the report, and what it holds."""
        self.files[name] = what

    def run_line(self, text: str) -> None:
        """A line about this run (its wall time, say) for Provenance, after the standard ones."""
        self.run_lines.append(text.strip().removeprefix("- "))

    def render(self, command: str, pinned: int | None = None) -> str:
        parts = [f"# {self.title}"]
        if self.lead.strip():
            parts.append(self.lead.strip("\n"))
        if self.findings:
            parts.append("## Findings\n\n" + "\n".join(f"- {f}" for f in self.findings))
        parts += [f"## {h}\n\n{body}" if body else f"## {h}" for h, body in self.sections]
        if self.files:
            parts.append("## Files\n\n" + "\n".join(f"- `{n}`: {w}" for n, w in self.files.items()))
        parts.append("## Provenance\n\n" + "\n".join(
            [provenance(command, pinned), *(f"- {line}" for line in self.run_lines)]))
        return "\n\n".join(parts) + "\n"

    def write(self, d: Path, command: str, pinned: int | None = None) -> Path:
        """Write d/report.md, after checking that every file and figure it names is in d
        (a report never points at data its run did not write)."""
        text = self.render(command, pinned)
        missing = [n for n in [*self.files, *_figures(text)] if not (d / n).is_file()]
        if missing:
            raise ValueError(f"report {self.title!r} names files its run did not write in "
                             f"{d}: {', '.join(missing)}; write them first or drop them")
        return write_text(d / "report.md", text)


def _figures(text: str) -> list[str]:
    return re.findall(r"!\[[^\]]*\]\(([^)/\s]+)\)", text)


def unlisted_files(d: Path) -> list[str]:
    """Files in d that d/report.md neither lists under Files nor shows as a figure."""
    text = (d / "report.md").read_text()
    files = text.split("\n## Files\n", 1)[1].split("\n## ", 1)[0] if "\n## Files\n" in text else ""
    named = set(re.findall(r"`([^`/\s]+)`", files)) | set(_figures(text)) | {"report.md"}
    return sorted(p.name for p in d.iterdir() if p.is_file() and p.name not in named)


def study_args(name: str, argv: Sequence[str] | None, doc: str | None) -> Any:
    """The command line every study takes: --small, --out, --quiet."""
    import argparse

    from bptt_memory.cli import add_study_options

    p = argparse.ArgumentParser(prog=f"python -m studies.{name}", description=doc)
    add_study_options(p)
    return p.parse_args(argv)


def study_main(name: str, run: Any, doc: str | None, argv: Sequence[str] | None = None) -> None:
    """What every study's ``main`` does: parse --small/--out/--quiet, run, say where it wrote."""
    args = study_args(name, argv, doc)
    # resolved here, so that a study whose run() does not pass `small` on to report_dir
    # still writes a smoke run into a temporary folder
    out = output_folder(args.out, small=args.small)
    if args.small and args.out is None:
        print(f"smoke run (toy sizes): writing to {out}, not to the committed reports")
    path = run(out, small=args.small, quiet=args.quiet)
    print(f"{name}: wrote {path}")
