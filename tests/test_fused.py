"""Fused float32 LSTM kernels (numba): the rational tanh, and agreement with numpy's kernels.

Skipped without numba. With it, every other float32 LSTM test in the suite runs these
kernels too (NOTE [fused float32 LSTM]); here they are checked against the numpy kernels
they replace, which the same tests reach with ``lstm(..., fused=False)``.
"""

import os
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest

pytest.importorskip("numba")

import bptt_memory as bm  # noqa: E402
from bptt_memory import _fused  # noqa: E402
from bptt_memory.cells import _gated  # noqa: E402

N_IN, B, H = 3, 4, 37  # H not a multiple of a vector's width: the loops' tails run too


def _ulps(approx: np.ndarray, x: np.ndarray) -> np.ndarray:
    """|approx − tanh(x)| in float32 spacings at tanh(x), tanh(x) exact in float64."""
    exact = np.tanh(x.astype(np.float64))
    return np.abs(approx.astype(np.float64) - exact) / np.spacing(np.abs(exact).astype(np.float32))


def _tanh(x: np.ndarray) -> np.ndarray:
    out = np.empty_like(x)
    _fused.tanh(x, out)
    return out


def test_rational_tanh_is_within_7_ulp_odd_and_bounded():
    # (not monotone: past |x| = 2.6 it wobbles within its error, by up to 7 ulp)
    x = np.concatenate([
        np.linspace(0, 12, 1_000_001, dtype=np.float32),
        np.geomspace(1e-30, 1e-2, 10_001, dtype=np.float32),
        # every float32 from 8.5 to 9.5, where the clamp and the overshoot past 1 sit
        np.arange(np.float32(8.5).view(np.uint32), np.float32(9.5).view(np.uint32),
                  dtype=np.uint32).view(np.float32),
    ])
    t = _tanh(x)
    assert _ulps(t[x > 0], x[x > 0]).max() <= 7
    assert np.array_equal(_tanh(-x), -t)  # odd, bit for bit
    assert np.abs(t).max() == 1.0 and _tanh(np.float32([0, 9, 50, np.inf]))[0] == 0
    assert np.all(_tanh(np.float32([9, 50, np.inf])) == 1)


def test_fused_lstm_forward_matches_the_equations():
    rng = np.random.default_rng(0)
    pre, x = (rng.standard_normal((4, B, H)).astype(np.float32) for _ in range(2))
    c = rng.standard_normal((B, H)).astype(np.float32)
    gates, c_new, h_new = pre.copy(), np.empty_like(c), np.empty_like(c)
    _fused.lstm_forward(gates, *x, c, c_new, h_new)
    z = (pre + x).astype(np.float64)
    i, f, o = (1 / (1 + np.exp(-z[k])) for k in (0, 1, 3))
    g = np.tanh(z[2])
    c_exact = f * c + i * g
    for got, exact in zip((*gates, c_new, h_new), (i, f, g, o, c_exact, o * np.tanh(c_exact))):
        np.testing.assert_allclose(got, exact, rtol=2e-6, atol=2e-7)


def _spy(monkeypatch) -> dict:
    """Count calls to each fused kernel, through `_gated.fused_kernels`."""
    calls: dict = {}

    def counted(name):
        def call(*args):
            calls[name] = calls.get(name, 0) + 1
            return getattr(_fused, name)(*args)
        return call

    names = ("lstm_forward", "lstm_output", "lstm_vjp", "sum_gates")
    spy = SimpleNamespace(**{n: counted(n) for n in names})
    monkeypatch.setattr(_gated, "fused_kernels", lambda: spy)
    monkeypatch.setattr(_gated, "FUSED", True)  # whatever BPTT_MEMORY_FUSED says
    return calls


def _cell_steps(cell, params, state, x, cot):
    """Cell.step, Cell.record, Cell.residual_output and Cell.vjp on one step: their
    results in order."""
    stepped = cell.step(params, x, state)
    recorded, res = cell.record(params, x, state)
    dstate, dparams = cell.vjp(params, x, res, cot)
    return [*stepped, *recorded, *res[2:], cell.residual_output(res), *dstate, *dparams.values()]


