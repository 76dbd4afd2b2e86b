import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import bptt_memory as bm
from bptt_memory import cli
from bptt_memory.cli import main


def test_compare_json_parses_and_covers_every_strategy(capsys):
    assert main(["compare", "--cell", "gru", "--steps", "20", "--batch", "2", "--hidden", "4",
                 "--inputs", "3", "--repeats", "1", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    rows = {r["strategy"].split("(")[0]: r for r in out["rows"]}
    assert set(rows) == {"full", "truncated", "uniform", "binomial", "optimal", "online"}
    for name in ("full", "uniform", "binomial", "optimal", "online"):  # exact strategies
        assert rows[name]["grad_rel_error"] < 1e-12
        assert rows[name]["peak_bytes"] <= rows["full"]["peak_bytes"]
        assert rows[name]["peak_bytes"] <= rows[name]["traced_peak_bytes"]
    assert rows["full"]["time_ratio"] == 1.0
    for r in rows.values():  # NOTE [cpu time]
        assert r["cpu_seconds"] >= 0 and r["page_faults"] >= 0
    assert rows["truncated"]["grad_rel_error"] > 0  # k = √20 < T: biased


def test_compare_table_lists_requested_strategies(capsys):
    assert main(["compare", "--cell", "vanilla", "--steps", "9", "--batch", "1", "--hidden", "3",
                 "--inputs", "2", "--repeats", "1", "--strategies", "binomial", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "binomial(slots=3)" in out and "optimal" not in out
    assert out.splitlines()[1].split()[-7:-4] == ["time", "range", "cpu"]


@pytest.mark.parametrize("fused", [True, False])
def test_compare_says_when_steps_ran_on_the_compiled_kernels(capsys, monkeypatch, fused):
    from bptt_memory.cells import _gated
    monkeypatch.setattr(_gated, "FUSED", fused)  # as if numba were (not) installed
    args = ["compare", "--cell", "lstm", "--steps", "9", "--batch", "2", "--hidden", "3",
            "--inputs", "2", "--repeats", "1", "--strategies", "full", "--quiet"]
    if fused:
        pytest.importorskip("numba")
    assert main(args + ["--dtype", "float32"]) == 0
    assert ("compiled float32 LSTM kernels" in capsys.readouterr().out) == fused
    assert main(args + ["--dtype", "float32", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["fused_kernels"] == fused
    assert main(args) == 0  # float64: numpy's kernels
    assert "compiled" not in capsys.readouterr().out


def test_plan_json_best_exact_fits(capsys):
    assert main(["plan", "--steps", "1e5", "--budget", "64MiB", "--cell", "lstm", "--batch", "32",
                 "--hidden", "256", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["budget_bytes"] == 64 * 2**20
    best = out["options"][0]
    assert best["exact"] and best["fits"] and best["peak_bytes"] <= 64 * 2**20
    assert best["strategy"].startswith("optimal")  # fewer forward steps than binomial's
    full = next(o for o in out["options"] if o["strategy"] == "full()")
    assert not full["fits"]


def test_plan_human_output_names_the_best(capsys):
    assert main(["plan", "--steps", "200", "--budget", "2MiB", "--cell", "lstm", "--batch", "8",
                 "--hidden", "32"]) == 0
    assert "Best exact strategy:" in capsys.readouterr().out


@pytest.mark.parametrize("argv", [
    ["plan", "--steps", "100", "--budget", "lots"],
    ["plan", "--steps", "0", "--budget", "1MiB"],
    ["compare", "--steps", "-3"],
    ["compare", "--strategies", "nope"],
])
def test_bad_arguments_exit_with_usage(argv, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    assert "error" in capsys.readouterr().err


def test_study_command_writes_report(tmp_path, capsys):
    assert main(["study", "what_is_stored", "--small", "--quiet", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "what_is_stored" / "report.md").exists()


@pytest.mark.parametrize("faults_per_run,named", [(3, False), (5000, True)])
def test_compare_names_strategies_that_fault_in_fresh_memory(capsys, monkeypatch, faults_per_run,
                                                             named):
    import itertools

    import bptt_memory.timing as timing

    calls = itertools.count()  # each run is measured by two readings
    monkeypatch.setattr(timing, "resource", object())
    monkeypatch.setattr(timing, "_usage", lambda: (0.0, (next(calls) + 1) // 2 * faults_per_run))
    monkeypatch.setattr(timing, "_system", lambda: 0.0)
    assert main(["compare", "--cell", "vanilla", "--steps", "9", "--batch", "1", "--hidden", "3",
                 "--inputs", "2", "--repeats", "1", "--strategies", "binomial", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert ("page faults per run" in out) == named
    if named:
        assert f"binomial(slots=3) {faults_per_run:,}" in out


# -- the user's first minutes ---------------------------------------------------------------

ROOT = Path(__file__).resolve().parents[1]


def _python(*args, cwd=None, preexec_fn=None, env=None):
    env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=cwd,
                          env=env, preexec_fn=preexec_fn, timeout=300)


def test_version_has_one_source(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out.strip() == f"bptt-memory {bm.__version__}"
    text = (ROOT / "pyproject.toml").read_text()
    assert 'dynamic = ["version"]' in text and 'attr = "bptt_memory.__version__"' in text
    assert "\nversion =" not in text.split("[tool.")[0]  # no second copy in [project]


def test_python_dash_m_bptt_memory_is_the_command(tmp_path):
    r = _python("-m", "bptt_memory", "--version", cwd=tmp_path)
    assert r.returncode == 0 and r.stdout.strip() == f"bptt-memory {bm.__version__}"


def test_importing_the_library_does_not_import_matplotlib():
    r = _python("-c", "import sys, bptt_memory, bptt_memory.cli; "
                      "print('matplotlib' in sys.modules)")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "False"


@pytest.mark.parametrize("command", ["compare", "study"])
def test_every_help_states_every_default(command):
    sub = next(a for a in cli._parser()._actions if a.dest == "command").choices[command]
    for action in sub._actions:
        if not action.option_strings or action.dest == "help":
            continue
        assert action.help and "default" in action.help, (command, action.option_strings)
        if action.default not in (None, False) and not isinstance(action.default, list):
            assert str(action.default) in action.help, (command, action.option_strings)


def test_compare_pins_blas_threads_and_says_so(capsys, monkeypatch):
    from threadpoolctl import threadpool_info, threadpool_limits

    def blas():
        return {i["num_threads"] for i in threadpool_info() if i.get("user_api") == "blas"}

    if not blas():
        pytest.skip("numpy has no BLAS threadpool here")
    seen = []
    real = bm.Full.run

    def spy(self, *args, **kwargs):
        seen.append(blas())
        return real(self, *args, **kwargs)

    monkeypatch.setattr(bm.Full, "run", spy)
    argv = ["compare", "--cell", "vanilla", "--steps", "9", "--batch", "1", "--hidden", "3",
            "--inputs", "2", "--repeats", "2", "--strategies", "full", "--quiet"]
    with threadpool_limits(limits=2, user_api="blas"):
        assert main(argv) == 0
        out = capsys.readouterr().out
        assert main(argv + ["--threads", "2", "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["blas_threads"] == 2
    assert "BLAS pinned to 1 thread (threadpoolctl)" in out.splitlines()[0]
    timed = 1 + 2  # a warm-up and two rounds; the traced run comes after
    assert seen[:timed] == [{1}] * timed and seen[4:4 + timed] == [{2}] * timed


def test_compare_names_the_segment_uniform_used(capsys):
    assert main(["compare", "--cell", "vanilla", "--steps", "9", "--batch", "1", "--hidden", "3",
                 "--inputs", "2", "--repeats", "1", "--strategies", "uniform", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "uniform(every=3)" in out and "every=None" not in out


def test_compare_refuses_what_cannot_fit_before_running(capsys, monkeypatch):
    import bptt_memory.compare as cmp

    ran = []
    monkeypatch.setattr(cmp, "memory_available", lambda: (50 * 2**20, "available memory"))
    monkeypatch.setattr(bm.Full, "run", lambda *a, **k: ran.append(a))
    assert main(["compare", "--steps", "30000", "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "T=30000 needs about" in err and "available memory leaves 50.0 MiB" in err
    steps = int(err.split("--steps ")[1].split()[0])
    assert 0 < steps < 30000 and not ran
    cell = bm.lstm(32, 128)  # the suggested T does fit
    assert cmp.MEMORY_MARGIN * cmp.memory_needed(cell, steps, 32, 32, 10) <= 50 * 2**20


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_AS as on Linux")
def test_compare_under_an_address_space_limit_says_so_without_a_traceback():
    import resource

    limit = 3 * 10**9

    def cap():
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    r = _python("-m", "bptt_memory", "compare", "--steps", "30000", "--quiet", preexec_fn=cap,
                env={"OPENBLAS_NUM_THREADS": "1"})
    assert r.returncode == 1, r.stderr
    assert "Traceback" not in r.stderr and "MemoryError" not in r.stderr
    assert "address-space limit" in r.stderr and "T=30000 needs about" in r.stderr


def test_progress_bars_only_on_a_terminal(monkeypatch):
    class Stream:
        def __init__(self, tty):
            self.tty = tty

        def isatty(self):
            return self.tty

        def write(self, text):
            pass

        def flush(self):
            pass

    monkeypatch.setattr(sys, "stderr", Stream(False))
    assert cli._progress(quiet=False) is None
    monkeypatch.setattr(sys, "stderr", Stream(True))
    assert cli._progress(quiet=True) is None
    bar = cli._progress(quiet=False)(total=3)
    assert not bar.disable
    bar.close()


def test_small_study_writes_to_a_temporary_folder_not_the_reports(tmp_path, capsys,
                                                                   monkeypatch):
    committed = ROOT / "reports" / "what_is_stored" / "report.md"
    before = committed.read_bytes()
    monkeypatch.chdir(tmp_path)
    assert main(["study", "what_is_stored", "--small", "--quiet"]) == 0
    out = capsys.readouterr().out
    folder = Path(out.split("writing to ")[1].split(",")[0])
    assert (folder / "what_is_stored" / "report.md").is_file()
    assert ROOT not in folder.parents and tmp_path not in folder.parents
    assert not (tmp_path / "reports").exists()
    assert committed.read_bytes() == before


def test_full_study_run_without_a_repository_needs_out(tmp_path, capsys, monkeypatch):
    package = cli.studies()
    monkeypatch.setattr(package, "REPORTS", tmp_path / "site-packages" / "reports")
    monkeypatch.chdir(tmp_path)
    assert main(["study", "what_is_stored", "--quiet"]) == 1
    assert "--out DIR" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []  # no ./reports/ made where it ran


def test_pyproject_installs_every_subpackage():
    """`pip install .` installs only the packages pyproject.toml lists: every folder of the
    library with an __init__.py, and the studies inside the library's namespace."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+

    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    folders = {".".join(p.parent.relative_to(ROOT).parts)
               for p in (ROOT / "bptt_memory").rglob("__init__.py")}
    assert set(config["packages"]) == folders | {"bptt_memory.studies"}
    assert config["package-dir"] == {"bptt_memory.studies": "studies"}
    assert "studies" not in config["packages"]
