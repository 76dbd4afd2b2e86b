"""user_cell_speed: the smoke run writes a report with no verdict, and both cells agree."""

import csv

from studies import _common
from studies import user_cell_speed as study


def test_small_run_writes_a_report_without_a_verdict_and_equal_gradients(tmp_path):
    report = study.run(tmp_path, small=True, quiet=True)
    text = report.read_text()
    assert "no verdict" in text and "within" not in text and "over the" not in text
    heads = [line for line in text.splitlines() if line.startswith("#")]
    assert heads == ["# A cell of one's own: what the protocol alone costs", "## Files",
                     "## Provenance"]
    assert _common.unlisted_files(report.parent) == []
    with open(report.parent / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["dtype"] for r in rows] == list(study.DTYPES)
    f64 = next(r for r in rows if r["dtype"] == "float64")
    assert float(f64["max_rel_grad_diff"]) <= 1e-12
    # the protocol-only cell keeps h_prev beside h' (no links): twice the built-in's bytes,
    # less one h
    T, B, H = (study.SMALL[k] for k in ("STEPS", "BATCH", "HIDDEN"))
    assert int(f64["peak_bytes_protocol_only"]) == T * 2 * B * H * 8
    assert int(f64["peak_bytes_built_in"]) == (T + 1) * B * H * 8