def test_cell_methods_use_the_fused_kernels_and_agree_with_numpy(rng, monkeypatch):
    cell = bm.lstm(N_IN, H)
    params = {k: (0.6 * rng.standard_normal(s)).astype(np.float32)
              for k, s in cell.param_shapes().items()}
    state = tuple((0.8 * rng.standard_normal((B, H))).astype(np.float32) for _ in range(2))
    x = rng.standard_normal((B, N_IN)).astype(np.float32)
    cot = tuple(rng.standard_normal((B, H)).astype(np.float32) for _ in range(2))
    calls = _spy(monkeypatch)
    assert cell.uses_fused(np.float32) and not bm.lstm(N_IN, H, fused=False).uses_fused("float32")
    assert not bm.gru(N_IN, H).uses_fused("float32")
    fused = _cell_steps(cell, params, state, x, cot)
    assert calls == {"lstm_forward": 2, "lstm_output": 1, "lstm_vjp": 1, "sum_gates": 1}
    numpy_ = _cell_steps(bm.lstm(N_IN, H, fused=False), params, state, x, cot)
    # no more calls
    assert calls == {"lstm_forward": 2, "lstm_output": 1, "lstm_vjp": 1, "sum_gates": 1}
    for a, b in zip(fused, numpy_):
        assert a.dtype == np.float32 and a.shape == b.shape
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_float64_never_uses_the_fused_kernels(rng, monkeypatch):
    cell = bm.lstm(N_IN, H)
    params = {k: rng.standard_normal(s) for k, s in cell.param_shapes().items()}
    state = tuple(rng.standard_normal((B, H)) for _ in range(2))
    calls = _spy(monkeypatch)
    assert not cell.uses_fused(np.float64)
    _cell_steps(cell, params, state, rng.standard_normal((B, N_IN)), state)
    assert calls == {}


def test_cell_methods_with_float64_arrays_and_float32_params_use_numpy(rng, monkeypatch):
    """A Cell method decides on the arrays' dtype as well as the params': float64
    states with float32 params run numpy's kernels, in float64, as before the executor
    looked at the params alone."""
    cell = bm.lstm(N_IN, H)
    params = {k: rng.standard_normal(s).astype(np.float32) for k, s in cell.param_shapes().items()}
    state = tuple(rng.standard_normal((B, H)) for _ in range(2))
    calls = _spy(monkeypatch)
    out = _cell_steps(cell, params, state, rng.standard_normal((B, N_IN)), state)
    assert calls == {}
    assert out[0].dtype == np.float64


def _run(name, model, params, xs, ys):
    T = xs.shape[0]
    strategy = {"full": bm.full(), "binomial": bm.binomial(slots=3),
                "optimal": bm.optimal(budget_bytes=4 * model.cell.residual_bytes(B, np.float32)),
                "truncated": bm.truncated(T, T)}[name]
    return strategy.run(model, params, xs, ys)


def _problem(rng, T=23):
    model = bm.Model(bm.lstm(N_IN, H), 2, loss="mse")
    params = model.init(rng, np.float32)
    xs = rng.standard_normal((T, B, N_IN)).astype(np.float32)
    ys = rng.standard_normal((T, B, 2)).astype(np.float32)
    return model, params, xs, ys


@pytest.mark.parametrize("name", ["full", "binomial", "optimal", "truncated"])
def test_strategies_agree_with_numpy_kernels_and_float64(rng, monkeypatch, name):
    model, params, xs, ys = _problem(rng)
    calls = _spy(monkeypatch)
    fused = _run(name, model, params, xs, ys)
    assert calls["lstm_forward"] >= xs.shape[0] and calls["lstm_vjp"] == xs.shape[0]
    numpy_ = _run(name, bm.Model(bm.lstm(N_IN, H, fused=False), 2, loss="mse"), params, xs, ys)
    assert calls["lstm_vjp"] == xs.shape[0]  # the numpy run made no more calls
    exact = _run(name, model, {k: v.astype(np.float64) for k, v in params.items()},
                 xs.astype(np.float64), ys.astype(np.float64))
    assert fused.loss == pytest.approx(numpy_.loss, rel=1e-6)
    for k in params:
        scale = np.abs(exact.grads[k]).max()
        # the fused kernels are as close to float64 as numpy's kernels are, to a few ulps
        err_fused = np.abs(fused.grads[k] - exact.grads[k]).max() / scale
        err_numpy = np.abs(numpy_.grads[k] - exact.grads[k]).max() / scale
        assert err_fused <= 1e-5 and err_fused <= 4 * err_numpy + 1e-6, k


def test_fused_runs_are_deterministic_and_recomputation_is_bitwise(rng, monkeypatch):
    calls = _spy(monkeypatch)
    model, params, xs, ys = _problem(rng)
    full_a, full_b = (_run("full", model, params, xs, ys) for _ in range(2))
    binomial = _run("binomial", model, params, xs, ys)
    assert binomial.stats.forward_steps > xs.shape[0]  # it did recompute
    assert calls["lstm_forward"] == 2 * xs.shape[0] + binomial.stats.forward_steps
    for k in params:
        assert np.array_equal(full_a.grads[k], full_b.grads[k])
        assert np.array_equal(binomial.grads[k], full_a.grads[k]), k
    assert full_a.loss == full_b.loss and binomial.loss == pytest.approx(full_a.loss, rel=1e-6)


@pytest.mark.parametrize("value, expected", [(None, "True"), ("0", "False"), ("1", "True")])
def test_environment_variable_turns_the_fused_kernels_off(value, expected):
    env = {k: v for k, v in os.environ.items() if k != "BPTT_MEMORY_FUSED"}
    if value is not None:
        env["BPTT_MEMORY_FUSED"] = value
    code = "import bptt_memory as bm; print(bm.lstm(1, 1).uses_fused('float32'))"
    out = subprocess.run([sys.executable, "-c", code],
                         env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == expected

