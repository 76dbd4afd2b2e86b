"""Cells: one step's VJP against central differences, step == record, byte formulas, checks.

The VJP contract checked here is the one the executor relies on: ``cell.vjp`` adds the
step's ``weight_hh``/``bias_hh`` gradients itself and returns (dL/dstate_prev, dL/dxp);
the caller turns dxp into the ``weight_ih``/``bias_ih`` gradients and, through
``xp = cell.project(params, x)``, into dL/dx.
"""

import numpy as np
import pytest

import bptt_memory as bm
from cell_zoo import CELLS

N_IN, B, H = 3, 4, 5

# Items of (B, H) one recorded step keeps, and one state holds, per kind (issue's formulas).
RESIDUAL_ITEMS = {"vanilla": 2, "lstm": 7, "gru": 5}
STATE_ITEMS = {"vanilla": 1, "lstm": 2, "gru": 1}
# ... and shared with the step before when both are recorded (vanilla h_prev, LSTM c_prev)
LINK_ITEMS = {"vanilla": 1, "lstm": 1, "gru": 0}

EPS = 1e-6
RTOL = 1e-7


@pytest.fixture(params=sorted(CELLS))
def cell(request):
    return CELLS[request.param](N_IN, H)


def _params(cell, rng, dtype=np.float64):
    return {k: (0.6 * rng.standard_normal(s)).astype(dtype) for k, s in cell.param_shapes().items()}


def _state(cell, rng, dtype=np.float64):
    return tuple((0.8 * rng.standard_normal((B, H))).astype(dtype) for _ in cell.state_names)


def _one_step(cell, params, state, x):
    return cell.step(params, cell.project(params, x), state)


def _vjp_one_step(cell, params, state, x, cot):
    """Gradients of <cot, new state> w.r.t. params, state and x, as a caller assembles them."""
    xp = cell.project(params, x)
    res = cell.new_residuals(B, x.dtype)
    cell.record(params, xp, state, res)
    grads = {k: np.zeros_like(v) for k, v in params.items()}
    dstate, dxp = cell.vjp(params, res, cot, grads)
    grads["weight_ih"] += dxp.T @ x  # the caller's part: xp = x·W_ihᵀ + b_ih (+ b_hh)
    grads["bias_ih"] += dxp.sum(axis=0)
    dx = dxp @ params["weight_ih"]
    return grads, dstate, dx


def _dot(a, b):
    return float(np.sum(a * b))


def test_vjp_matches_central_differences_along_random_directions(cell, rng):
    params, state, x = _params(cell, rng), _state(cell, rng), rng.standard_normal((B, N_IN))
    cot = tuple(rng.standard_normal((B, H)) for _ in cell.state_names)
    grads, dstate, dx = _vjp_one_step(cell, params, state, x, cot)

    def f(p, s, xx):
        return sum(_dot(c, a) for c, a in zip(cot, _one_step(cell, p, s, xx)))

    # One random direction per block (so a wrong block is named), then all blocks at once.
    blocks = [f"param:{k}" for k in params] + [f"state:{n}" for n in cell.state_names] + ["x", "all"]
    for block in blocks:
        vp = {k: (rng.standard_normal(v.shape) if block in (f"param:{k}", "all") else np.zeros_like(v))
              for k, v in params.items()}
        vs = tuple(rng.standard_normal((B, H)) if block in (f"state:{n}", "all") else np.zeros((B, H))
                   for n in cell.state_names)
        vx = rng.standard_normal(x.shape) if block in ("x", "all") else np.zeros_like(x)

        def shifted(sign):
            return f({k: params[k] + sign * EPS * vp[k] for k in params},
                     tuple(s + sign * EPS * v for s, v in zip(state, vs)), x + sign * EPS * vx)

        numeric = (shifted(+1) - shifted(-1)) / (2 * EPS)
        analytic = (sum(_dot(grads[k], vp[k]) for k in params)
                    + sum(_dot(d, v) for d, v in zip(dstate, vs)) + _dot(dx, vx))
        assert abs(numeric - analytic) <= RTOL * max(abs(analytic), 1.0), (block, numeric, analytic)


