"""Contract tests over the registry (optax alias_test style): every strategy, every cell.

Each strategy is built with parameters that make it exact, then must reproduce
`bm.reference_gradients` (loss, every grad, grad_h0) to 1e-12 relative error in float64,
with a mask and a non-zero h0. Then: result structure and dtypes, determinism, the
bytes each strategy says it held, tracemalloc's cross-check, and the executor's refusal
of invalid hand-written schedules before any work.
"""

import dataclasses
import tracemalloc

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import bptt_memory as bm
from cell_zoo import CELLS

B, N_IN, H, N_OUT = 2, 3, 4, 3
TOL = 1e-12



def _exact_configs(name, cell, batch, T, dtype=np.float64):
    """Strategies built from the registry's factory with parameters that make them exact."""
    factory = bm.STRATEGIES[name]
    rb, sb = cell.residual_bytes(batch, dtype), cell.state_bytes(batch, dtype)
    if name == "full":
        return [factory()]
    if name == "truncated":  # k2 >= T: every window reaches h0
        return [factory(1, T), factory(min(3, T), T), factory(T, T), factory(T, T + 2),
                factory(T + 1, T + 1)]
    if name == "uniform":
        return [factory(), factory(1), factory(2), factory(5), factory(T), factory(T + 3)]
    if name == "binomial":
        return [factory(1), factory(2), factory(3), factory(max(1, T - 1)), factory(T),
                factory(T + 4)]
    if name == "optimal":  # from one step's residuals up to everything and beyond
        linked = cell.recorded_bytes(T, batch, dtype)  # full()'s bytes
        budgets = [rb, rb + sb, rb + 2 * sb, 2 * rb, 2 * rb + 3 * sb, max(rb, (T // 2) * rb + sb),
                   max(rb, linked - 1), linked, max(rb, T * rb - 1), T * rb, 10 * T * rb]
        return [factory(budget_bytes=b) for b in budgets]
    if name == "online":
        return [factory(1), factory(2), factory(3), factory(max(1, T - 1)), factory(T + 4)]
    raise AssertionError(f"strategy {name!r} is in bm.STRATEGIES "
                         "but has no exact configuration here")


def _problem(rng, cell_name, loss, T, dtype=np.float64, batch=B, n_in=N_IN, hidden=H):
    model = bm.Model(CELLS[cell_name](n_in, hidden), n_out=N_OUT, loss=loss)
    params = {k: rng.uniform(-0.8, 0.8, v.shape).astype(dtype) for k, v in model.init(rng).items()}
    xs = rng.standard_normal((T, batch, n_in)).astype(dtype)
    ys = (rng.standard_normal((T, batch, N_OUT)).astype(dtype) if loss == "mse"
          else rng.integers(0, N_OUT, size=(T, batch)))
    mask = rng.uniform(0.2, 1.5, size=(T, batch)) * (rng.random((T, batch)) < 0.8)
    mask[-1, 0] = 1.0
    h0 = tuple((0.7 * rng.standard_normal((batch, hidden))).astype(dtype)
               for _ in model.cell.state_names)
    return model, params, xs, ys, mask, h0


def _rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    scale = np.max(np.abs(b))
    err = np.max(np.abs(a - b))
    return err / scale if scale > 0 else err


def _assert_same(res, loss, grads, grad_h0, where=""):
    """res's loss, every gradient and grad_h0 against the expected ones, to TOL."""
    assert abs(res.loss - loss) <= TOL * abs(loss), where
    assert res.grads.keys() == grads.keys(), where
    for k in grads:
        assert _rel(res.grads[k], grads[k]) <= TOL, (where, k)
    assert len(res.grad_h0) == len(grad_h0), where
    for i, (got, want) in enumerate(zip(res.grad_h0, grad_h0)):
        assert _rel(got, want) <= TOL, (where, f"grad_h0[{i}]")


def _assert_matches_reference(res, model, params, xs, ys, h0, mask, where=""):
    """res against the plain reference (`_assert_same`)."""
    _assert_same(res, *bm.reference_gradients(model, params, xs, ys, h0=h0, mask=mask), where)


def test_every_registered_strategy_has_an_exact_configuration():
    cell = bm.gru(N_IN, H)
    for name, factory in bm.STRATEGIES.items():
        assert callable(factory)
        assert _exact_configs(name, cell, B, 5)


# ---- exactness against the reference


@pytest.mark.parametrize("T", [1, 6, 13, 37])  # 37: prime, and spans several input chunks
@pytest.mark.parametrize("loss", bm.LOSSES)
@pytest.mark.parametrize("cell_name", sorted(CELLS))
@pytest.mark.parametrize("name", sorted(bm.STRATEGIES))
def test_exact_configurations_match_the_reference(rng, name, cell_name, loss, T):
    model, params, xs, ys, mask, h0 = _problem(rng, cell_name, loss, T)
    for strategy in _exact_configs(name, model.cell, B, T):
        res = strategy.run(model, params, xs, ys, h0=h0, mask=mask)
        _assert_matches_reference(res, model, params, xs, ys, h0, mask, f"{strategy.name}, T={T}")


@st.composite
def _any_exact_strategy(draw):
    """(cell name, T, strategy): any exact configuration, budgets drawn in cell-sized units."""
    cell_name = draw(st.sampled_from(sorted(CELLS)))
    T = draw(st.integers(1, 24))
    name = draw(st.sampled_from(sorted(bm.STRATEGIES)))
    cell = CELLS[cell_name](N_IN, H)
    if name == "full":
        strategy = bm.full()
    elif name == "truncated":
        k1 = draw(st.integers(1, T + 1))
        strategy = bm.truncated(k1, draw(st.integers(max(k1, T), T + 3)))
    elif name == "uniform":
        strategy = bm.uniform(draw(st.none() | st.integers(1, T + 2)))
    elif name == "binomial":
        strategy = bm.binomial(draw(st.integers(1, T + 2)))
    else:
        rb = cell.residual_bytes(B, np.float64)
        extra = draw(st.integers(0, T * rb))  # any byte count, not only whole items
        strategy = bm.optimal(budget_bytes=rb + extra)
    return cell_name, T, strategy


@settings(max_examples=60, deadline=None)
@given(case=_any_exact_strategy(), loss=st.sampled_from(bm.LOSSES), seed=st.integers(0, 2**32 - 1))
def test_any_exact_configuration_matches_the_reference(case, loss, seed):
    cell_name, T, strategy = case
    model, params, xs, ys, mask, h0 = _problem(np.random.default_rng(seed), cell_name, loss, T)
    res = strategy.run(model, params, xs, ys, h0=h0, mask=mask)
    _assert_matches_reference(res, model, params, xs, ys, h0, mask, strategy.name)


@pytest.mark.parametrize("name", sorted(bm.STRATEGIES))
def test_grads_have_the_params_keys_shapes_and_dtype(rng, name):
    for dtype in (np.float64, np.float32):
        for cell_name in ("vanilla-tanh", "lstm", "gru"):
            model, params, xs, ys, mask, h0 = _problem(rng, cell_name, "mse", 7, dtype)
            for strategy in _exact_configs(name, model.cell, B, 7, dtype)[:2]:
                res = strategy.run(model, params, xs, ys, h0=h0, mask=mask)
                assert isinstance(res, bm.Result)
                assert isinstance(res.loss, float)
                assert res.grads.keys() == params.keys()
                for k, p in params.items():
                    assert res.grads[k].shape == p.shape, (strategy.name, k)
                    assert res.grads[k].dtype == dtype, (strategy.name, k)
                    assert res.grads[k] is not p
                assert len(res.grad_h0) == len(model.cell.state_names)
                assert all(g.shape == (B, H) and g.dtype == dtype for g in res.grad_h0)
                assert isinstance(res.stats, bm.Stats)


@pytest.mark.parametrize("name", sorted(bm.STRATEGIES))
@pytest.mark.parametrize("cell_name", ["vanilla-tanh", "lstm", "gru"])
def test_float32_agrees_with_float64_to_float32_precision(rng, name, cell_name):
    model, params, xs, ys, mask, h0 = _problem(rng, cell_name, "cross_entropy", 9)
    res64 = _exact_configs(name, model.cell, B, 9)[0].run(model, params, xs, ys, h0=h0, mask=mask)
    cast = {k: v.astype(np.float32) for k, v in params.items()}
    h0_32 = tuple(a.astype(np.float32) for a in h0)
    strategy = _exact_configs(name, model.cell, B, 9, np.float32)[0]
    res32 = strategy.run(model, cast, xs.astype(np.float32), ys, h0=h0_32, mask=mask)
    assert abs(res32.loss - res64.loss) <= 1e-5 * abs(res64.loss)
    for k in params:
        assert _rel(res32.grads[k], res64.grads[k]) <= 1e-4, k


@pytest.mark.parametrize("name", sorted(bm.STRATEGIES))
def test_inputs_are_not_modified(rng, name):
    model, params, xs, ys, mask, h0 = _problem(rng, "lstm", "mse", 8)
    copies = ({k: v.copy() for k, v in params.items()}, xs.copy(), ys.copy(), mask.copy(),
              tuple(a.copy() for a in h0))
    for strategy in _exact_configs(name, model.cell, B, 8):
        strategy.run(model, params, xs, ys, h0=h0, mask=mask)
    assert all(np.array_equal(params[k], copies[0][k]) for k in params)
    assert np.array_equal(xs, copies[1]) and np.array_equal(ys, copies[2])
    assert np.array_equal(mask, copies[3])
    assert all(np.array_equal(a, b) for a, b in zip(h0, copies[4]))


@pytest.mark.parametrize("name", sorted(bm.STRATEGIES))
def test_running_twice_is_bitwise_identical(rng, name):
    for cell_name in ("vanilla-relu", "lstm", "gru"):
        model, params, xs, ys, mask, h0 = _problem(rng, cell_name, "cross_entropy", 11)
        for strategy in _exact_configs(name, model.cell, B, 11):
            a = strategy.run(model, params, xs, ys, h0=h0, mask=mask)
            b = strategy.run(model, params, xs, ys, h0=h0, mask=mask)
            assert a.loss == b.loss, strategy.name
            assert all(np.array_equal(a.grads[k], b.grads[k]) for k in params), strategy.name
            assert all(np.array_equal(x, y) for x, y in zip(a.grad_h0, b.grad_h0)), strategy.name
            assert (a.stats.peak_bytes, a.stats.forward_steps, a.stats.backward_steps) == \
                   (b.stats.peak_bytes, b.stats.forward_steps, b.stats.backward_steps)


@pytest.mark.parametrize("name", sorted(bm.STRATEGIES))
def test_strategies_are_frozen_values_with_a_name(name):
    cell = bm.lstm(N_IN, H)
    for a, b in zip(_exact_configs(name, cell, B, 10), _exact_configs(name, cell, B, 10)):
        assert a == b and hash(a) == hash(b)
        assert isinstance(a, bm.Strategy)
        assert isinstance(a.name, str) and a.name.startswith(name + "(")
        with pytest.raises(AttributeError):
            a.x = 1  # frozen dataclass: FrozenInstanceError is an AttributeError


def test_truncated_keeps_the_loss_but_biases_the_gradient_when_k2_lt_T(rng):
    model, params, xs, ys, mask, h0 = _problem(rng, "gru", "mse", 12)
    ref_loss, ref_grads, _ = bm.reference_gradients(model, params, xs, ys, h0=h0, mask=mask)
    res = bm.truncated(3, 4).run(model, params, xs, ys, h0=h0, mask=mask)
    assert abs(res.loss - ref_loss) <= TOL * abs(ref_loss)  # each step's loss counted once
    assert _rel(res.grads["weight_hh"], ref_grads["weight_hh"]) > 1e-6  # dependencies cut
    assert res.stats.peak_bytes == 4 * model.cell.residual_bytes(B, np.float64)


def _states_at_boundaries(model, params, xs, h0):
    """The true state at every boundary 0 … T, by plain cell steps."""
    states = [h0]
    for x in xs:
        states.append(model.cell.step(params, x, states[-1]))
    return states


@pytest.mark.parametrize("cell_name", ["vanilla-tanh", "lstm", "gru"])
@pytest.mark.parametrize("k1,k2", [(1, 1), (1, 3), (2, 2), (2, 5), (3, 4), (4, 7), (5, 11)])
def test_truncated_is_tbptt_k1_k2_window_by_window(rng, cell_name, k1, k2):
    """With k2 < T the result is Williams & Peng's biased gradient, rebuilt independently:
    at each update point t, the reference on the window of steps (max(0, t − k2), t],
    entered from the true (constant) state, counting only the losses since the last update.
    """
    T = 12
    model, params, xs, ys, mask, h0 = _problem(rng, cell_name, "mse", T)
    states = _states_at_boundaries(model, params, xs, h0)
    points = sorted(set(range(k1, T + 1, k1)) | {T})
    loss, grads = 0.0, {k: np.zeros_like(v) for k, v in params.items()}
    grad_h0 = tuple(np.zeros_like(a) for a in h0)
    last = 0
    for t in points:
        first = max(0, t - k2)
        window_mask = mask[first:t].copy()
        window_mask[: max(0, last - first)] = 0.0  # steps before the last update: no loss
        l, g, gh = bm.reference_gradients(model, params, xs[first:t], ys[first:t],
                                          h0=states[first], mask=window_mask)
        loss += l
        for k in grads:
            grads[k] += g[k]
        if first == 0:
            grad_h0 = tuple(a + b for a, b in zip(grad_h0, gh))
        last = t
    res = bm.truncated(k1, k2).run(model, params, xs, ys, h0=h0, mask=mask)
    _assert_same(res, loss, grads, grad_h0)


@pytest.mark.parametrize("name", sorted(bm.STRATEGIES))
def test_numpy_integer_arguments_work_like_python_ints(rng, name):
    """The factories accept np.integer (their checks say so); runs must then work too."""
    T = 13
    model, params, xs, ys, mask, h0 = _problem(rng, "gru", "mse", T)
    for strategy in _exact_configs(name, model.cell, B, T):
        fields = dict(vars(strategy))
        if not fields or any(v is None for v in fields.values()):
            continue
        as_numpy = type(strategy)(**{k: np.int64(v) for k, v in fields.items()})
        a = strategy.run(model, params, xs, ys, h0=h0, mask=mask)
        b = as_numpy.run(model, params, xs, ys, h0=h0, mask=mask)
        assert a.loss == b.loss, strategy.name
        assert all(np.array_equal(a.grads[k], b.grads[k]) for k in params), strategy.name


@pytest.mark.parametrize("cell_name", ["vanilla-tanh", "lstm", "gru"])
def test_truncated_stream_updates_sum_to_the_exact_gradient_when_k2_ge_T(rng, cell_name):
    T = 10
    model, params, xs, ys, mask, h0 = _problem(rng, cell_name, "mse", T)
    ref_loss, ref_grads, ref_h0 = bm.reference_gradients(model, params, xs, ys, h0=h0, mask=mask)
    updates = list(bm.truncated(3, T).stream(model, params, zip(xs, ys, mask), h0=h0))
    assert [u.t for u in updates] == [3, 6, 9, 10]
    assert abs(sum(u.loss for u in updates) - ref_loss) <= TOL * abs(ref_loss)
    for k in params:
        assert _rel(sum(u.grads[k] for u in updates), ref_grads[k]) <= TOL, k
    for i, n in enumerate(model.cell.state_names):
        assert _rel(sum(u.grad_h0[i] for u in updates), ref_h0[i]) <= TOL, n


# ---- what each strategy held and did


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("cell_name", sorted(CELLS))
@pytest.mark.parametrize("T", [1, 13])
def test_full_stats_are_exact(rng, cell_name, T, dtype):
    model, params, xs, ys, mask, h0 = _problem(rng, cell_name, "mse", T, dtype)
    stats = bm.full().run(model, params, xs, ys, h0=h0, mask=mask).stats
    cell = model.cell
    assert stats.forward_steps == stats.backward_steps == T
    # every step after the first links to the step before (NOTE [linked steps])
    assert stats.peak_bytes == (T * cell.residual_bytes(B, dtype)
                                - (T - 1) * cell.link_bytes(B, dtype))
    assert stats.peak_bytes == cell.recorded_bytes(T, B, dtype)
    assert stats.peak_residuals == T and stats.peak_states == 0
    assert stats.residual_bytes == cell.residual_bytes(B, dtype)
    assert stats.link_bytes == cell.link_bytes(B, dtype)
    assert stats.state_bytes == cell.state_bytes(B, dtype)
    assert stats.traced_peak_bytes is None and stats.traced_allowance is None
    assert stats.seconds >= 0.0


@pytest.mark.parametrize("name", sorted(set(bm.STRATEGIES) - {"truncated"}))
@pytest.mark.parametrize("cell_name", ["vanilla-tanh", "lstm", "gru"])
def test_scheduled_stats_are_what_the_simulator_predicts(rng, name, cell_name):
    T = 13
    model, params, xs, ys, mask, h0 = _problem(rng, cell_name, "mse", T)
    sizes = model.cell.sizes(B, np.float64)
    sb, rb = sizes["state_bytes"], sizes["residual_bytes"]
    for strategy in _exact_configs(name, model.cell, B, T):
        stats = strategy.run(model, params, xs, ys, h0=h0, mask=mask).stats
        cost = bm.simulate(strategy.schedule(T, **sizes), n_steps=T, **sizes)
        assert stats.backward_steps == T, strategy.name
        assert stats.forward_steps == cost.forward_steps, strategy.name
        assert stats.peak_bytes == cost.peak_bytes, strategy.name
        assert (stats.peak_states, stats.peak_residuals) == (cost.peak_states, cost.peak_residuals)
        assert stats.peak_bytes <= stats.peak_states * sb + stats.peak_residuals * rb
        if isinstance(strategy, bm.Optimal):
            assert stats.peak_bytes <= strategy.budget_bytes, strategy.name
        if isinstance(strategy, bm.Optimal):
            assert stats.forward_steps == strategy.forward_steps(T, **sizes), strategy.name
        if isinstance(strategy, bm.Binomial):
            assert stats.peak_states <= strategy.slots and stats.peak_residuals == 1, strategy.name
            assert stats.forward_steps == bm.binomial_forward_steps(T, strategy.slots), (
                strategy.name)
        priced = strategy.cost(T, **sizes)  # every strategy prices itself the same way
        assert (priced.forward_steps, priced.backward_steps, priced.peak_states,
                priced.peak_residuals, priced.peak_bytes) == (
            cost.forward_steps, cost.backward_steps, cost.peak_states, cost.peak_residuals,
            cost.peak_bytes), strategy.name
        if isinstance(strategy, bm.Uniform):  # the formulas in uniform's docstring
            k = strategy.segment(T)
            m = -(-T // k)
            assert stats.forward_steps == T + k * (m - 1) == strategy.forward_steps(T), (
                strategy.name)
            assert stats.peak_states == max(0, m - 2), strategy.name
            assert stats.peak_residuals == min(k, T), strategy.name
            assert stats.peak_bytes == strategy.peak_bytes(T, **sizes), strategy.name


@pytest.mark.parametrize("cell_name", ["vanilla-tanh", "lstm", "gru"])
@pytest.mark.parametrize("k1,k2", [(1, 1), (2, 5), (4, 4), (3, 20)])
def test_truncated_stats(rng, cell_name, k1, k2):
    T = 13
    model, params, xs, ys, mask, h0 = _problem(rng, cell_name, "mse", T)
    stats = bm.truncated(k1, k2).run(model, params, xs, ys, h0=h0, mask=mask).stats
    points = sorted(set(range(k1, T + 1, k1)) | {T})
    assert stats.forward_steps == T
    assert stats.backward_steps == sum(min(k2, t) for t in points)
    assert stats.peak_bytes == min(k2, T) * model.cell.residual_bytes(B, np.float64)
    assert stats.peak_states == 0


def _traced_configs(cell, batch, T):
    rb = cell.residual_bytes(batch, np.float64)
    return [bm.full(), bm.truncated(5, 10), bm.uniform(), bm.uniform(every=8), bm.binomial(4),
            bm.optimal(budget_bytes=6 * rb), bm.online(4)]


@pytest.mark.parametrize("cell_name", ["vanilla-tanh", "lstm", "gru"])
def test_traced_memory_brackets_the_accounted_peak(rng, cell_name):
    T, batch, hidden = 40, 16, 32
    model, params, xs, ys, mask, h0 = _problem(rng, cell_name, "cross_entropy", T, batch=batch,
                                               n_in=8, hidden=hidden)
    configs = _traced_configs(model.cell, batch, T)
    registered = {type(_exact_configs(n, model.cell, batch, T)[0]) for n in bm.STRATEGIES}
    assert {type(s) for s in configs} == registered  # every registered strategy is traced
    assert not tracemalloc.is_tracing()
    for strategy in configs:
        stats = strategy.run(model, params, xs, ys, h0=h0, mask=mask, trace_memory=True).stats
        assert not tracemalloc.is_tracing()  # left as it was found
        assert stats.traced_peak_bytes is not None and stats.traced_allowance is not None
        assert stats.peak_bytes > 0
        assert (stats.peak_bytes <= stats.traced_peak_bytes
                <= stats.peak_bytes + stats.traced_allowance), (
            strategy.name, stats.peak_bytes, stats.traced_peak_bytes, stats.traced_allowance)


def test_trace_memory_does_not_change_the_result(rng):
    model, params, xs, ys, mask, h0 = _problem(rng, "lstm", "mse", 9)
    for name in sorted(bm.STRATEGIES):
        strategy = _exact_configs(name, model.cell, B, 9)[1 if name != "full" else 0]
        a = strategy.run(model, params, xs, ys, h0=h0, mask=mask)
        b = strategy.run(model, params, xs, ys, h0=h0, mask=mask, trace_memory=True)
        assert a.loss == b.loss and all(np.array_equal(a.grads[k], b.grads[k]) for k in params)
        assert b.stats.peak_bytes == a.stats.peak_bytes


# ---- the executor on hand-written schedules


def test_execute_runs_a_valid_hand_written_schedule_exactly(rng):
    T = 5
    model, params, xs, ys, mask, h0 = _problem(rng, "lstm", "mse", T)
    plan = (bm.Advance(0, 2), bm.Store(2), bm.Record(2, 5), bm.Reverse(2, 5), bm.Restore(0),
            bm.Record(0, 2), bm.Reverse(0, 2), bm.Free(2))
    res = bm.execute(plan, model, params, xs, ys, h0=h0, mask=mask)
    _assert_matches_reference(res, model, params, xs, ys, h0, mask)
    rb, sb = model.cell.residual_bytes(B, np.float64), model.cell.state_bytes(B, np.float64)
    lb = model.cell.link_bytes(B, np.float64)
    assert res.stats.forward_steps == 7 and res.stats.backward_steps == 5
    # the state at 2 and steps 2, 3, 4 held at once; 3 and 4 link to the step before
    assert res.stats.peak_bytes == sb + 3 * rb - 2 * lb


@pytest.mark.parametrize("cell_name", ["vanilla-tanh", "lstm", "gru"])
def test_execute_links_a_step_only_to_a_step_held_when_it_is_recorded(rng, cell_name):
    """NOTE [linked steps]: step 1 is recorded before step 0, so neither links; step 2,
    recorded after step 1 from a restored state, links to it."""
    T = 4
    model, params, xs, ys, mask, h0 = _problem(rng, cell_name, "mse", T)
    plan = (bm.Advance(0, 3), bm.Record(3, 4), bm.Reverse(3, 4), bm.Restore(0), bm.Advance(0, 1),
            bm.Record(1, 2), bm.Store(2), bm.Restore(0), bm.Record(0, 1), bm.Restore(2),
            bm.Record(2, 3), bm.Reverse(0, 3), bm.Free(2))
    sizes = model.cell.sizes(B, np.float64)
    sb, rb, lb = sizes["state_bytes"], sizes["residual_bytes"], sizes["link_bytes"]
    res = bm.execute(plan, model, params, xs, ys, h0=h0, mask=mask, trace_memory=True)
    assert res.stats.peak_bytes == bm.simulate(plan, n_steps=T, **sizes).peak_bytes
    assert res.stats.peak_bytes == sb + 3 * rb - lb
    assert res.stats.traced_peak_bytes >= res.stats.peak_bytes
    _assert_matches_reference(res, model, params, xs, ys, h0, mask)


T_BAD = 5
INVALID_SCHEDULES = {
    "reverse before record": (bm.Reverse(0, T_BAD),),
    "never reversed": (bm.Record(0, T_BAD),),
    "half reversed": (bm.Record(0, T_BAD), bm.Reverse(2, T_BAD)),
    "past T": (bm.Record(0, T_BAD + 1), bm.Reverse(0, T_BAD + 1)),
    "short of T": (bm.Record(0, T_BAD - 1), bm.Reverse(0, T_BAD - 1)),
    "reverse out of order": (bm.Record(0, T_BAD), bm.Reverse(0, 2), bm.Reverse(2, T_BAD)),
    "advance from the wrong place": (bm.Advance(1, 3), bm.Record(3, T_BAD), bm.Reverse(0, T_BAD)),
    "restore never stored": (bm.Advance(0, 2), bm.Restore(3), bm.Record(0, T_BAD),
                             bm.Reverse(0, T_BAD)),
    "store never freed": (bm.Advance(0, 2), bm.Store(2), bm.Record(2, T_BAD), bm.Reverse(2, T_BAD),
                          bm.Restore(0), bm.Record(0, 2), bm.Reverse(0, 2)),
    "store h0": (bm.Store(0), bm.Record(0, T_BAD), bm.Reverse(0, T_BAD), bm.Free(0)),
    "record twice": (bm.Record(0, T_BAD), bm.Restore(0), bm.Record(0, 1), bm.Reverse(0, T_BAD)),
    "not an action": (bm.Record(0, T_BAD), "reverse", bm.Reverse(0, T_BAD)),
}


@pytest.mark.parametrize("case", sorted(INVALID_SCHEDULES))
def test_execute_rejects_an_invalid_schedule_before_any_work(rng, monkeypatch, case):
    model, params, xs, ys, mask, h0 = _problem(rng, "gru", "mse", T_BAD)

    def no_work(*args, **kwargs):
        raise AssertionError("a step ran before the schedule was rejected")

    for name in ("step", "record", "vjp", "residual_output", "enter", "kernels"):
        monkeypatch.setattr(bm.cells.Gated, name, no_work)
    with pytest.raises(bm.ScheduleError, match="schedule"):
        bm.execute(INVALID_SCHEDULES[case], model, params, xs, ys, h0=h0, mask=mask)
    # the same schedule as a one-shot generator is rejected the same way
    with pytest.raises(bm.ScheduleError):
        bm.execute(iter(INVALID_SCHEDULES[case]), model, params, xs, ys, h0=h0, mask=mask)
    # and the guard does bite on a valid schedule
    with pytest.raises(AssertionError, match="before the schedule"):
        bm.execute((bm.Record(0, T_BAD), bm.Reverse(0, T_BAD)), model, params, xs, ys)


def test_execute_checks_its_inputs_first(rng):
    model, params, xs, ys, mask, h0 = _problem(rng, "gru", "mse", 5)
    with pytest.raises(ValueError, match="^xs"):
        bm.execute((bm.Record(0, 5), bm.Reverse(0, 5)), model, params, xs[:, :, :-1], ys)


# ---- the plan memo (NOTE [plan memo])


def test_plan_memo_keeps_short_plans_and_only_the_cost_of_long_ones():
    from bptt_memory.strategies import _PlanMemo

    sizes = bm.gru(2, 3).sizes(4, np.float64)
    memo = _PlanMemo(max_entries=2, max_actions=40)
    short, long_ = bm.binomial(2), bm.binomial(1)
    actions, cost = memo.get(short, 6, sizes)
    assert actions == short.schedule(6)
    assert cost == bm.simulate(short.schedule(6), n_steps=6, **sizes)
    assert memo.get(short, 6, sizes)[0] is actions  # planned once
    actions, cost = memo.get(long_, 30, sizes)  # 1 slot at T = 30: hundreds of actions
    assert actions is None and cost == bm.simulate(long_.schedule(30), n_steps=30, **sizes)
    memo.get(bm.binomial(3), 6, sizes)  # a third entry pushes out the oldest
    assert memo.get(short, 6, sizes)[0] is not actions


def test_a_strategy_that_cannot_be_hashed_is_planned_every_time(rng):
    @dataclasses.dataclass(eq=True)  # not frozen: no __hash__
    class Plain(bm.ScheduledStrategy):
        name = "plain"

        def iter_schedule(self, n_steps, state_bytes=None, residual_bytes=None, link_bytes=0):
            return iter((bm.Record(0, n_steps), bm.Reverse(0, n_steps)))

    model, params, xs, ys, mask, h0 = _problem(rng, "lstm", "mse", 4)
    res = Plain().run(model, params, xs, ys, h0=h0, mask=mask)
    ref = bm.full().run(model, params, xs, ys, h0=h0, mask=mask)
    assert res.loss == ref.loss and res.stats.peak_bytes == ref.stats.peak_bytes


@pytest.mark.parametrize("cell_name", ["vanilla-tanh", "lstm", "gru"])
def test_workspace_is_the_chunk_buffers_whatever_the_strategy_and_T(rng, cell_name):
    """Stats.workspace_bytes: the executor's reused buffers, counted exactly, beside
    (not in) peak_bytes: CHUNK_STEPS steps of inputs (with a 1 for the bias row) and of
    their projections, of dL/dxp rows (and, for the GRU, of dL/d(h·W_hhᵀ) rows), of
    h_prev, h, dL/dh and dL/do rows, and a 1 per row to sum rows with."""
    from bptt_memory.engine import CHUNK_STEPS

    seen = set()
    for T in (20, 45):
        model, params, xs, ys, mask, h0 = _problem(rng, cell_name, "mse", T)
        cell = model.cell
        G, H, I, O = cell.n_gates, cell.n_hidden, cell.n_in, model.n_out
        gated = 2 if cell.kind == "gru" else 1  # dxp, and GRU's separate dhp rows
        # ... and a 1 per row for the readout's sums too
        expected = CHUNK_STEPS * B * ((I + 1) + (1 + gated) * G * H + 3 * H + O + 2) * 8
        for strategy in (bm.full(), bm.binomial(2), bm.uniform()):
            seen.add(strategy.run(model, params, xs, ys, h0=h0, mask=mask).stats.workspace_bytes)
        assert seen == {expected}


@pytest.mark.parametrize("cell_name", ["vanilla-tanh", "lstm", "gru"])
def test_single_step_reversals_read_out_many_steps_per_product(rng, monkeypatch, cell_name):
    """NOTE [readout rows] in engine.py: binomial and optimal reverse one step at a time,
    but the outputs their forward passes go through are kept for the readout, so it runs
    at least 4 steps per product on average (one step per product is what reading each
    reversed step off its own residuals costs), every step is read out exactly once, and
    the gradients are still the reference's."""
    from bptt_memory import engine

    read_out = []  # steps per readout product
    real = engine._Readout.read

    def spy(self, r0, r1, y, scale):
        read_out.append(y.shape[0])
        return real(self, r0, r1, y, scale)

    monkeypatch.setattr(engine._Readout, "read", spy)
    T = 64
    model, params, xs, ys, mask, h0 = _problem(rng, cell_name, "mse", T)
    budget = model.cell.recorded_bytes(T, B, np.float64) // 10
    for strategy in (bm.binomial(slots=2), bm.binomial(slots=8), bm.optimal(budget_bytes=budget)):
        read_out.clear()
        res = strategy.run(model, params, xs, ys, h0=h0, mask=mask)
        assert sum(read_out) == T, strategy.name
        assert len(read_out) <= T / 4, (strategy.name, read_out)
        _assert_matches_reference(res, model, params, xs, ys, h0, mask, strategy.name)


def test_the_executor_refuses_to_reverse_a_step_out_of_order(rng):
    """The executor's windows assume steps are reversed last first (execute's schedules
    are checked for that by simulate); a direct caller who skips ahead gets a clear
    error, not a wrong loss."""
    from bptt_memory.engine import _Run

    T = 40
    model, params, xs, ys, mask, h0 = _problem(rng, "lstm", "mse", T)
    run = _Run(model, params, xs, ys, mask, links=True)
    run.record(h0, 0, 1)
    with pytest.raises(ValueError, match="reverse every step, last first"):
        run.reverse(0, 1, tuple(np.zeros_like(a) for a in h0))


@pytest.mark.parametrize("sizes", [(2, 7, 1), (1, 2, 1), (1, 5, 0)], ids=["lstm", "vanilla", "gru"])
def test_best_uniform_is_the_fewest_forward_steps_that_fit(sizes):
    """Against every k, each priced by the simulator walking its schedule."""
    sb, rb, lb = sizes
    kw = dict(state_bytes=sb, residual_bytes=rb, link_bytes=lb)
    for T in (1, 7, 30):
        costs = {k: bm.simulate(bm.uniform(k).schedule(T), n_steps=T, **kw)
                 for k in range(1, T + 1)}
        for budget in range(rb, bm.uniform(T).peak_bytes(T, **kw) + 2):
            fits = {k: (c.forward_steps, c.peak_bytes) for k, c in costs.items()
                    if c.peak_bytes <= budget}
            chosen = bm.best_uniform(T, budget, **kw)
            if not fits:
                assert chosen is None, (T, budget)
                continue
            best = costs[chosen.every]
            assert (best.forward_steps, best.peak_bytes) == min(fits.values())


def _best_uniform_by_every_k(T, budget, sb, rb, lb):
    """The old loop over every k, from uniform's closed forms: the oracle for the O(√T) jump."""
    best = None
    for k in range(1, T + 1):
        u = bm.uniform(k)
        peak = u.peak_bytes(T, sb, rb, lb)
        if peak <= budget:
            key = (u.forward_steps(T), peak, k)
            best = key if best is None or key < best else best
    return None if best is None else best[2]


@settings(max_examples=200, deadline=None)
@given(T=st.integers(1, 400), sb=st.integers(1, 9), rb=st.integers(1, 30), data=st.data())
def test_best_uniform_jumps_to_the_same_k_as_a_loop_over_every_k(T, sb, rb, data):
    lb = data.draw(st.integers(0, rb - 1), label="link")
    budget = data.draw(st.integers(1, rb * T + sb * 30), label="budget")
    chosen = bm.best_uniform(T, budget, sb, rb, lb)
    assert ((None if chosen is None else chosen.every)
            == _best_uniform_by_every_k(T, budget, sb, rb, lb))


def test_best_uniform_answers_a_billion_steps_at_once():
    import time

    start = time.perf_counter()
    u = bm.best_uniform(10**9, 2**40, 131072, 458752, 65536)
    assert u is not None and u.peak_bytes(10**9, 131072, 458752, 65536) <= 2**40
    assert time.perf_counter() - start < 10  # O(√T) candidates, not 10⁹ (not a timing test)


@pytest.mark.parametrize("cell_name", ["vanilla-tanh", "lstm", "gru"])
@pytest.mark.parametrize("k1,k2", [(1, 1), (2, 5), (4, 4), (3, 20), (5, 3 * 5), (13, 13)])
def test_truncated_cost_is_what_a_run_measures(rng, cell_name, k1, k2):
    if k2 < k1:
        return
    T = 13
    model, params, xs, ys, mask, h0 = _problem(rng, cell_name, "mse", T)
    sizes = model.cell.sizes(B, np.float64)
    stats = bm.truncated(k1, k2).run(model, params, xs, ys, h0=h0, mask=mask).stats
    cost = bm.truncated(k1, k2).cost(T, **sizes)
    assert (cost.forward_steps, cost.backward_steps, cost.peak_residuals, cost.peak_bytes) == (
        stats.forward_steps, stats.backward_steps, stats.peak_residuals, stats.peak_bytes)
    assert cost.peak_states == 0


def test_truncated_cost_needs_no_loop_over_the_steps():
    cost = bm.truncated(10, 100).cost(10**12)
    # update points 10, 20, …: windows 10, 20, …, 100, then 100 each
    assert cost.backward_steps == sum(range(10, 101, 10)) + (10**11 - 10) * 100
    assert cost.peak_residuals == 100 and cost.peak_bytes is None


@pytest.mark.parametrize("strategy", [bm.full(), bm.uniform(every=7), bm.binomial(3)])
def test_closed_form_costs_equal_simulate(strategy):
    kw = dict(state_bytes=5, residual_bytes=17, link_bytes=4)
    for T in (1, 2, 3, 8, 50, 333):
        priced = strategy.cost(T, **kw)
        walked = bm.simulate(strategy.iter_schedule(T), n_steps=T, **kw)
        assert (dataclasses.replace(priced, actions=None)
                == dataclasses.replace(walked, actions=None))
        assert priced.actions in (None, walked.actions)
        assert strategy.cost(T).peak_bytes is None
