import csv
import json

import numpy as np
import pytest

from studies import _common, truncation_bias


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    """One smoke run shared by the tests that read its files."""
    out = tmp_path_factory.mktemp("tb")
    return out, truncation_bias.run(out, small=True, quiet=True)


def test_small_run_writes_a_consistent_report(small_run):
    tmp_path, path = small_run
    d = tmp_path / "truncation_bias"
    assert path == d / "report.md" and path.read_text().startswith("# Truncation bias")
    for png in ("error_vs_k2.png", "grid_k1_k2.png", "frontier.png"):
        data = (d / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000
    assert not list(d.glob("*.tmp")) and not list(d.glob(".*"))
    # the one report layout (NOTE [one report layout]), every file the run wrote listed
    heads = [line for line in path.read_text().splitlines() if line.startswith("## ")]
    assert heads == ["## Findings", "## Errors by cell and spectral radius",
                     "## Does it hold elsewhere? Longer sequences and trained models",
                     "## Files", "## Provenance"]
    assert _common.unlisted_files(d) == []

    saved = json.loads((d / "summary.json").read_text())
    s = saved["settings"]
    T, summary = s["T"], saved["summary"]
    with open(d / "errors.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == sum(r["seeds"] for r in summary)
    for r in rows:
        assert -1.0 - 1e-12 <= float(r["cosine"]) <= 1.0 + 1e-12
        assert float(r["rel_error"]) >= 0.0
        # NOTE [recurrent error]: the readout's gradient is exact under truncation, so the
        # same error over a smaller exact norm: never below the error over every parameter
        if int(r["k2"]) < T:  # (at k2 = T both are rounding)
            assert float(r["rel_error"]) >= float(r["rel_error_all_params"]) * (1 - 1e-12)
        if int(r["k2"]) >= T:  # nothing is cut: the exact gradient, to rounding
            assert float(r["rel_error"]) <= 1e-10 and float(r["cosine"]) > 1 - 1e-12

    def err(cell, radius, k1, k2):
        (m,) = [r["rel_error"] for r in summary
                if (r["cell"], r["radius"], r["k1"], r["k2"]) == (cell, radius, k1, k2)]
        return m

    short = [k for k in s["K2S"] if k < T]
    for cell in s["CELLS"]:
        for radius in s["RADII"]:
            e1 = [err(cell, radius, 1, k) for k in short]
            ek = [err(cell, radius, k, k) for k in short]
            # Backpropagating further shrinks the error toward 0 at k2 = T.
            assert e1[0] > e1[-1] > err(cell, radius, 1, T) and e1[0] > 1e-3
            assert ek[0] > ek[-1] > err(cell, radius, T, T)
            assert np.all(np.diff(e1) < 0), (cell, radius, e1)
            # k1 = 1 backpropagates every loss k2 steps, k1 = k2 only k2/2 on average.
            assert all(a <= b * (1 + 1e-9) for a, b in zip(e1[1:], ek[1:]))
    # The whole (k1, k2) grid is run at GRID_RADIUS.
    grid = {(r["k1"], r["k2"]) for r in summary if r["radius"] == s["GRID_RADIUS"]}
    assert grid == {(a, b) for a in s["K2S"] for b in s["K2S"] if a <= b}


def test_summaries_are_geometric_means_within_the_seeds_band():
    rows = [dict(cell="c", radius=1.0, k1=1, k2=2, rel_error=e, rel_error_all_params=e / 2,
                 cosine=c, backward_steps=4, peak_bytes=8)
            for e, c in ((1e-2, 0.9), (1e-4, 0.99), (1e-6, 1.0))]
    (s,) = truncation_bias.summarise(rows)
    assert np.isclose(s["rel_error"], 1e-4) and s["rel_error_median"] == 1e-4
    assert (s["rel_error_min"], s["rel_error_max"], s["cosine"]) == (1e-6, 1e-2, 0.99)
    assert truncation_bias.geometric_mean([0.0, 1.0]) == 0.0
    # grouped on other fields (the other conditions' rows), without the optional columns
    other = [dict(condition=c, cell="gru", k1=1, k2=2, rel_error=e, cosine=0.5)
             for c, e in (("T=1000", 1e-2), ("T=1000", 1e-4), ("trained", 0.3))]
    by = {r["condition"]: r for r in truncation_bias.summarise_conditions(other)}
    assert by["T=1000"]["seeds"] == 2 and np.isclose(by["T=1000"]["rel_error"], 1e-3)
    assert by["trained"]["rel_error"] == 0.3 and "peak_bytes" not in by["trained"]


def test_first_k2_is_the_smallest_k2_below_the_target_for_each_k1_rule():
    points = {(1, 2): dict(rel_error=0.5), (2, 2): dict(rel_error=0.6),
              (1, 8): dict(rel_error=0.005), (8, 8): dict(rel_error=0.05),
              (1, 16): dict(rel_error=0.0), (16, 16): dict(rel_error=0.0)}
    assert truncation_bias.first_k2(points, same=False, target=0.01) == 8
    assert truncation_bias.first_k2(points, same=True, target=0.01) == 16
    assert truncation_bias.first_k2(points, same=True, target=0.0) is None


def test_frontier_keeps_exactly_the_undominated_pairs():
    s = truncation_bias._settings(small=True)
    summary = [dict(cell=c, radius=s.GRID_RADIUS, k1=k1, k2=k2, backward_steps=b, rel_error=e)
               for c in s.CELLS
               for k1, k2, b, e in ((1, 2, 20, 0.1), (2, 2, 10, 0.3), (1, 4, 40, 0.01),
                                    (4, 4, 10, 0.2), (2, 4, 20, 0.15))]
    exact = [dict(cell=c, radius=s.GRID_RADIUS, k1=s.T, k2=s.T, backward_steps=s.T,
                  rel_error=0.0) for c in s.CELLS]  # full BPTT: not a truncation
    points = truncation_bias.frontier(s, summary + exact)
    on = {(p["k1"], p["k2"]) for p in points if p["on_frontier"] and p["cell"] == "lstm"}
    assert on == {(4, 4), (1, 2), (1, 4)}  # (2, 2) and (2, 4) cost as much for more error
    assert all(p["k2"] < s.T for p in points)


def test_other_conditions_cover_every_cell_and_seed_and_train_the_models(small_run):
    d = small_run[0] / "truncation_bias"
    s = truncation_bias._settings(small=True)
    assert (d / "conditions.png").read_bytes()[:4] == b"\x89PNG"
    with open(d / "conditions.csv") as f:
        rows = list(csv.DictReader(f))
    with open(d / "trained.csv") as f:
        trained = list(csv.DictReader(f))
    conds = {f"init, T={s.LONG_T}", f"trained, T={s.T}"}
    assert {(r["condition"], r["cell"], int(r["seed"])) for r in rows} == {
        (c, k, seed) for c in conds for k in s.CELLS for seed in s.SEEDS}
    for r in rows:
        assert int(r["k2"]) < int(r["T"]) and int(r["k1"]) in (1, int(r["k2"]))
        assert float(r["rel_error"]) > 0  # a truncation below T cuts something
    # Adam on the adding problem lowers the held-out loss of every cell (median of seeds)
    for kind in s.CELLS:
        before = [float(t["test_mse_before"]) for t in trained if t["cell"] == kind]
        after = [float(t["test_mse_after"]) for t in trained if t["cell"] == kind]
        assert np.median(after) < np.median(before)
    # One loss, at the last step: TBPTT(1, k) and TBPTT(k, k) backpropagate it through the
    # same k steps when k divides T, so their gradients are the same
    by = {(r["condition"], r["cell"], r["seed"], int(r["k1"]), int(r["k2"])): float(r["rel_error"])
          for r in rows}
    for (c, kind, seed, k1, k2), e in by.items():
        if c.startswith("trained") and k1 == 1 < k2 and s.T % k2 == 0:
            assert np.isclose(e, by[c, kind, seed, k2, k2], rtol=1e-9, atol=1e-15)
    text = (d / "report.md").read_text()
    assert "Does it hold elsewhere?" in text and "![other conditions](conditions.png)" in text