def test_vjp_leaves_its_inputs_alone(cell, rng):
    params, state, x = _params(cell, rng), _state(cell, rng), rng.standard_normal((B, N_IN))
    xp = cell.project(params, x)
    res = cell.new_residuals(B, x.dtype)
    cell.record(params, xp, state, res)
    cot = tuple(rng.standard_normal((B, H)) for _ in cell.state_names)
    before = ({k: v.copy() for k, v in params.items()}, tuple(a.copy() for a in res),
              tuple(a.copy() for a in cot))
    cell.vjp(params, res, cot, {k: np.zeros_like(v) for k, v in params.items()})
    for k in params:
        assert np.array_equal(params[k], before[0][k])
    for a, b in zip(res, before[1]):
        assert np.array_equal(a, b)
    for a, b in zip(cot, before[2]):
        assert np.array_equal(a, b)


def test_vjp_accumulates_into_grads(cell, rng):
    """vjp adds to grads (strategies sum T steps into one dict), it does not overwrite."""
    params, state, x = _params(cell, rng), _state(cell, rng), rng.standard_normal((B, N_IN))
    res = cell.new_residuals(B, x.dtype)
    cell.record(params, cell.project(params, x), state, res)
    cot = tuple(rng.standard_normal((B, H)) for _ in cell.state_names)
    fresh = {k: np.zeros_like(v) for k, v in params.items()}
    cell.vjp(params, res, cot, fresh)
    offset = {k: rng.standard_normal(v.shape) for k, v in params.items()}
    grads = {k: v.copy() for k, v in offset.items()}
    cell.vjp(params, res, cot, grads)
    for k in params:
        np.testing.assert_allclose(grads[k], offset[k] + fresh[k], rtol=1e-14, atol=1e-14)


def test_step_and_record_give_bitwise_the_same_state(cell, rng):
    params, state = _params(cell, rng), _state(cell, rng)
    xp = cell.project(params, rng.standard_normal((B, N_IN)))
    stepped = cell.step(params, xp, state)
    res = cell.new_residuals(B, np.float64)
    recorded = cell.record(params, xp, state, res)
    assert len(stepped) == len(recorded) == len(cell.state_names)
    for a, b in zip(stepped, recorded):
        assert a.shape == (B, H)
        assert np.array_equal(a, b)


def test_output_is_the_new_h(cell, rng):
    params, state = _params(cell, rng), _state(cell, rng)
    xp = cell.project(params, rng.standard_normal((B, N_IN)))
    res = cell.new_residuals(B, np.float64)
    new = cell.record(params, xp, state, res)
    assert np.array_equal(cell.output(res), new[0])


def test_step_and_record_never_mutate_the_entering_state(cell, rng):
    """Stored checkpoints are restored and advanced from: a step must not write into them."""
    params, state = _params(cell, rng), _state(cell, rng)
    xp = cell.project(params, rng.standard_normal((B, N_IN)))
    copy = tuple(a.copy() for a in state)
    new_stepped = cell.step(params, xp, state)
    new_recorded = cell.record(params, xp, state, cell.new_residuals(B, np.float64))
    for a, b in zip(state, copy):
        assert np.array_equal(a, b)
    for new in (new_stepped, new_recorded):
        for a in new:
            assert not any(np.shares_memory(a, s) for s in state)


