"""Cells: the protocol's contract for every cell, and the built-ins' own formulas.

Every cell in the zoo (built-ins, the README's IndRNN, stacks, multi-layer cells) is
checked through the protocol alone: `vjp` against central differences, `step` against
`record`, what `record` keeps against `residual_shapes`, no mutation of what a step is
given. The built-ins are also checked against their byte formulas and PyTorch's layout.
"""

import numpy as np
import pytest

import bptt_memory as bm
from cell_zoo import ALL_CELLS, CELLS

N_IN, B, H = 3, 4, 5

# Items of (B, H) one recorded step keeps, and one state holds, per kind (issue's formulas).
RESIDUAL_ITEMS = {"vanilla": 2, "lstm": 7, "gru": 5}
STATE_ITEMS = {"vanilla": 1, "lstm": 2, "gru": 1}
# ... and shared with the step before when both are recorded (vanilla h_prev, LSTM c_prev)
LINK_ITEMS = {"vanilla": 1, "lstm": 1, "gru": 0}

EPS = 1e-6
RTOL = 1e-7


@pytest.fixture(params=sorted(ALL_CELLS))
def cell(request):
    return ALL_CELLS[request.param](N_IN, H)


@pytest.fixture(params=sorted(CELLS))
def builtin(request):
    return CELLS[request.param](N_IN, H)


def _params(cell, rng, dtype=np.float64):
    return {k: (0.6 * rng.standard_normal(s)).astype(dtype) for k, s in cell.param_shapes().items()}


def _state(cell, rng, dtype=np.float64):
    return tuple((0.8 * rng.standard_normal(s)).astype(dtype) for s in cell.state_shapes(B))


def _dot(a, b):
    return float(np.sum(a * b))


def _vjp_one_step(cell, params, state, x, cot):
    """Gradients of <cot, new state> w.r.t. params, state and x through the protocol."""
    _, res = cell.record(params, x, state)
    dstate2, dparams2 = cell.vjp(params, x, res, cot)
    try:
        dstate, dparams, dx = cell.vjp_input(params, x, res, cot)  # the same, and dx
    except bm.CellError:  # a cell (the README's IndRNN) that need not be stacked above another
        dstate, dparams, dx = dstate2, dparams2, None
    assert all(np.array_equal(a, b) for a, b in zip(dstate, dstate2))
    assert dparams.keys() == dparams2.keys()
    assert all(np.array_equal(dparams[k], dparams2[k]) for k in dparams)
    grads = {k: dparams.get(k, np.zeros_like(v)) for k, v in params.items()}
    return grads, dstate, dx


def test_vjp_matches_central_differences_along_random_directions(cell, rng):
    params, state, x = _params(cell, rng), _state(cell, rng), rng.standard_normal((B, N_IN))
    cot = tuple(rng.standard_normal(s.shape) for s in state)
    grads, dstate, dx = _vjp_one_step(cell, params, state, x, cot)

    def f(p, s, xx):
        return sum(_dot(c, a) for c, a in zip(cot, cell.step(p, xx, s)))

    # One random direction per block (so a wrong block is named), then all blocks at once.
    names = range(len(state))
    blocks = [f"param:{k}" for k in params] + [f"state:{n}" for n in names] + ["x", "all"]
    if dx is None:  # no input gradient: x stays put
        blocks.remove("x")
        dx = np.zeros_like(x)
    for block in blocks:
        vp = {k: (rng.standard_normal(v.shape) if block in (f"param:{k}", "all")
                  else np.zeros_like(v))
              for k, v in params.items()}
        vs = tuple(rng.standard_normal(s.shape) if block in (f"state:{n}", "all")
                   else np.zeros(s.shape)
                   for n, s in zip(names, state))
        vx = (rng.standard_normal(x.shape) if block in blocks[-2:] and "x" in blocks
              else np.zeros_like(x))

        def shifted(sign):
            return f({k: params[k] + sign * EPS * vp[k] for k in params},
                     tuple(s + sign * EPS * v for s, v in zip(state, vs)), x + sign * EPS * vx)

        numeric = (shifted(+1) - shifted(-1)) / (2 * EPS)
        analytic = (sum(_dot(grads[k], vp[k]) for k in params)
                    + sum(_dot(d, v) for d, v in zip(dstate, vs)) + _dot(dx, vx))
        assert abs(numeric - analytic) <= RTOL * max(abs(analytic), 1.0), (block, numeric, analytic)


