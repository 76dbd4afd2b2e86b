"""Cross-check cells, readout, loss and the exact strategies against PyTorch in float64.

The same weights are copied into ``nn.RNN``/``nn.LSTM``/``nn.GRU`` (one layer,
batch_first=False) and an ``nn.Linear`` readout; torch's autograd then gives the loss
L = Σ_t Σ_b mask[t, b]·ℓ(o_tb, y_tb)/B and every gradient, h0 (and c0) included.
Skipped when torch is not installed. Never touches torch's global default dtype.
"""

import numpy as np
import pytest

import bptt_memory as bm

torch = pytest.importorskip("torch")
F = torch.nn.functional

TOL = 1e-10

# (kind, activation): every cell torch has a module for.
CELLS = [("vanilla", "tanh"), ("vanilla", "relu"), ("lstm", None), ("gru", None)]
# (T, B, H): small, but covering T = 1, batch 1 and a non-power-of-two width.
SHAPES = [(1, 1, 4), (1, 3, 9), (7, 3, 4), (7, 1, 9), (20, 3, 9), (20, 1, 4)]
N_IN, N_OUT = 3, 5


def _make_cell(kind: str, activation: str | None, H: int) -> bm.Cell:
    if kind == "vanilla":
        return bm.vanilla(N_IN, H, activation)
    return {"lstm": bm.lstm, "gru": bm.gru}[kind](N_IN, H)


def _problem(kind, activation, loss, T, B, H, seed):
    """A random model, params, data, mask (with zeros and fractional weights) and h0."""
    rng = np.random.default_rng(seed)
    model = bm.Model(_make_cell(kind, activation, H), n_out=N_OUT, loss=loss)
    params = model.init(rng)
    xs = rng.standard_normal((T, B, N_IN))
    if loss == "mse":
        ys = rng.standard_normal((T, B, N_OUT))
    else:
        ys = rng.integers(0, N_OUT, size=(T, B))
    mask = rng.uniform(0.2, 1.5, size=(T, B)) * (rng.random((T, B)) < 0.7)
    mask[-1, 0] = 1.0  # never all zero, so no gradient is trivially zero
    h0 = tuple(0.5 * rng.standard_normal((B, H)) for _ in model.cell.state_names)
    return model, params, xs, ys, mask, h0


def _torch_modules(model: bm.Model, params: dict):
    cell = model.cell
    I, H = cell.n_in, cell.n_hidden
    if cell.kind == "vanilla":
        rnn = torch.nn.RNN(I, H, nonlinearity=cell.activation)
    elif cell.kind == "lstm":
        rnn = torch.nn.LSTM(I, H)
    else:
        rnn = torch.nn.GRU(I, H)
    rnn = rnn.double()
    readout = torch.nn.Linear(H, model.n_out).double()
    with torch.no_grad():
        for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            getattr(rnn, f"{name}_l0").copy_(torch.from_numpy(params[name]))
        readout.weight.copy_(torch.from_numpy(params["weight_out"]))
        readout.bias.copy_(torch.from_numpy(params["bias_out"]))
    return rnn, readout


def _torch_run(model, params, xs, ys, mask, h0):
    """(loss, grads by our names, grad_h0 tuple) from torch's autograd."""
    rnn, readout = _torch_modules(model, params)
    T, B = xs.shape[:2]
    h0_t = tuple(torch.tensor(a[None], dtype=torch.float64, requires_grad=True) for a in h0)
    x = torch.tensor(xs, dtype=torch.float64)
    hs, _ = rnn(x, h0_t if model.cell.kind == "lstm" else h0_t[0])  # (T, B, H)
    o = readout(hs)  # (T, B, O)
    if model.loss == "mse":
        per = F.mse_loss(o, torch.tensor(ys, dtype=torch.float64), reduction="none").mean(-1)
    else:
        per = F.cross_entropy(o.reshape(T * B, -1), torch.tensor(ys, dtype=torch.int64).reshape(-1),
                              reduction="none").reshape(T, B)
    loss = (per * torch.tensor(mask, dtype=torch.float64)).sum() / B
    loss.backward()
    grads = {name: getattr(rnn, f"{name}_l0").grad.numpy()
             for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")}
    grads["weight_out"] = readout.weight.grad.numpy()
    grads["bias_out"] = readout.bias.grad.numpy()
    return loss.item(), grads, tuple(a.grad[0].numpy() for a in h0_t)


def _assert_rel(actual, expected, what: str, tol: float = TOL) -> None:
    actual, expected = np.asarray(actual, dtype=np.float64), np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} vs {expected.shape}"
    scale = np.linalg.norm(expected)
    if scale == 0.0:  # e.g. every relu unit dead: then ours must be exactly zero too
        assert not actual.any(), f"{what}: torch gives exactly zero, ours {actual}"
        return
    err = np.linalg.norm(actual - expected) / scale
    assert err <= tol, f"{what}: relative error {err:.3e} > {tol:.0e}"