def test_recording_again_into_the_same_residuals_does_not_change_earlier_state(cell, rng):
    """A step's new state is never overwritten by recording a *different* step elsewhere."""
    params, state = _params(cell, rng), _state(cell, rng)
    xp1, xp2 = (cell.project(params, rng.standard_normal((B, N_IN))) for _ in range(2))
    res1, res2 = cell.new_residuals(B, np.float64), cell.new_residuals(B, np.float64)
    s1 = cell.record(params, xp1, state, res1)
    copy = tuple(a.copy() for a in s1)
    cell.record(params, xp2, s1, res2)
    for a, b in zip(s1, copy):
        assert np.array_equal(a, b)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_residual_and_state_bytes_match_the_formulas_and_the_arrays(cell, dtype):
    item = np.dtype(dtype).itemsize
    for batch in (1, 3, 7):
        res = cell.new_residuals(batch, dtype)
        assert len(res) == len(cell.residual_names) == len(cell.residual_shapes(batch))
        assert [a.shape for a in res] == list(cell.residual_shapes(batch))
        assert all(a.dtype == dtype for a in res)
        assert cell.residual_bytes(batch, dtype) == RESIDUAL_ITEMS[cell.kind] * batch * H * item
        assert cell.residual_bytes(batch, dtype) == sum(a.nbytes for a in res)
        assert cell.state_bytes(batch, dtype) == STATE_ITEMS[cell.kind] * batch * H * item
        assert len(cell.state_names) == STATE_ITEMS[cell.kind]
        assert cell.link_bytes(batch, dtype) == LINK_ITEMS[cell.kind] * batch * H * item
        assert cell.sizes(batch, dtype) == {"state_bytes": cell.state_bytes(batch, dtype),
                                            "residual_bytes": cell.residual_bytes(batch, dtype),
                                            "link_bytes": cell.link_bytes(batch, dtype)}
        per_step = RESIDUAL_ITEMS[cell.kind] - LINK_ITEMS[cell.kind]
        for n in (1, 2, 9):
            expected = (RESIDUAL_ITEMS[cell.kind] + (n - 1) * per_step) * batch * H * item
            assert cell.recorded_bytes(n, batch, dtype) == expected


def test_enter_names_the_state_it_expects(cell, rng):
    state = _state(cell, rng)
    for wrong in (state[:-1], state + (state[0],)):
        with pytest.raises(ValueError, match=r"enter\(state=\.\.\.\): expected"):
            cell.enter(wrong)


def test_a_linked_step_shares_the_previous_steps_arrays_and_reverses_the_same(cell, rng):
    """NOTE [linked steps]: the entering-state slots a cell links are the very arrays in
    which the step before keeps its new state; the rest are new, and the VJP is the same."""
    params, state = _params(cell, rng), _state(cell, rng)
    xp1, xp2 = (cell._gate_major(cell.project(params, rng.standard_normal((B, N_IN))))
                for _ in range(2))  # the kernels' layout (NOTE [gate-major layout])
    first, owned = cell.enter(state)
    assert len(owned) == len(first) and all(a is b for a, b in zip(first, owned))
    assert all(np.array_equal(first[j], state[j]) for j in range(len(state)))
    mid = cell._k.record(cell, bm.cells._weights(cell, params), xp1, state, first)
    linked, owned = cell.enter(mid, previous=first)
    alone, _ = cell.enter(mid)
    assert sum(a.nbytes for a in owned) == (cell.residual_bytes(B, np.float64)
                                            - cell.link_bytes(B, np.float64))
    shared = [a for a in linked if any(a is b for b in first)]
    assert sum(a.nbytes for a in shared) == cell.link_bytes(B, np.float64)
    w = bm.cells._weights(cell, params)
    out_a = cell._k.record(cell, w, xp2, mid, linked)
    out_b = cell._k.record(cell, w, xp2, mid, alone)
    assert all(np.array_equal(a, b) for a, b in zip(out_a, out_b))
    assert all(np.array_equal(a, b) for a, b in zip(linked, alone))
    dstate = tuple(rng.standard_normal(a.shape) for a in state)
    grads_a = {k: np.zeros_like(v) for k, v in params.items()}
    grads_b = {k: np.zeros_like(v) for k, v in params.items()}
    da, dxa = cell.vjp(params, linked, dstate, grads_a)
    db, dxb = cell.vjp(params, alone, dstate, grads_b)
    assert all(np.array_equal(a, b) for a, b in zip(da, db)) and np.array_equal(dxa, dxb)


def test_state_bytes_match_a_real_state(cell, rng):
    params, state = _params(cell, rng), _state(cell, rng)
    new = cell.step(params, cell.project(params, rng.standard_normal((B, N_IN))), state)
    assert sum(a.nbytes for a in new) == cell.state_bytes(B, np.float64)