def test_the_readme_indrnn_vjp_matches_central_differences(rng):
    from cell_zoo import IndRNN

    cell = IndRNN(N_IN, H)
    params, state, x = _params(cell, rng), _state(cell, rng), rng.standard_normal((B, N_IN))
    cot = (rng.standard_normal((B, H)),)
    _, res = cell.record(params, x, state)
    dstate, dparams = cell.vjp(params, x, res, cot)
    vp = {k: rng.standard_normal(v.shape) for k, v in params.items()}
    vs = rng.standard_normal((B, H))

    def f(sign):
        p = {k: params[k] + sign * EPS * vp[k] for k in params}
        return _dot(cot[0], cell.step(p, x, (state[0] + sign * EPS * vs,))[0])

    numeric = (f(+1) - f(-1)) / (2 * EPS)
    analytic = sum(_dot(dparams[k], vp[k]) for k in params) + _dot(dstate[0], vs)
    assert abs(numeric - analytic) <= RTOL * max(abs(analytic), 1.0)


def test_vjp_leaves_its_inputs_alone(cell, rng):
    params, state, x = _params(cell, rng), _state(cell, rng), rng.standard_normal((B, N_IN))
    _, res = cell.record(params, x, state)
    cot = tuple(rng.standard_normal(s.shape) for s in state)
    before = ({k: v.copy() for k, v in params.items()}, tuple(a.copy() for a in res),
              tuple(a.copy() for a in cot), x.copy())
    cell.vjp(params, x, res, cot)
    for k in params:
        assert np.array_equal(params[k], before[0][k])
    for a, b in zip(res, before[1]):
        assert np.array_equal(a, b)
    for a, b in zip(cot, before[2]):
        assert np.array_equal(a, b)
    assert np.array_equal(x, before[3])


def test_step_and_record_give_bitwise_the_same_state(cell, rng):
    params, state, x = _params(cell, rng), _state(cell, rng), rng.standard_normal((B, N_IN))
    stepped = cell.step(params, x, state)
    recorded, res = cell.record(params, x, state)
    assert len(stepped) == len(recorded) == len(cell.state_shapes(B))
    for a, b, shape in zip(stepped, recorded, cell.state_shapes(B)):
        assert a.shape == shape
        assert np.array_equal(a, b)


def test_record_keeps_what_residual_shapes_declares(cell, rng):
    params, state, x = _params(cell, rng), _state(cell, rng), rng.standard_normal((B, N_IN))
    _, res = cell.record(params, x, state)
    assert [a.shape for a in res] == [tuple(s) for s in cell.residual_shapes(B)]
    assert all(a.dtype == np.float64 for a in res)
    kept = B * cell.output_size * 8 if cell.keeps_output() else 0
    assert cell.residual_bytes(B, np.float64) == sum(a.nbytes for a in res) + kept


def test_the_output_read_off_the_residuals_is_the_output_of_the_new_state(cell, rng):
    params, state, x = _params(cell, rng), _state(cell, rng), rng.standard_normal((B, N_IN))
    new, res = cell.record(params, x, state)
    out = cell.residual_output(res)
    assert out is None or np.array_equal(out, cell.output(new))
    assert cell.output(new).shape == (B, cell.output_size)


def test_step_and_record_never_mutate_the_entering_state(cell, rng):
    """Stored checkpoints are restored and advanced from: a step must not write into them."""
    params, state, x = _params(cell, rng), _state(cell, rng), rng.standard_normal((B, N_IN))
    copy = tuple(a.copy() for a in state)
    new_stepped = cell.step(params, x, state)
    new_recorded, _ = cell.record(params, x, state)
    for a, b in zip(state, copy):
        assert np.array_equal(a, b)
    for new in (new_stepped, new_recorded):
        for a in new:
            assert not any(np.shares_memory(a, s) for s in state)


