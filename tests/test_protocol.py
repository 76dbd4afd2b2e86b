"""The cell protocol end to end: a user's cell, stacks and a loss of one's own run under
every strategy with exact gradients and bytes, and protocol mistakes are named early."""

import warnings

import numpy as np
import pytest

import bptt_memory as bm
from cell_zoo import PROTOCOL_CELLS, IndRNN

T, B, N_IN, H, N_OUT = 13, 3, 4, 5, 2
REL = 1e-12


def _problem(cell, rng, loss="mse"):
    model = bm.Model(cell, n_out=N_OUT, loss=loss)
    params = model.init(rng)
    xs = rng.standard_normal((T, B, N_IN))
    ys = rng.standard_normal((T, B, N_OUT))
    return model, params, xs, ys


def _rel(a, b):
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-300))


def _strategies(cell):
    rb = cell.residual_bytes(B, np.float64)
    return [bm.full(), bm.uniform(every=4), bm.binomial(slots=2),
            bm.optimal(budget_bytes=4 * rb), bm.truncated(T, T)]


@pytest.fixture(params=sorted(PROTOCOL_CELLS))
def cell(request):
    return PROTOCOL_CELLS[request.param](N_IN, H)


def test_every_strategy_gives_the_references_gradient_and_the_simulators_bytes(cell, rng):
    model, params, xs, ys = _problem(cell, rng)
    mask = rng.uniform(0.5, 1.5, (T, B))
    h0 = tuple(0.3 * rng.standard_normal(s) for s in cell.state_shapes(B))
    loss, grads, grad_h0 = bm.reference_gradients(model, params, xs, ys, h0=h0, mask=mask)
    sizes = cell.sizes(B, np.float64)
    for strategy in _strategies(cell):
        res = strategy.run(model, params, xs, ys, h0=h0, mask=mask)
        assert abs(res.loss - loss) <= REL * abs(loss), strategy.name
        for k in params:
            assert _rel(res.grads[k], grads[k]) <= REL, (strategy.name, k)
        for a, b in zip(res.grad_h0, grad_h0):
            assert _rel(a, b) <= REL, strategy.name
        if isinstance(strategy, bm.ScheduledStrategy):
            plan = strategy.schedule(T, **sizes)
            assert res.stats.peak_bytes == bm.simulate(plan, n_steps=T, **sizes).peak_bytes
    full = bm.full().run(model, params, xs, ys, h0=h0, mask=mask)
    assert full.stats.peak_bytes == cell.recorded_bytes(T, B, np.float64)


def test_a_user_cell_streams_and_runs_a_hand_written_schedule(rng):
    cell = IndRNN(N_IN, H)
    model, params, xs, ys = _problem(cell, rng)
    want = bm.full().run(model, params, xs, ys)
    plan = (bm.Advance(0, 5), bm.Store(5), bm.Record(5, T), bm.Reverse(5, T), bm.Restore(0),
            bm.Free(5), bm.Record(0, 5), bm.Reverse(0, 5))
    got = bm.execute(plan, model, params, xs, ys)
    assert abs(got.loss - want.loss) <= REL * abs(want.loss)
    assert all(_rel(got.grads[k], want.grads[k]) <= REL for k in params)
    updates = list(bm.truncated(T, T).stream(model, params, zip(xs, ys)))
    assert len(updates) == 1 and all(_rel(updates[0].grads[k], want.grads[k]) <= REL
                                     for k in params)


def test_the_readme_cells_model_gradient_matches_central_differences(rng):
    """The whole model (IndRNN, readout, loss) along random directions, float64."""
    cell = IndRNN(N_IN, H)
    model, params, xs, ys = _problem(cell, rng)
    res = bm.full().run(model, params, xs, ys)
    eps = 1e-6
    for _ in range(3):
        v = {k: rng.standard_normal(p.shape) for k, p in params.items()}

        def loss(sign):
            p = {k: params[k] + sign * eps * v[k] for k in params}
            return bm.full().run(model, p, xs, ys).loss

        numeric = (loss(+1) - loss(-1)) / (2 * eps)
        analytic = sum(float(np.sum(res.grads[k] * v[k])) for k in params)
        assert abs(numeric - analytic) <= 1e-6 * max(abs(analytic), 1.0)


