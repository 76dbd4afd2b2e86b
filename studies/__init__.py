"""Studies: scripts that measure the strategies and write `reports/<name>/report.md`.

Each module ``studies.NAME`` opens with its plain constants, exposes
``run(out, *, small=False, quiet=False) -> Path`` (the report it wrote) and runs from
the command line as ``python -m studies.NAME [--small] [--out reports/] [--quiet]``,
or through ``bptt-memory study NAME``.
"""

#: Every study, in the order `bptt-memory study all` runs them.
STUDIES = (
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