def test_param_shapes_follow_pytorch(cell):
    G = {"vanilla": 1, "lstm": 4, "gru": 3}[cell.kind]
    assert cell.n_gates == G
    assert cell.param_shapes() == {
        "weight_ih": (G * H, N_IN), "weight_hh": (G * H, H), "bias_ih": (G * H,), "bias_hh": (G * H,),
    }


def test_float32_is_preserved(cell, rng):
    params = _params(cell, rng, np.float32)
    state = _state(cell, rng, np.float32)
    x = rng.standard_normal((B, N_IN)).astype(np.float32)
    xp = cell.project(params, x)
    assert xp.dtype == np.float32
    stepped = cell.step(params, xp, state)
    res = cell.new_residuals(B, np.float32)
    recorded = cell.record(params, xp, state, res)
    assert all(a.dtype == np.float32 for a in stepped + recorded + res + (cell.output(res),))
    grads = {k: np.zeros_like(v) for k, v in params.items()}
    cot = tuple(np.ones((B, H), np.float32) for _ in cell.state_names)
    dstate, dxp = cell.vjp(params, res, cot, grads)
    assert all(a.dtype == np.float32 for a in dstate)
    assert dxp.dtype == np.float32
    assert all(g.dtype == np.float32 for g in grads.values())
    # and it agrees with the float64 step to float32 precision
    params64 = {k: v.astype(np.float64) for k, v in params.items()}
    state64 = tuple(a.astype(np.float64) for a in state)
    expected = _one_step(cell, params64, state64, x.astype(np.float64))
    for a, b in zip(stepped, expected):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_sigmoid_does_not_overflow_for_large_inputs(rng):
    """Saturated gates must not trip np.seterr(all="raise") (sigmoid via tanh)."""
    cell = bm.vanilla(N_IN, H, "sigmoid")
    params = {k: 1e3 * rng.standard_normal(s) for k, s in cell.param_shapes().items()}
    (h,) = cell.step(params, cell.project(params, rng.standard_normal((B, N_IN))), _state(cell, rng))
    assert np.all((h >= 0.0) & (h <= 1.0))


# ---- constructor checks: the message names the argument


@pytest.mark.parametrize("factory", [bm.lstm, bm.gru, bm.vanilla])
def test_n_hidden_zero_is_rejected(factory):
    with pytest.raises(ValueError, match="n_hidden"):
        factory(3, 0)


@pytest.mark.parametrize("factory", [bm.lstm, bm.gru, bm.vanilla])
def test_n_in_negative_is_rejected(factory):
    with pytest.raises(ValueError, match="n_in"):
        factory(-1, 4)


@pytest.mark.parametrize("bad", ["3", 3.0, True, None])
@pytest.mark.parametrize("factory", [bm.lstm, bm.gru, bm.vanilla])
def test_n_in_not_an_int_is_rejected(factory, bad):
    with pytest.raises(TypeError, match="n_in"):
        factory(bad, 4)


@pytest.mark.parametrize("bad", ["4", 4.0, False])
def test_n_hidden_not_an_int_is_rejected(bad):
    with pytest.raises(TypeError, match="n_hidden"):
        bm.vanilla(3, bad)


def test_numpy_integers_are_accepted():
    cell = bm.lstm(np.int64(3), np.int32(4))
    assert cell.param_shapes()["weight_hh"] == (16, 4)


def test_unknown_activation_is_rejected():
    with pytest.raises(ValueError, match="activation"):
        bm.vanilla(3, 4, activation="swish")


def test_unknown_kind_is_rejected():
    with pytest.raises(ValueError, match="kind"):
        bm.Cell("elman", 3, 4)


def test_fused_must_be_a_bool():
    with pytest.raises(TypeError, match=r"^lstm\(fused='no'\): fused must be True or False"):
        bm.lstm(3, 4, fused="no")
    assert bm.lstm(3, 4, fused=False) != bm.lstm(3, 4)  # a different cell, numpy's kernels
