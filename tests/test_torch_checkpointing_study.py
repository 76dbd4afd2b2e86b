"""studies.torch_checkpointing at toy size, end to end: every file is written, every
contender ran, the memory numbers are the study's own, and toy timings judge no target."""

import csv
import json

import pytest

pytest.importorskip("torch")
from studies import _common  # noqa: E402
from studies import torch_checkpointing as study  # noqa: E402


def test_small_run_writes_every_file_and_judges_nothing(tmp_path):
    report = study.run(tmp_path, small=True, quiet=True, grid=[(8, 12)], rounds=1)
    d = report.parent
    assert report == tmp_path / "torch_checkpointing" / "report.md"
    with open(d / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert {(r["cell"], r["contender"]) for r in rows} == {
        (c, k) for c in study.CELLS for k in study.CONTENDERS}
    by = {(r["cell"], r["contender"]): r for r in rows}
    for cell in study.CELLS:
        # optimal at torch checkpoint's bytes holds no more than it
        ckpt = int(by[cell, "torch_checkpoint"]["bytes"])
        assert int(by[cell, "scan_optimal_ckpt"]["bytes"]) <= ckpt
        assert int(by[cell, "scan_full"]["forward_steps"]) == 12
    data = json.loads((d / "results.json").read_text())
    assert data["targets"] == [] and len(data["rows"]) == len(rows)
    assert (d / "time_vs_bytes.png").read_bytes()[:4] == b"\x89PNG"
    text = report.read_text()
    assert "not judged" in text.lower() and " met" not in text.replace("not judged", "")
    assert _common.unlisted_files(d) == []  # every file the run wrote is in the report
    heads = [line for line in text.splitlines() if line.startswith("## ")]
    assert heads == ["## Targets", "## Every contender", "## How it was made", "## Files",
                     "## Provenance"]


def test_small_without_out_writes_to_a_temporary_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(study, "SMALL_GRID", [(4, 3)])
    report = study.run(small=True, quiet=True, cells=("gru",), rounds=1)
    assert tmp_path not in report.parents and not (tmp_path / "reports").exists()