def test_a_later_record_does_not_change_an_earlier_state_or_residuals(cell, rng):
    params, state = _params(cell, rng), _state(cell, rng)
    x1, x2 = rng.standard_normal((B, N_IN)), rng.standard_normal((B, N_IN))
    s1, r1 = cell.record(params, x1, state)
    copy = tuple(a.copy() for a in s1 + r1)
    cell.record(params, x2, s1)
    for a, b in zip(s1 + r1, copy):
        assert np.array_equal(a, b)


def test_float32_is_preserved(cell, rng):
    params = _params(cell, rng, np.float32)
    state = _state(cell, rng, np.float32)
    x = rng.standard_normal((B, N_IN)).astype(np.float32)
    stepped = cell.step(params, x, state)
    recorded, res = cell.record(params, x, state)
    assert all(a.dtype == np.float32 for a in stepped + recorded + res)
    cot = tuple(np.ones(s.shape, np.float32) for s in state)
    dstate, dparams = cell.vjp(params, x, res, cot)
    assert all(a.dtype == np.float32 for a in dstate)
    assert all(g.dtype == np.float32 for g in dparams.values())
    # and it agrees with the float64 step to float32 precision
    params64 = {k: v.astype(np.float64) for k, v in params.items()}
    expected = cell.step(params64, x.astype(np.float64), tuple(a.astype(np.float64) for a in state))
    for a, b in zip(stepped, expected):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_init_follows_param_shapes_with_pytorchs_bound(cell, rng):
    params = cell.init(rng, np.float32)
    assert {k: v.shape for k, v in params.items()} == cell.param_shapes()
    bound = 1 / np.sqrt(cell.output_size)
    assert all(v.dtype == np.float32 and np.abs(v).max() <= bound for v in params.values())


# ---- the built-ins: byte formulas, PyTorch's layout, linked steps


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_residual_and_state_bytes_match_the_formulas_and_the_arrays(builtin, dtype):
    cell, item = builtin, np.dtype(dtype).itemsize
    for batch in (1, 3, 7):
        res, _ = cell.enter(tuple(np.zeros(s, dtype) for s in cell.state_shapes(batch)))
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


def test_enter_names_the_state_it_expects(builtin, rng):
    state = _state(builtin, rng)
    for wrong in (state[:-1], state + (state[0],)):
        with pytest.raises(ValueError, match=r"enter\(state=\.\.\.\): expected"):
            builtin.enter(wrong)


def test_a_linked_step_shares_the_previous_steps_arrays_and_reverses_the_same(builtin, rng):
    """NOTE [linked steps]: the entering-state slots a cell links are the very arrays in
    which the step before keeps its new state; the rest are new, and the VJP is the same."""
    cell = builtin
    params, state = _params(cell, rng), _state(cell, rng)
    grads = {k: np.zeros_like(v) for k, v in params.items()}
    kernels = cell.kernels(params, B, grads, 2 * B)
    u1, u2 = kernels.project(rng.standard_normal((2, B, N_IN)))
    mid, first, held = kernels.record(u1, state, None)
    assert held == cell.residual_bytes(B, np.float64)
    assert all(np.array_equal(first[j], state[j]) for j in range(len(state)))
    out_a, linked, held = kernels.record(u2, mid, first)
    assert held == cell.residual_bytes(B, np.float64) - cell.link_bytes(B, np.float64)
    shared = [a for a in linked if any(a is b for b in first)]
    assert sum(a.nbytes for a in shared) == cell.link_bytes(B, np.float64)
    out_b, alone, _ = kernels.record(u2, mid, None)
    assert all(np.array_equal(a, b) for a, b in zip(out_a, out_b))
    assert all(np.array_equal(a, b) for a, b in zip(linked, alone))
    dstate = tuple(rng.standard_normal(a.shape) for a in state)
    x = rng.standard_normal((B, N_IN))
    da = kernels.vjp(0, x, linked, dstate)
    db = kernels.vjp(B, x, alone, dstate)
    assert all(np.array_equal(a, b) for a, b in zip(da, db))


