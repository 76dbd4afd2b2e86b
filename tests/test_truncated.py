"""TBPTT(k1, k2): `truncated().run` and `Truncated.stream` against the definition.

NOTE [tbptt definition under test] Steps are numbered 1 … T. Update points are
t = k1, 2·k1, …, and T when T is not a multiple of k1. At update point t the losses of
steps (previous update point, t] are backpropagated through steps (max(0, t − k2), t];
the state entering that window is a constant. `run` returns the sum of all updates at
the same params; grad_h0 sums the windows that reach h0.

Two independent implementations of that definition are checked against the library:
one in numpy (a plain forward, then `bm.reference_gradients` on each window's
sub-problem, with the losses outside (previous, t] masked out), which always runs, and
one in torch with ``.detach()``, skipped when torch is absent.
"""

import itertools
import tracemalloc

import numpy as np
import pytest

import bptt_memory as bm

TOL = 1e-10
N_IN, N_OUT = 3, 4
KINDS = ("vanilla", "lstm", "gru")
# (T, k1, k2): k1 < k2 and k1 = k2, T a multiple of k1 and not, k2 > T, k1 > T, k1 = 1.
WINDOWS = [
    (12, 3, 5),   # k1 < k2, T multiple of k1
    (13, 3, 5),   # k1 < k2, T not a multiple of k1
    (12, 4, 4),   # k1 = k2, multiple
    (14, 4, 4),   # k1 = k2, not a multiple
    (10, 1, 3),   # an update after every step
    (9, 2, 20),   # k2 > T: every window reaches h0
    (5, 8, 8),    # k1 > T: one update, at T
    (11, 5, 11),  # k2 = T
]


def _update_points(T: int, k1: int) -> list[int]:
    points = list(range(k1, T + 1, k1))
    if T % k1:
        points.append(T)
    return points


def _window_sizes(T: int, k1: int, k2: int) -> list[int]:
    return [t - max(0, t - k2) for t in _update_points(T, k1)]


def _model(kind: str, H: int, loss: str = "mse") -> bm.Model:
    cell = {"vanilla": bm.vanilla, "lstm": bm.lstm, "gru": bm.gru}[kind](N_IN, H)
    return bm.Model(cell, n_out=N_OUT, loss=loss)


def _problem(kind: str, T: int, B: int, H: int, seed: int, loss: str = "mse"):
    """Random model, params, data, a mask with zeros and fractional weights, non-zero h0."""
    rng = np.random.default_rng(seed)
    model = _model(kind, H, loss)
    params = model.init(rng)
    xs = rng.standard_normal((T, B, N_IN))
    if loss == "mse":
        ys = rng.standard_normal((T, B, N_OUT))
    else:
        ys = rng.integers(0, N_OUT, size=(T, B))
    mask = rng.uniform(0.2, 1.5, size=(T, B)) * (rng.random((T, B)) < 0.75)
    h0 = tuple(0.5 * rng.standard_normal((B, H)) for _ in model.cell.state_names)
    return model, params, xs, ys, mask, h0


def _assert_rel(actual, expected, what: str, tol: float = TOL) -> None:
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} vs {expected.shape}"
    scale = np.linalg.norm(expected)
    if scale == 0.0:
        assert not actual.any(), f"{what}: expected exactly zero, got {actual}"
        return
    err = np.linalg.norm(actual - expected) / scale
    assert err <= tol, f"{what}: relative error {err:.3e} > {tol:.0e}"


def _assert_same_result(res, loss, grads, grad_h0, where: str, tol: float = TOL) -> None:
    _assert_rel(res.loss, loss, f"{where}: loss", tol)
    assert set(res.grads) == set(grads)
    for name in grads:
        _assert_rel(res.grads[name], grads[name], f"{where}: grads[{name!r}]", tol)
    assert isinstance(res.grad_h0, tuple) and len(res.grad_h0) == len(grad_h0)
    for ours, theirs in zip(res.grad_h0, grad_h0):
        _assert_rel(ours, theirs, f"{where}: grad_h0", tol)


# -- the numpy implementation of the definition -----------------------------------------


def _sig(z):
    return 1.0 / (1.0 + np.exp(-z))


