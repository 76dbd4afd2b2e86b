import csv
import json

from studies import _common, long_sequences


def test_small_run_writes_a_report_without_verdicts(tmp_path):
    path = long_sequences.run(tmp_path, small=True, quiet=True)
    d = tmp_path / "long_sequences"
    text = path.read_text()
    assert path == d / "report.md" and text.startswith("# Long sequences")
    assert "met**" not in text and "smoke run" in text  # toy timings judge nothing
    heads = [line for line in text.splitlines() if line.startswith("## ")]
    assert heads == ["## (a) optimal at long T", "## (b) online(slots) against offline "
                     "binomial(slots)", "## (c) `bptt-memory plan` (compare.plan)",
                     f"## (d) optimal's run at T = {long_sequences.SMALL['RUN_STEPS']} against "
                     "full()", "## Files", "## Provenance"]
    assert _common.unlisted_files(d) == []  # every file the run wrote is in the report
    assert (d / "online_vs_binomial.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = json.loads((d / "summary.json").read_text())
    for row in summary["optimal_long"]:
        assert row["forward_steps"] == row["priced_forward_steps"]
        assert row["peak_bytes"] <= row["budget_bytes"]
        assert row["lower_bound"] <= row["forward_steps"] <= row["binomial_forward_steps"]
    for row in summary["online"]:
        assert row["equal_up_to"] >= row["(s+1)(s+2)/2"]
    with open(d / "segments_vs_exact.csv", newline="") as f:
        assert all(float(r["ratio"]) >= 1.0 for r in csv.DictReader(f))
    assert all(p["optimal_planned"] for p in summary["plan"])
    assert summary["run_T1000"]["grad_rel_error"] < 1e-12
    assert not list(d.glob("*.tmp")) and not list(d.glob(".*"))
