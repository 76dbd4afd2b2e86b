"""The README's tour runs as written."""

import re
import runpy
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def _blocks(torch: bool) -> list[str]:
    """The README's python blocks, without (or only) those that need torch."""
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    return [b for b in blocks if ("bptt_memory.torch" in b) == torch]


def test_readme_tour_runs(tmp_path, capsys):
    blocks = _blocks(torch=False)
    assert blocks, "README has no python block"
    script = tmp_path / "tour.py"
    script.write_text("\n".join(blocks))
    ns = runpy.run_path(str(script))
    cell = ns["cell"]  # an LSTM: 7·B·H for the first step, 6·B·H for each linked one
    assert ns["res"].stats.peak_bytes == (7 + 999 * 6) * 16 * 64 * 8
    assert ns["res"].stats.peak_bytes == cell.recorded_bytes(1000, 16, "float64")
    assert ns["cheap"].stats.peak_bytes <= ns["budget"]
    assert abs(ns["cheap"].loss - ns["res"].loss) <= 1e-12 * abs(ns["res"].loss)
    assert ns["update"].t == 200
    assert "restore" in capsys.readouterr().out
    online, model, data = ns["online"], ns["model"], ns["data"]
    assert online.stats.peak_bytes <= (8 * model.cell.state_bytes(16, "float64")
                                       + model.cell.residual_bytes(16, "float64"))
    xs, ys = (ns["np"].stack([d[i] for d in data]) for i in (0, 1))
    exact = ns["bm"].full().run(model, ns["params"], xs, ys)
    assert abs(online.loss - exact.loss) <= 1e-12 * abs(exact.loss)
    for k, g in exact.grads.items():
        assert ns["np"].abs(online.grads[k] - g).max() <= 1e-12 * ns["np"].abs(g).max()


def test_readme_pytorch_example_runs(tmp_path):
    pytest.importorskip("torch")
    tour = "\n".join(_blocks(torch=False))
    script = tmp_path / "torch_tour.py"
    script.write_text(tour + "\n" + "\n".join(_blocks(torch=True)))
    ns = runpy.run_path(str(script))
    assert ns["plan"].peak_bytes <= 4 << 20
    assert ns["cell"].weight_hh.grad is not None and ns["readout"].weight.grad is not None


def test_readme_quick_start_has_exactly_two_setup_commands():
    text = README.read_text()
    quick = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    commands = re.findall(r"```bash\n(.*?)```", quick, flags=re.S)
    assert len(commands) == 2
    assert "bptt-memory compare" in commands[0] and "pytest" in commands[1]