def _strategies(model: bm.Model, B: int) -> list:
    rb = model.cell.residual_bytes(B, np.float64)
    return [bm.full(), bm.binomial(slots=2), bm.uniform(every=3),
            bm.optimal(budget_bytes=3 * rb)]


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("loss", bm.LOSSES)
@pytest.mark.parametrize("T,B,H", SHAPES)
@pytest.mark.parametrize("kind,activation", CELLS)
def test_exact_strategies_match_torch_autograd(kind, activation, T, B, H, loss, seed):
    seed = 10_000 * seed + 1000 * T + 10 * B + H
    model, params, xs, ys, mask, h0 = _problem(kind, activation, loss, T, B, H, seed)
    t_loss, t_grads, t_grad_h0 = _torch_run(model, params, xs, ys, mask, h0)
    for strategy in _strategies(model, B):
        res = strategy.run(model, params, xs, ys, h0=h0, mask=mask)
        where = f"{strategy.name} {kind}/{activation} T={T} B={B} H={H} {loss}"
        _assert_rel(res.loss, t_loss, f"{where}: loss")
        assert set(res.grads) == set(t_grads)
        for name in t_grads:
            _assert_rel(res.grads[name], t_grads[name], f"{where}: grads[{name!r}]")
        assert isinstance(res.grad_h0, tuple) and len(res.grad_h0) == len(t_grad_h0)
        for state_name, ours, theirs in zip(model.cell.state_names, res.grad_h0, t_grad_h0):
            _assert_rel(ours, theirs, f"{where}: grad_h0 ({state_name})")


@pytest.mark.parametrize("kind,activation", CELLS)
def test_reference_matches_torch_autograd(kind, activation):
    """The plain reference and torch agree too, so neither can hide a shared slip."""
    model, params, xs, ys, mask, h0 = _problem(kind, activation, "cross_entropy", 7, 3, 4, 7)
    t_loss, t_grads, t_grad_h0 = _torch_run(model, params, xs, ys, mask, h0)
    loss, grads, grad_h0 = bm.reference_gradients(model, params, xs, ys, h0=h0, mask=mask)
    _assert_rel(loss, t_loss, "reference loss")
    for name in t_grads:
        _assert_rel(grads[name], t_grads[name], f"reference grads[{name!r}]")
    for ours, theirs in zip(grad_h0, t_grad_h0):
        _assert_rel(ours, theirs, "reference grad_h0")


def test_zero_h0_by_default_matches_torch_zero_state():
    model, params, xs, ys, mask, _ = _problem("lstm", None, "mse", 7, 3, 4, 3)
    zeros = model.zero_state(3, np.float64)
    t_loss, t_grads, t_grad_h0 = _torch_run(model, params, xs, ys, mask, zeros)
    res = bm.full().run(model, params, xs, ys, mask=mask)
    _assert_rel(res.loss, t_loss, "loss")
    for name in t_grads:
        _assert_rel(res.grads[name], t_grads[name], f"grads[{name!r}]")
    for ours, theirs in zip(res.grad_h0, t_grad_h0):
        _assert_rel(ours, theirs, "grad_h0")


@pytest.mark.parametrize("loss", bm.LOSSES)
@pytest.mark.parametrize("kind,activation", CELLS)
def test_unmasked_loss_is_sum_of_torch_default_losses(kind, activation, loss):
    """With no mask, step t's term is F.mse_loss(o_t, y_t) / F.cross_entropy(o_t, y_t)."""
    T, B, H = 7, 3, 9
    model, params, xs, ys, _, h0 = _problem(kind, activation, loss, T, B, H, 11)
    rnn, readout = _torch_modules(model, params)
    h0_t = tuple(torch.tensor(a[None], dtype=torch.float64) for a in h0)
    with torch.no_grad():
        hs, _ = rnn(torch.tensor(xs, dtype=torch.float64),
                    h0_t if model.cell.kind == "lstm" else h0_t[0])
        o = readout(hs)
        if loss == "mse":
            y = torch.tensor(ys, dtype=torch.float64)
            expected = sum(F.mse_loss(o[t], y[t]).item() for t in range(T))
        else:
            y = torch.tensor(ys, dtype=torch.int64)
            expected = sum(F.cross_entropy(o[t], y[t]).item() for t in range(T))
    for strategy in (bm.full(), bm.binomial(slots=2)):
        res = strategy.run(model, params, xs, ys, h0=h0)
        _assert_rel(res.loss, expected, f"{strategy.name}: unmasked {loss}")