def _states(model: bm.Model, params: dict, xs: np.ndarray, h0: tuple) -> list[tuple]:
    """states[s] = the state after step s (states[0] = h0), by a plain numpy forward."""
    kind, H = model.cell.kind, model.cell.n_hidden
    W_ih, W_hh, b_ih, b_hh = (params[k] for k in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"))
    out = [h0]
    state = h0
    for x in xs:
        h = state[0]
        if kind == "vanilla":
            state = (np.tanh(x @ W_ih.T + b_ih + h @ W_hh.T + b_hh),)
        elif kind == "lstm":
            a = x @ W_ih.T + b_ih + h @ W_hh.T + b_hh
            i, f, g, o = _sig(a[:, :H]), _sig(a[:, H:2*H]), np.tanh(a[:, 2*H:3*H]), _sig(a[:, 3*H:])
            c = f * state[1] + i * g
            state = (o * np.tanh(c), c)
        else:
            gi, gh = x @ W_ih.T + b_ih, h @ W_hh.T + b_hh
            r, z = _sig(gi[:, :H] + gh[:, :H]), _sig(gi[:, H:2*H] + gh[:, H:2*H])
            n = np.tanh(gi[:, 2*H:] + r * gh[:, 2*H:])
            state = ((1 - z) * n + z * h,)
        out.append(state)
    return out


def _tbptt_numpy(model, params, xs, ys, mask, h0, k1, k2):
    """The definition, window by window, with `reference_gradients` on each sub-problem."""
    T = xs.shape[0]
    states = _states(model, params, xs, h0)
    loss, grads = 0.0, {k: np.zeros_like(v) for k, v in params.items()}
    grad_h0 = tuple(np.zeros_like(a) for a in h0)
    last = 0
    for t in _update_points(T, k1):
        first = max(0, t - k2)  # window: steps first+1 … t, rows first … t-1
        sub_mask = mask[first:t].copy()
        sub_mask[: max(0, last - first)] = 0.0  # steps <= last had their loss already
        l, g, gh0 = bm.reference_gradients(model, params, xs[first:t], ys[first:t],
                                           h0=states[first], mask=sub_mask)
        loss += l
        for k in grads:
            grads[k] += g[k]
        if first == 0:  # otherwise the window starts from a constant
            grad_h0 = tuple(a + b for a, b in zip(grad_h0, gh0))
        last = t
    return loss, grads, grad_h0


@pytest.mark.parametrize("T,k1,k2", WINDOWS)
@pytest.mark.parametrize("kind", KINDS)
def test_run_matches_numpy_definition(kind, T, k1, k2):
    model, params, xs, ys, mask, h0 = _problem(kind, T, 3, 5, seed=T * 100 + k1 * 10 + k2)
    res = bm.truncated(k1, k2).run(model, params, xs, ys, h0=h0, mask=mask)
    expected = _tbptt_numpy(model, params, xs, ys, mask, h0, k1, k2)
    _assert_same_result(res, *expected, f"truncated({k1}, {k2}) {kind} T={T}")


@pytest.mark.parametrize("kind", KINDS)
def test_run_matches_numpy_definition_cross_entropy(kind):
    T, k1, k2 = 13, 3, 5
    model, params, xs, ys, mask, h0 = _problem(kind, T, 2, 4, seed=5, loss="cross_entropy")
    res = bm.truncated(k1, k2).run(model, params, xs, ys, h0=h0, mask=mask)
    expected = _tbptt_numpy(model, params, xs, ys, mask, h0, k1, k2)
    _assert_same_result(res, *expected, f"truncated({k1}, {k2}) {kind} cross_entropy")


def test_numpy_definition_is_not_the_exact_gradient():
    """Guard against a vacuous definition: with k2 < T the gradient must be biased."""
    model, params, xs, ys, mask, h0 = _problem("lstm", 12, 3, 5, seed=0)
    loss, grads, _ = _tbptt_numpy(model, params, xs, ys, mask, h0, 3, 3)
    exact_loss, exact, _ = bm.reference_gradients(model, params, xs, ys, h0=h0, mask=mask)
    assert abs(loss - exact_loss) <= 1e-12 * abs(exact_loss)  # the loss is never truncated
    assert np.linalg.norm(grads["weight_hh"] - exact["weight_hh"]) > 1e-6


# -- the torch implementation of the definition -----------------------------------------


@pytest.fixture
def torch():
    return pytest.importorskip("torch")


def _tbptt_torch(torch, model, params, xs, ys, mask, h0, k1, k2):
    """For each update point: forward from h0, detach at step t − k2, backprop (last, t]."""
    F = torch.nn.functional
    kind, I, H = model.cell.kind, model.cell.n_in, model.cell.n_hidden
    rnn = {"vanilla": torch.nn.RNN, "lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[kind](I, H).double()
    readout = torch.nn.Linear(H, model.n_out).double()
    with torch.no_grad():
        for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            getattr(rnn, f"{name}_l0").copy_(torch.from_numpy(params[name]))
        readout.weight.copy_(torch.from_numpy(params["weight_out"]))
        readout.bias.copy_(torch.from_numpy(params["bias_out"]))
    T, B = xs.shape[:2]
    x_all = torch.tensor(xs, dtype=torch.float64)
    y_all = torch.tensor(ys, dtype=torch.float64 if model.loss == "mse" else torch.int64)
    m_all = torch.tensor(mask, dtype=torch.float64)
    h0_t = tuple(torch.tensor(a[None], dtype=torch.float64, requires_grad=True) for a in h0)

    def as_state(s):
        return s if kind == "lstm" else s[0]

    def as_tuple(s):
        return s if kind == "lstm" else (s,)

    loss_total, last = 0.0, 0
    for t in _update_points(T, k1):
        first = max(0, t - k2)
        state = h0_t
        if first > 0:
            _, s = rnn(x_all[:first], as_state(h0_t))
            state = tuple(a.detach() for a in as_tuple(s))
        hs, _ = rnn(x_all[first:t], as_state(state))
        o = readout(hs[last - first if last > first else 0:])
        y, m = y_all[max(last, first):t], m_all[max(last, first):t]
        if model.loss == "mse":
            per = F.mse_loss(o, y, reduction="none").mean(-1)
        else:
            per = F.cross_entropy(o.reshape(-1, model.n_out), y.reshape(-1),
                                  reduction="none").reshape(o.shape[:2])
        loss = (per * m).sum() / B
        loss.backward()  # .grad accumulates: the sum over update points at the same params
        loss_total += loss.item()
        last = t
    grads = {name: getattr(rnn, f"{name}_l0").grad.numpy()
             for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")}
    grads["weight_out"] = readout.weight.grad.numpy()
    grads["bias_out"] = readout.bias.grad.numpy()
    grad_h0 = tuple(np.zeros_like(a) if a.grad is None else a.grad[0].numpy() for a in h0_t)
    return loss_total, grads, grad_h0


@pytest.mark.parametrize("T,k1,k2", WINDOWS)
@pytest.mark.parametrize("kind", KINDS)
def test_run_matches_torch_detach(torch, kind, T, k1, k2):
    model, params, xs, ys, mask, h0 = _problem(kind, T, 2, 4, seed=T * 7 + k1 + k2)
    res = bm.truncated(k1, k2).run(model, params, xs, ys, h0=h0, mask=mask)
    expected = _tbptt_torch(torch, model, params, xs, ys, mask, h0, k1, k2)
    _assert_same_result(res, *expected, f"truncated({k1}, {k2}) {kind} T={T} vs torch")


@pytest.mark.parametrize("kind", KINDS)
def test_run_matches_torch_detach_cross_entropy(torch, kind):
    T, k1, k2 = 14, 4, 6
    model, params, xs, ys, mask, h0 = _problem(kind, T, 3, 5, seed=9, loss="cross_entropy")
    res = bm.truncated(k1, k2).run(model, params, xs, ys, h0=h0, mask=mask)
    expected = _tbptt_torch(torch, model, params, xs, ys, mask, h0, k1, k2)
    _assert_same_result(res, *expected, f"truncated({k1}, {k2}) {kind} cross_entropy vs torch")


# -- k2 >= T is exact -------------------------------------------------------------------


@pytest.mark.parametrize("k1,k2", [(1, 9), (2, 9), (4, 9), (9, 9), (3, 50), (50, 50)])
@pytest.mark.parametrize("kind", KINDS)
def test_k2_at_least_T_equals_full(kind, k1, k2):
    T = 9
    model, params, xs, ys, mask, h0 = _problem(kind, T, 2, 4, seed=k1 + k2)
    exact = bm.full().run(model, params, xs, ys, h0=h0, mask=mask)
    res = bm.truncated(k1, k2).run(model, params, xs, ys, h0=h0, mask=mask)
    _assert_same_result(res, exact.loss, exact.grads, exact.grad_h0,
                        f"truncated({k1}, {k2}) {kind}", tol=1e-12)


# -- stats ------------------------------------------------------------------------------


@pytest.mark.parametrize("T,k1,k2", WINDOWS)
def test_stats_count_steps_and_ring_bytes(T, k1, k2):
    model, params, xs, ys, mask, h0 = _problem("lstm", T, 3, 5, seed=1)
    s = bm.truncated(k1, k2).run(model, params, xs, ys, h0=h0, mask=mask).stats
    rb = model.cell.residual_bytes(3, np.float64)
    assert s.residual_bytes == rb
    assert s.state_bytes == model.cell.state_bytes(3, np.float64)
    assert s.peak_residuals == min(k2, T)
    assert s.peak_bytes == min(k2, T) * rb
    assert s.forward_steps == T
    assert s.backward_steps == sum(_window_sizes(T, k1, k2))


def test_peak_bytes_do_not_grow_with_T(rng):
    """O(k2) memory: the same ring for T = 100 and T = 10 000, exactly and traced."""
    model = bm.Model(bm.vanilla(1, 2), n_out=1)
    params = model.init(rng)
    strategy = bm.truncated(4, 8)
    data = {T: (rng.standard_normal((T, 1, 1)), rng.standard_normal((T, 1, 1)))
            for T in (100, 3_000, 10_000)}
    stats = {T: strategy.run(model, params, *data[T]).stats for T in (100, 10_000)}
    for T, s in stats.items():
        assert s.peak_bytes == 8 * model.cell.residual_bytes(1, np.float64)
        assert s.peak_residuals == 8
        assert s.forward_steps == T
        assert s.backward_steps == sum(_window_sizes(T, 4, 8))
    assert stats[100].peak_bytes == stats[10_000].peak_bytes
    # NOTE [cold interpreter] The first few thousand steps in a fresh process fill
    # CPython's free list of 1-tuples (2 000 × 48 B, still traced by tracemalloc), a
    # one-time ~96 KB that is no part of the strategy; the T = 10 000 run above has
    # warmed it up, so the traced peaks below see only what a run holds.
    traced = {T: strategy.run(model, params, *data[T], trace_memory=True).stats
              for T in (100, 3_000)}
    for s in traced.values():
        assert s.peak_bytes <= s.traced_peak_bytes <= s.peak_bytes + s.traced_allowance
    assert traced[3_000].traced_peak_bytes <= traced[100].traced_peak_bytes + 2048


# -- the online API ---------------------------------------------------------------------


def _steps(xs, ys, mask=None):
    if mask is None:
        return ((x, y) for x, y in zip(xs, ys))
    return ((x, y, m) for x, y, m in zip(xs, ys, mask))


@pytest.mark.parametrize("T,k1,k2", WINDOWS)
@pytest.mark.parametrize("kind", KINDS)
def test_stream_updates_sum_to_run(kind, T, k1, k2):
    model, params, xs, ys, mask, h0 = _problem(kind, T, 3, 4, seed=T + k1 + k2)
    strategy = bm.truncated(k1, k2)
    res = strategy.run(model, params, xs, ys, h0=h0, mask=mask)
    updates = list(strategy.stream(model, params, _steps(xs, ys, mask), h0=h0))
    assert all(isinstance(u, bm.Update) for u in updates)
    assert [u.t for u in updates] == _update_points(T, k1)
    assert [u.backward_steps for u in updates] == _window_sizes(T, k1, k2)
    for u in updates:  # grad_h0 exactly when the window reaches h0
        assert (u.grad_h0 is None) == (u.t > k2), u.t
    loss = sum(u.loss for u in updates)
    grads = {k: sum(u.grads[k] for u in updates) for k in params}
    grad_h0 = tuple(sum(u.grad_h0[i] for u in updates if u.grad_h0 is not None)
                    for i in range(len(h0)))
    _assert_same_result(res, loss, grads, grad_h0, f"stream truncated({k1}, {k2}) {kind}",
                        tol=1e-12)


def test_stream_each_update_matches_its_window():
    """Update by update, not only in sum: each is the definition's window at t."""
    T, k1, k2 = 11, 3, 5
    model, params, xs, ys, mask, h0 = _problem("gru", T, 2, 4, seed=3)
    updates = list(bm.truncated(k1, k2).stream(model, params, _steps(xs, ys, mask), h0=h0))
    states = _states(model, params, xs, h0)
    last = 0
    for u in updates:
        first = max(0, u.t - k2)
        sub_mask = mask[first:u.t].copy()
        sub_mask[: max(0, last - first)] = 0.0
        loss, grads, gh0 = bm.reference_gradients(model, params, xs[first:u.t], ys[first:u.t],
                                                  h0=states[first], mask=sub_mask)
        _assert_rel(u.loss, loss, f"t={u.t}: loss")
        for k in grads:
            _assert_rel(u.grads[k], grads[k], f"t={u.t}: grads[{k!r}]")
        if first == 0:
            _assert_rel(u.grad_h0[0], gh0[0], f"t={u.t}: grad_h0")
        last = u.t


@pytest.mark.parametrize("T,k1", [(12, 3), (13, 3), (1, 3), (3, 3), (4, 3), (7, 1)])
def test_stream_update_points(T, k1, rng):
    model = _model("vanilla", 3)
    params = model.init(rng)
    xs, ys = rng.standard_normal((T, 2, N_IN)), rng.standard_normal((T, 2, N_OUT))
    updates = bm.truncated(k1, k1 + 2).stream(model, params, _steps(xs, ys))
    assert [u.t for u in updates] == _update_points(T, k1)


def test_stream_accepts_a_bare_array_h0_and_defaults_to_zeros():
    model, params, xs, ys, _, (h0,) = _problem("vanilla", 6, 2, 3, seed=2)
    strategy = bm.truncated(2, 4)
    bare = list(strategy.stream(model, params, _steps(xs, ys), h0=h0))
    wrapped = list(strategy.stream(model, params, _steps(xs, ys), h0=(h0,)))
    assert [u.loss for u in bare] == [u.loss for u in wrapped]
    default = sum(u.loss for u in strategy.stream(model, params, _steps(xs, ys)))
    zeros = sum(u.loss for u in strategy.stream(model, params, _steps(xs, ys),
                                                h0=np.zeros_like(h0)))
    assert default == zeros


def _delay_task(rng: np.random.Generator, B: int):
    """An endless stream where y_t = x_{t−1}: solvable only by carrying state."""
    prev = np.zeros((B, 1))
    while True:
        x = rng.standard_normal((B, 1))
        yield x, prev
        prev = x


def test_stream_sgd_in_place_learns_on_unknown_length_stream(rng):
    model = bm.Model(bm.vanilla(1, 8), n_out=1)
    params = model.init(rng)
    lr, losses = 0.02, []
    # islice hides the length: the stream only learns it has ended when it ends.
    steps = itertools.islice(_delay_task(np.random.default_rng(7), B=8), 3001)
    for u in bm.truncated(4, 8).stream(model, params, steps):
        for k in params:
            params[k] -= lr * u.grads[k]
        losses.append(u.loss)
    assert len(losses) == 751  # 750 updates every 4 steps and a final one at step 3001
    early, late = np.mean(losses[:50]), np.mean(losses[-50:])
    assert late < 0.2 * early, (early, late)


def test_stream_reads_params_at_every_step(rng):
    """In-place changes between updates are seen by the next steps' forward."""
    model, params, xs, ys, _, h0 = _problem("vanilla", 8, 2, 3, seed=4)
    moved = {k: v.copy() for k, v in params.items()}
    stream = bm.truncated(4, 4).stream(model, moved, _steps(xs, ys), h0=h0)
    first = next(stream)
    for k in moved:
        moved[k] += 0.1  # in place: the stream holds this very dict and arrays
    second = next(stream)
    # The second window (steps 5..8) starts from a constant state, computed with the old
    # params; its own steps run with the new ones.
    states = _states(model, params, xs[:4], h0)
    loss, grads, _ = bm.reference_gradients(model, moved, xs[4:], ys[4:], h0=states[4])
    _assert_rel(second.loss, loss, "loss after the in-place change")
    for k in grads:
        _assert_rel(second.grads[k], grads[k], f"grads[{k!r}] after the in-place change")
    assert first.t == 4 and second.t == 8


def _traced_stream_peak(n_steps: int) -> int:
    model = bm.Model(bm.vanilla(1, 2), n_out=1)
    params = model.init(np.random.default_rng(0))
    steps = itertools.islice(_delay_task(np.random.default_rng(1), B=1), n_steps)
    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    count = 0
    for _ in bm.truncated(5, 10).stream(model, params, steps):
        count += 1
    assert count == -(-n_steps // 5)
    return tracemalloc.get_traced_memory()[1] - base  # 0 - 0 when not tracing


def test_stream_memory_does_not_grow_with_length():
    _traced_stream_peak(3_000)  # untraced warm-up: see NOTE [cold interpreter]
    tracemalloc.start()
    try:
        short = _traced_stream_peak(2_000)
        long = _traced_stream_peak(20_000)
    finally:
        tracemalloc.stop()
    # 18 000 more steps of a vanilla(1, 2) cell would hold at least 18 000 · 32 bytes of
    # residuals alone if anything were kept per step; allow 2 KiB of noise.
    assert long <= short + 2048, (short, long)


# -- bad input --------------------------------------------------------------------------


@pytest.mark.parametrize("args,error,name", [
    ((0,), ValueError, "k1"),
    ((-2, 3), ValueError, "k1"),
    ((0, 0), ValueError, "k1"),
    ((3, 2), ValueError, "k2"),
    ((2, 0), ValueError, "k2"),
    ((2.0,), TypeError, "k1"),
    ((True,), TypeError, "k1"),
    ((2, 3.0), TypeError, "k2"),
])
def test_bad_window_sizes_raise_naming_the_argument(args, error, name):
    with pytest.raises(error, match=name):
        bm.truncated(*args)


def _stream_setup(rng):
    model = _model("vanilla", 3)
    params = model.init(rng)
    good = [(rng.standard_normal((2, N_IN)), rng.standard_normal((2, N_OUT))) for _ in range(6)]
    return model, params, good


def test_empty_stream_raises_naming_steps(rng):
    model, params, _ = _stream_setup(rng)
    with pytest.raises(ValueError, match="steps"):
        list(bm.truncated(2).stream(model, params, iter([])))
    with pytest.raises(ValueError, match="steps"):
        list(bm.truncated(2).stream(model, params, (s for s in ())))


_BAD_STEPS = {
    "x_t 1-d": (lambda x, y: (x[0], y), ValueError),
    "x_t 3-d": (lambda x, y: (x[None], y), ValueError),
    "x_t a list": (lambda x, y: (x.tolist(), y), (TypeError, ValueError)),
    "x_t wrong n_in": (lambda x, y: (np.ones((2, N_IN + 2)), y), ValueError),
    "y_t wrong shape": (lambda x, y: (x, y[:, :1]), ValueError),
    "no y_t": (lambda x, y: (x,), TypeError),
    "a list, not a tuple": (lambda x, y: [x, y], TypeError),
}


@pytest.mark.parametrize("bad_at", [0, 3])
@pytest.mark.parametrize("case", sorted(_BAD_STEPS))
def test_bad_stream_step_raises_naming_the_step(rng, case, bad_at):
    model, params, good = _stream_setup(rng)
    make_bad, error = _BAD_STEPS[case]
    steps = list(good)
    steps[bad_at] = make_bad(*good[bad_at])
    with pytest.raises(error, match=rf"steps\[{bad_at}\]"):
        list(bm.truncated(2).stream(model, params, iter(steps)))


def test_stream_batch_change_raises_naming_the_step(rng):
    model, params, good = _stream_setup(rng)
    steps = list(good)
    steps[3] = (good[3][0][:1], good[3][1][:1])
    with pytest.raises(ValueError, match=r"steps\[3\].*batch"):
        list(bm.truncated(2).stream(model, params, iter(steps)))


def test_bad_stream_h0_raises_naming_h0(rng):
    model, params, good = _stream_setup(rng)
    with pytest.raises(ValueError, match="h0"):
        list(bm.truncated(2).stream(model, params, iter(good), h0=np.zeros((2, 7))))


def test_a_huge_k2_allocates_only_what_the_steps_fill(rng):
    """The ring grows with the steps seen, up to k2: k2 = 10¹² on a stream holds T steps."""
    model, params, good = _stream_setup(rng)
    updates = list(bm.truncated(3, 10**12).stream(model, params, iter(good)))
    res = bm.truncated(3, 10**12).run(model, params, np.stack([s[0] for s in good]),
                                      np.stack([s[1] for s in good]))
    assert res.stats.peak_bytes == (
        len(good) * model.cell.residual_bytes(good[0][0].shape[0], np.float64))
    assert updates[-1].t == len(good) and updates[-1].backward_steps == len(good)
