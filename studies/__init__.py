"""Studies: scripts that measure the strategies and write `reports/<name>/report.md`.

Each module opens with its plain constants, exposes
``run(out=None, *, small=False, quiet=False) -> Path`` (the report it wrote) and runs as
``bptt-memory study NAME [--small] [--out DIR] [--quiet]`` (or, from the repository root,
``python -m studies.NAME ...``).

In the repository they live in studies/; installed, inside the library's namespace as
`bptt_memory.studies` (pyproject.toml's package-dir), so that `pip install .` adds no
top-level package named `studies`. This module imports nothing heavy: the command line
reads `STUDIES` from it before any study (and matplotlib) is loaded.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

__all__ = ["STUDIES", "REPORTS", "NoReportsFolder", "output_folder"]

#: Every study, in the order `bptt-memory study all` runs them.
STUDIES = (
    "choosing_a_strategy",
    "what_is_stored",
    "memory_scaling",
    "recompute_tradeoff",
    "truncation_bias",
    "long_dependency_training",
    "checkpoint_benchmark",
    "speed_vs_torch",
    "user_cell_speed",
    "long_sequences",
    "torch_checkpointing",
)

#: The committed reports: the repository's reports/ folder, beside studies/. An installed
#: copy (site-packages/bptt_memory/studies) has none beside it.
REPORTS = Path(__file__).resolve().parent.parent / "reports"


class NoReportsFolder(RuntimeError):
    """A full run was asked for with no --out, and there is no repository to write into."""


def output_folder(out: Path | str | None, *, small: bool) -> Path:
    """Where a study writes: `out` when given; else a new temporary folder for a smoke run
    (--small), so toy data never lands on the committed reports; else the repository's
    reports/ folder, and never a ./reports/ made wherever the command happens to run."""
    if out is not None:
        return Path(out)
    if small:
        return Path(tempfile.mkdtemp(prefix="bptt-memory-small-"))
    if (REPORTS / "README.md").is_file():
        return REPORTS
    raise NoReportsFolder(
        f"no repository reports/ folder beside {Path(__file__).resolve().parent} (an "
        f"installed copy has none): name where to write with --out DIR, or run from a "
        f"source checkout")