def test_cross_entropy_with_extreme_logits_matches_torch(rng):
    """Large logits: the softmax must stay stable (np.seterr raises on overflow)."""
    model = bm.Model(bm.gru(N_IN, 4), n_out=N_OUT, loss="cross_entropy")
    params = model.init(rng)
    params["weight_out"] *= 400.0
    params["bias_out"] += 300.0 * rng.standard_normal(N_OUT)
    xs = rng.standard_normal((5, 2, N_IN))
    ys = rng.integers(0, N_OUT, size=(5, 2))
    mask = np.ones((5, 2))
    h0 = (rng.standard_normal((2, 4)),)
    t_loss, t_grads, _ = _torch_run(model, params, xs, ys, mask, h0)
    res = bm.full().run(model, params, xs, ys, h0=h0)
    _assert_rel(res.loss, t_loss, "loss")
    for name in t_grads:
        _assert_rel(res.grads[name], t_grads[name], f"grads[{name!r}]")


# ---- stacked layers: ``num_layers=L`` against torch's multi-layer modules


@pytest.mark.parametrize("L", [2, 3])
@pytest.mark.parametrize("kind,activation", CELLS)
def test_num_layers_matches_torchs_multi_layer_module_under_every_strategy(kind, activation, L):
    """PyTorch's equations, parameter names and (L, B, H) state layout for num_layers=L;
    grad_h0 in the same layout; every strategy, truncated with k2 >= T included."""
    rng = np.random.default_rng(L)
    T, B, H = 9, 3, 4
    kw = {"activation": activation} if kind == "vanilla" else {}
    cell = bm.CELLS[kind](N_IN, H, num_layers=L, **kw)
    model = bm.Model(cell, n_out=N_OUT)
    params = model.init(rng)
    xs, ys = rng.standard_normal((T, B, N_IN)), rng.standard_normal((T, B, N_OUT))
    h0 = tuple(0.5 * rng.standard_normal(s) for s in cell.state_shapes(B))
    rnn = {"vanilla": lambda: torch.nn.RNN(N_IN, H, num_layers=L,
                                           nonlinearity=activation or "tanh"),
           "lstm": lambda: torch.nn.LSTM(N_IN, H, num_layers=L),
           "gru": lambda: torch.nn.GRU(N_IN, H, num_layers=L)}[kind]().double()
    readout = torch.nn.Linear(H, N_OUT).double()
    named = dict(rnn.named_parameters())
    assert set(named) == set(cell.param_shapes())  # the very names torch uses
    with torch.no_grad():
        for name, p in named.items():
            p.copy_(torch.from_numpy(params[name]))
        readout.weight.copy_(torch.from_numpy(params["weight_out"]))
        readout.bias.copy_(torch.from_numpy(params["bias_out"]))
    h0_t = tuple(torch.tensor(a, requires_grad=True) for a in h0)
    hs, _ = rnn(torch.tensor(xs), h0_t if kind == "lstm" else h0_t[0])
    loss = F.mse_loss(readout(hs), torch.tensor(ys), reduction="none").mean(-1).sum() / B
    loss.backward()
    want = {name: p.grad.numpy() for name, p in named.items()}
    want.update(weight_out=readout.weight.grad.numpy(), bias_out=readout.bias.grad.numpy())
    rb = cell.residual_bytes(B, np.float64)
    for strategy in [bm.full(), bm.binomial(slots=2), bm.uniform(every=3),
                     bm.optimal(budget_bytes=3 * rb), bm.truncated(T, T)]:
        res = strategy.run(model, params, xs, ys, h0=h0)
        assert abs(res.loss - loss.item()) <= TOL * abs(loss.item()), strategy.name
        for name in want:
            _assert_rel(res.grads[name], want[name], f"{strategy.name} {name}")
        for got, a in zip(res.grad_h0, h0_t):
            assert got.shape == (L, B, H)
            _assert_rel(got, a.grad.numpy(), f"{strategy.name} grad_h0")