def test_a_user_cell_without_residual_output_gets_its_output_kept_and_counted(rng):
    class Plain(IndRNN):  # the same cell, without the optional hook
        residual_output = bm.Cell.residual_output

    cell = Plain(N_IN, H)
    assert cell.keeps_output()
    assert (cell.residual_bytes(B, np.float64)
            == IndRNN(N_IN, H).residual_bytes(B, np.float64) + B * H * 8)
    model, params, xs, ys = _problem(cell, rng)
    want = bm.full().run(bm.Model(IndRNN(N_IN, H), N_OUT), params, xs, ys)
    for strategy in _strategies(cell):
        got = strategy.run(model, params, xs, ys)
        assert abs(got.loss - want.loss) <= REL * abs(want.loss)
        assert all(_rel(got.grads[k], want.grads[k]) <= REL for k in params)
    assert (bm.full().run(model, params, xs, ys).stats.peak_bytes
            == cell.recorded_bytes(T, B, np.float64))


# ---- your own loss


def _huber(o, y):
    d = o - y
    small = np.abs(d) <= 1.0
    per = np.where(small, 0.5 * d * d, np.abs(d) - 0.5).sum(axis=1)
    return per, np.where(small, d, np.sign(d))


def test_a_loss_function_of_ones_own_matches_central_differences(rng):
    model, params, xs, ys = _problem(bm.gru(N_IN, H), rng, loss=_huber)
    ys = 2 * ys
    mask = rng.uniform(0.0, 1.0, (T, B))
    res = bm.binomial(slots=3).run(model, params, xs, ys, mask=mask)
    eps = 1e-6
    v = {k: rng.standard_normal(p.shape) for k, p in params.items()}

    def loss(sign):
        return bm.full().run(model, {k: params[k] + sign * eps * v[k] for k in params}, xs, ys,
                             mask=mask).loss

    numeric = (loss(+1) - loss(-1)) / (2 * eps)
    analytic = sum(float(np.sum(res.grads[k] * v[k])) for k in params)
    assert abs(numeric - analytic) <= 1e-6 * max(abs(analytic), 1.0)
    ref = bm.reference_gradients(model, params, xs, ys, mask=mask)
    assert abs(res.loss - ref[0]) <= REL * abs(ref[0])


def test_a_loss_function_equal_to_mse_gives_mses_results(rng):
    def mse(o, y):
        return ((o - y) ** 2).mean(axis=1), 2 * (o - y) / o.shape[1]

    model, params, xs, ys = _problem(bm.lstm(N_IN, H), rng)
    mine = bm.Model(model.cell, N_OUT, loss=mse)
    a, b = bm.full().run(model, params, xs, ys), bm.full().run(mine, params, xs, ys)
    assert abs(a.loss - b.loss) <= REL * abs(a.loss)
    assert all(_rel(b.grads[k], a.grads[k]) <= REL for k in params)


@pytest.mark.parametrize("bad,match", [
    (lambda o, y: (np.zeros(o.shape[0] + 1), np.zeros_like(o)),
     r"per-example loss has shape \((\d+),\) for outputs o of shape \((\d+), 2\); expected"),
    (lambda o, y: (np.zeros(o.shape[0]), np.zeros((o.shape[0], 1))),
     r"dloss/do has shape \(\d+, 1\); expected \(\d+, 2\)"),
    (lambda o, y: 1.0, "must return"),
])
def test_a_loss_function_with_bad_returns_is_named(rng, bad, match):
    model, params, xs, ys = _problem(bm.vanilla(N_IN, H), rng, loss=bad)
    with pytest.raises((TypeError, ValueError), match=match):
        bm.full().run(model, params, xs, ys)


def test_a_loss_function_gets_ys_of_any_trailing_shape_but_t_b_first(rng):
    model, params, xs, _ = _problem(bm.vanilla(N_IN, H), rng, loss=_huber)
    with pytest.raises(ValueError, match=r"^ys: .*start with \(T, B\)"):
        bm.full().run(model, params, xs, np.zeros((T + 1, B, N_OUT)))


# ---- protocol mistakes, named on the first step


class _Broken(IndRNN):
    def __init__(self, what):
        super().__init__(N_IN, H)
        self.what = what

    def step(self, params, x, state):
        new = super().step(params, x, state)
        if self.what == "step-count":
            return new + new
        if self.what == "step-dtype":
            return (new[0].astype(np.float32),)
        return new

    def record(self, params, x, state):
        new, res = super().record(params, x, state)
        if self.what == "record-shape":
            return new, (res[0], res[1][:, :-1])
        if self.what == "record-count":
            return new, res[:1]
        if self.what == "record-state":
            return (new[0][:, :-1],), res
        return new, res

    def vjp(self, params, x, residuals, dstate):
        d, dp = super().vjp(params, x, residuals, dstate)
        if self.what == "vjp-name":
            dp["nope"] = dp.pop("W")
        if self.what == "vjp-shape":
            dp["W"] = dp["W"][:-1]
        return d, dp