def test_the_fast_kernels_give_the_protocols_step_state_and_gradients(builtin, rng):
    """`Cell.kernels` (the built-ins' batched path) and the protocol methods agree."""
    cell = builtin
    params, state = _params(cell, rng), _state(cell, rng)
    xs = rng.standard_normal((3, B, N_IN))
    grads = {k: np.zeros_like(v) for k, v in params.items()}
    kernels = cell.kernels(params, B, grads, 3 * B)
    us = kernels.project(xs)
    expected = {k: np.zeros_like(v) for k, v in params.items()}
    states, residuals = [state], []
    for t in range(3):
        new, res, _ = kernels.record(us[t], states[-1], None)
        assert all(np.allclose(a, b, rtol=1e-13, atol=1e-13)
                   for a, b in zip(new, cell.step(params, xs[t], states[-1])))
        states.append(new)
        residuals.append(res)
    dstate = tuple(rng.standard_normal(s.shape) for s in state)
    d_fast, d_plain = dstate, dstate
    for t in (2, 1, 0):
        d_fast = kernels.vjp(t * B, xs[t], residuals[t], d_fast)
        d_plain, dp = cell.vjp(params, xs[t], residuals[t], d_plain)
        for k, v in dp.items():
            expected[k] += v
    kernels.flush(0, 3 * B, xs)
    assert all(np.allclose(a, b, rtol=1e-12, atol=1e-13) for a, b in zip(d_fast, d_plain))
    for k in params:
        np.testing.assert_allclose(grads[k], expected[k], rtol=1e-12, atol=1e-13)


def test_param_shapes_follow_pytorch(builtin):
    G = {"vanilla": 1, "lstm": 4, "gru": 3}[builtin.kind]
    assert builtin.n_gates == G
    assert builtin.param_shapes() == {
        "weight_ih": (G * H, N_IN), "weight_hh": (G * H, H),
        "bias_ih": (G * H,), "bias_hh": (G * H,),
    }


@pytest.mark.parametrize("kind", sorted(bm.CELLS))
@pytest.mark.parametrize("L", [2, 3])
def test_num_layers_follows_pytorchs_names_and_state_layout(kind, L):
    cell = bm.CELLS[kind](N_IN, H, num_layers=L)
    G = {"vanilla": 1, "lstm": 4, "gru": 3}[kind]
    expected = {}
    for layer in range(L):
        expected.update({f"weight_ih_l{layer}": (G * H, N_IN if layer == 0 else H),
                         f"weight_hh_l{layer}": (G * H, H),
                         f"bias_ih_l{layer}": (G * H,), f"bias_hh_l{layer}": (G * H,)})
    assert cell.param_shapes() == expected
    assert list(cell.param_shapes()) == list(expected)  # PyTorch's order
    assert cell.state_shapes(B) == ((L, B, H),) * STATE_ITEMS[kind]
    assert "no dropout" in bm.CELLS[kind].__doc__


def test_sigmoid_does_not_overflow_for_large_inputs(rng):
    """Saturated gates must not trip np.seterr(all="raise") (sigmoid via tanh)."""
    cell = bm.vanilla(N_IN, H, "sigmoid")
    params = {k: 1e3 * rng.standard_normal(s) for k, s in cell.param_shapes().items()}
    (h,) = cell.step(params, rng.standard_normal((B, N_IN)), _state(cell, rng))
    assert np.all((h >= 0.0) & (h <= 1.0))


def test_the_registry_names_every_built_in_cell():
    assert sorted(bm.CELLS) == ["gru", "lstm", "vanilla"]
    for name, factory in bm.CELLS.items():
        assert factory(2, 3).name == name


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


def test_the_protocol_base_cannot_be_built_alone():
    """bm.Cell is the abstract protocol: its required methods must be written."""
    with pytest.raises(TypeError, match="abstract"):
        bm.Cell()


def test_fused_must_be_a_bool():
    with pytest.raises(TypeError, match=r"^lstm\(fused='no'\): fused must be True or False"):
        bm.lstm(3, 4, fused="no")
    assert bm.lstm(3, 4, fused=False) != bm.lstm(3, 4)  # a different cell, numpy's kernels
