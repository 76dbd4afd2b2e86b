import json

from studies import what_is_stored


def test_small_run_writes_a_consistent_report(tmp_path):
    path = what_is_stored.run(tmp_path, small=True, quiet=True)
    d = tmp_path / "what_is_stored"
    assert path == d / "report.md" and path.read_text().startswith("# What must be kept")
    assert (d / "bytes_per_step.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    data = json.loads((d / "data.json").read_text())
    ratios = {r["cell"]: r["residuals_per_state"] for r in data["per_cell"]}
    assert ratios == {"vanilla (tanh)": 2.0, "lstm": 3.5, "gru": 5.0}
    for cell in ratios:  # full()'s exact peak is linear in T; tracemalloc sees at least that
        pts = [g for g in data["growth"] if g["cell"] == cell]
        per_step = {g["peak_bytes"] / g["T"] for g in pts}
        assert len(per_step) == 1
        assert all(g["traced_peak_bytes"] >= g["peak_bytes"] for g in pts)
        assert len({g["weight_bytes"] for g in pts}) == 1
    assert not list(d.glob("*.tmp")) and not list(d.glob(".*"))