@pytest.mark.parametrize("what,strategy,match", [
    ("step-count", bm.binomial(2),
     r"_Broken\.step: returned a tuple of 2 as the new state; expected a tuple of 1"),
    ("step-dtype", bm.binomial(2),
     r"_Broken\.step: new state component 0 is shape .* dtype float32; expected .* float64"),
    ("record-shape", bm.full(),
     r"_Broken\.record: residual 1 is shape \(3, 4\) .*declares shape \(3, 5\)"),
    ("record-count", bm.full(),
     r"_Broken\.record: returned 1 residuals; residual_shapes\(3\) declares 2"),
    ("record-state", bm.full(), r"_Broken\.record: new state component 0 is shape \(3, 4\)"),
    ("vjp-name", bm.full(), r"_Broken\.vjp: dparams\['nope'\] is not a parameter"),
    ("vjp-shape", bm.full(), r"_Broken\.vjp: dparams\['W'\] is shape \(4, 4\); expected \(5, 4\)"),
])
def test_a_cell_breaking_the_protocol_is_named_with_what_was_expected(rng, what, strategy, match):
    model, params, xs, ys = _problem(_Broken(what), rng)
    with pytest.raises(bm.CellError, match=match):
        strategy.run(model, params, xs, ys)


def test_a_cell_missing_a_required_method_cannot_be_built():
    class NoVjp(bm.Cell):
        def param_shapes(self):
            return {}

        def state_shapes(self, batch):
            return ((batch, 1),)

        def residual_shapes(self, batch):
            return ()

        def step(self, params, x, state):
            return state

        def record(self, params, x, state):
            return state, ()

    with pytest.raises(TypeError, match="NoVjp.*vjp"):
        NoVjp()


@pytest.mark.parametrize("not_a_model", [None, "lstm", "cell"])
@pytest.mark.parametrize("strategy", [bm.full(), bm.binomial(2), bm.truncated(2)],
                         ids=lambda s: s.name)
def test_run_names_model_when_given_a_cell_or_nothing(rng, not_a_model, strategy):
    model, params, xs, ys = _problem(bm.lstm(N_IN, H), rng)
    bad = model.cell if not_a_model == "cell" else not_a_model
    with pytest.raises(TypeError, match=r"\(model=\.\.\.\): expected a bm\.Model"):
        strategy.run(bad, params, xs, ys)
    with pytest.raises(TypeError, match="model"):
        bm.execute((bm.Record(0, T), bm.Reverse(0, T)), bad, params, xs, ys)
    with pytest.raises(TypeError, match="model"):
        bm.reference_gradients(bad, params, xs, ys)


def test_model_needs_a_protocol_cell():
    with pytest.raises(TypeError, match=r"Model\(cell=\.\.\.\): expected a bm\.Cell"):
        bm.Model(object(), n_out=2)


def test_a_cell_naming_a_readout_parameter_is_refused():
    class Clash(IndRNN):
        def param_shapes(self):
            return {**super().param_shapes(), "bias_out": (2,)}

    with pytest.raises(ValueError, match="bias_out"):
        bm.Model(Clash(N_IN, H), n_out=2)


# ---- numpy's array subclasses are refused, not misread


@pytest.mark.parametrize("where", ["xs", "ys", "mask", "h0", "param"])
def test_masked_arrays_are_refused_naming_the_argument(rng, where):
    model, params, xs, ys = _problem(bm.gru(N_IN, H), rng)
    mask, h0 = np.ones((T, B)), (np.zeros((B, H)),)

    def masked(a):
        data = a.copy()
        data.flat[0] = np.nan  # a NaN under the mask: it must not pass unseen
        return np.ma.masked_array(data, mask=np.eye(1, data.size, dtype=bool).reshape(data.shape))

    if where == "xs":
        xs = masked(xs)
    elif where == "ys":
        ys = masked(ys)
    elif where == "mask":
        mask = masked(mask)
    elif where == "h0":
        h0 = (masked(h0[0]),)
    else:
        params = dict(params, weight_hh=masked(params["weight_hh"]))
    with pytest.raises(TypeError, match="masked array"):
        bm.full().run(model, params, xs, ys, mask=mask, h0=h0)


def test_a_matrix_parameter_is_refused_with_the_fix(rng):
    model, params, xs, ys = _problem(bm.vanilla(N_IN, H), rng)
    with warnings.catch_warnings():  # numpy discourages np.matrix, as we do
        warnings.simplefilter("ignore", PendingDeprecationWarning)
        params = dict(params, bias_ih=np.asmatrix(params["bias_ih"]))
    with pytest.raises((TypeError, ValueError), match=r"params\['bias_ih'\]"):
        bm.full().run(model, params, xs, ys)
