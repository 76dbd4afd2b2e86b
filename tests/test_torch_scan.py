"""bptt_memory.torch.scan: every strategy against plain autograd through an unrolled loop.

Float64 throughout, small sizes. The bytes are checked twice: the executor's books against
the simulator's plan, and, independently, the bytes of the tensors autograd keeps saved
(saved-tensor hooks around the whole run) against the plan's peak.
"""

import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import bptt_memory as bm

torch = pytest.importorskip("torch")
from bptt_memory.torch import cost, measure_step, scan  # noqa: E402

nn = torch.nn
F64 = torch.float64
B, I, H = 2, 3, 4
TOL = 1e-10


# --- the steps: torch's cells, a stack, and a user's module --------------------------------


class Stack(nn.Module):
    """Two LSTMCells, state (h1, c1, h2, c2)."""

    def __init__(self) -> None:
        super().__init__()
        self.l1, self.l2 = nn.LSTMCell(I, H), nn.LSTMCell(H, H)

    def forward(self, x, s):
        h1, c1 = self.l1(x, s[:2])
        h2, c2 = self.l2(h1, s[2:])
        return h1, c1, h2, c2


class Leaky(nn.Module):
    """A user's own step: a tanh RNN and a leaky average of its output, state (h, m)."""

    def __init__(self) -> None:
        super().__init__()
        self.W, self.U = nn.Linear(I, H), nn.Linear(H, H, bias=False)

    def forward(self, x, s):
        h, m = s
        h = torch.tanh(self.W(x) + self.U(h))
        return h, 0.9 * m + 0.1 * h


class Readout(nn.Module):
    """loss_fn as a module, so its parameters get gradients too: ‖V·h_t − y_t‖²."""

    def __init__(self) -> None:
        super().__init__()
        self.V = nn.Linear(H, 2)

    def forward(self, s, y):
        h = s if isinstance(s, torch.Tensor) else s[-2 if len(s) == 4 else 0]
        return (self.V(h) - y).square().sum()


CELLS = {
    "lstm": (lambda: nn.LSTMCell(I, H), 2),
    "gru": (lambda: nn.GRUCell(I, H), 1),
    "rnn": (lambda: nn.RNNCell(I, H), 1),
    "stack": (Stack, 4),
    "user": (Leaky, 2),
}


def _problem(kind, T, h0_grad, seed=0):
    torch.manual_seed(seed)
    make, n_state = CELLS[kind]
    step, loss_fn = make().double(), Readout().double()
    xs = torch.randn(T, B, I, dtype=F64, requires_grad=True)
    ys = torch.randn(T, B, 2, dtype=F64)
    state = tuple(0.5 * torch.randn(B, H, dtype=F64) for _ in range(n_state))
    for a in state[:1]:
        a.requires_grad_(h0_grad)
    h0 = state if n_state > 1 else state[0]
    return step, loss_fn, xs, ys, h0


def _leaves(step, loss_fn, xs, h0):
    h0 = h0 if isinstance(h0, tuple) else (h0,)
    return [*step.parameters(), *loss_fn.parameters(), xs, *h0]


def _zero(leaves):
    for a in leaves:
        a.grad = None


def _grads(leaves):
    return [None if a.grad is None else a.grad.clone() for a in leaves]


def _plain(step, loss_fn, xs, ys, h0):
    s, loss = h0, 0
    for t in range(xs.shape[0]):
        s = step(xs[t], s)
        loss = loss + loss_fn(s, ys[t])
    return loss, s


def _assert_close(got, want):
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert (g is None) == (w is None)
        if w is not None:
            assert float((g - w).abs().max()) <= TOL * max(1.0, float(w.abs().max()))


def _strategies(step, loss_fn, xs, ys, h0, T):
    sizes = measure_step(step, xs, h0, ys=ys, loss_fn=loss_fn)
    budget = 3 * sizes.state_bytes + 2 * sizes.residual_bytes  # forces recomputation
    return [bm.full(), bm.uniform(every=4), bm.binomial(slots=2), bm.optimal(budget_bytes=budget),
            bm.truncated(min(5, T), T)]  # k2 >= T: exact


# --- gradients ----------------------------------------------------------------------------


@pytest.mark.parametrize("h0_grad", [False, True], ids=["h0", "h0-grad"])
@pytest.mark.parametrize("T", [1, 2, 17, 100])
@pytest.mark.parametrize("kind", list(CELLS))
def test_every_strategy_gives_plain_autograds_gradients(kind, T, h0_grad):
    step, loss_fn, xs, ys, h0 = _problem(kind, T, h0_grad)
    leaves = _leaves(step, loss_fn, xs, h0)
    loss_ref, _ = _plain(step, loss_fn, xs, ys, h0)
    loss_ref.backward()
    want = _grads(leaves)
    for strategy in _strategies(step, loss_fn, xs, ys, h0, T):
        _zero(leaves)
        loss, _ = scan(step, xs, h0, ys=ys, loss_fn=loss_fn, strategy=strategy)
        assert abs(loss.item() - loss_ref.item()) <= TOL * abs(loss_ref.item()), strategy.name
        loss.backward()
        _assert_close(_grads(leaves), want)


def test_grads_accumulate_into_existing_grad_and_state_T_takes_part_in_autograd():
    step, loss_fn, xs, ys, h0 = _problem("lstm", 17, True)
    leaves = _leaves(step, loss_fn, xs, h0)

    def total(loss, s):
        return loss + (s[0] * s[1]).sum()  # a later use of state_T

    for a in leaves:
        a.grad = torch.ones_like(a) if a.requires_grad else None
    total(*_plain(step, loss_fn, xs, ys, h0)).backward()
    want = _grads(leaves)
    for strategy in (bm.full(), bm.binomial(slots=3)):
        for a in leaves:
            a.grad = torch.ones_like(a) if a.requires_grad else None
        total(*scan(step, xs, h0, ys=ys, loss_fn=loss_fn, strategy=strategy)).backward()
        _assert_close(_grads(leaves), want)


def test_explicit_params_and_a_plain_callable_with_ys_none():
    torch.manual_seed(1)
    W = torch.randn(H, H, dtype=F64, requires_grad=True)
    U = torch.randn(I, H, dtype=F64, requires_grad=True)
    xs, h0 = torch.randn(9, B, I, dtype=F64), torch.randn(B, H, dtype=F64)

    def step(x, h):
        return torch.tanh(h @ W + x @ U)

    def loss_fn(h, y):
        assert y is None
        return h.square().mean()

    s, loss_ref = h0, 0
    for t in range(9):
        s = step(xs[t], s)
        loss_ref = loss_ref + loss_fn(s, None)
    want = torch.autograd.grad(loss_ref, [W, U])
    loss, _ = scan(step, xs, h0, loss_fn=loss_fn, strategy=bm.binomial(slots=2), params=[W, U])
    _assert_close(torch.autograd.grad(loss, [W, U]), want)


def test_a_second_backward_and_higher_order_gradients_are_refused():
    for strategy in (bm.binomial(slots=2), bm.truncated(3)):
        step, loss_fn, xs, ys, h0 = _problem("gru", 7, False)
        loss, _ = scan(step, xs, h0, ys=ys, loss_fn=loss_fn, strategy=strategy)
        loss.backward(retain_graph=True)
        with pytest.raises(RuntimeError, match="already ran"):
            loss.backward()
        loss, _ = scan(step, xs, h0, ys=ys, loss_fn=loss_fn, strategy=strategy)
        with pytest.raises(RuntimeError, match="higher-order"):
            torch.autograd.grad(loss, list(step.parameters()), create_graph=True)

@pytest.mark.parametrize("strategy", [bm.full(), bm.binomial(slots=3), bm.truncated(2, 4)],
                         ids=lambda s: s.name)
def test_a_scan_leaves_no_reference_cycle_and_the_kept_loss_holds_no_gradients(strategy):
    """NOTE [no cycle]: a finished scan is freed by reference counting, like plain
    autograd's graph, not when the cyclic collector next runs; a loss the caller keeps
    does not keep the run's gradient buffers."""
    import gc
    import weakref

    step, loss_fn, xs, ys, h0 = _problem("lstm", 9, True)
    scan(step, xs, h0, ys=ys, loss_fn=loss_fn, strategy=strategy)[0].backward()  # warm-up
    gc.collect()
    was = gc.isenabled()
    gc.disable()
    try:
        loss, state_T = scan(step, xs, h0, ys=ys, loss_fn=loss_fn, strategy=strategy)
        loss.backward()
        run = loss.grad_fn.run  # alive while the caller keeps the loss or state_T
        assert run.ex.dparams == [] and run.ex.dxs is None and run.ex.loss is None
        ref = weakref.ref(run)
        del run, loss, state_T
        assert ref() is None  # freed by reference counting: no cycle holds it
    finally:
        if was:
            gc.enable()


# --- truncated: against a plain-autograd TBPTT ----------------------------------------------


def _plain_tbptt(step, loss_fn, xs, ys, h0, k1, k2):
    """TBPTT(k1, k2) the obvious way: every k1 steps (and at T), rerun the last k2 steps
    from the detached state entering them and backpropagate the losses since the last
    update; .grad accumulates the sum."""
    T = xs.shape[0]
    states = [h0]
    with torch.no_grad():
        for t in range(T):
            states.append(step(xs[t], states[-1]))
    last = 0
    for t in sorted({*range(k1, T + 1, k1), T}):
        first = max(0, t - k2)
        s = h0 if first == 0 else states[first]
        loss = 0
        for i in range(first, t):
            s = step(xs[i], s)
            if i >= last:
                loss = loss + loss_fn(s, ys[i])
        loss.backward()
        last = t


@pytest.mark.parametrize("k1,k2", [(1, 1), (3, 3), (2, 5), (4, 7), (5, 40)])
@pytest.mark.parametrize("kind", ["lstm", "user"])
def test_truncated_matches_plain_tbptt_with_its_bias(kind, k1, k2):
    step, loss_fn, xs, ys, h0 = _problem(kind, 17, True)
    leaves = _leaves(step, loss_fn, xs, h0)
    _plain_tbptt(step, loss_fn, xs, ys, h0, k1, k2)
    want = _grads(leaves)
    _zero(leaves)
    loss, _, stats = scan(step, xs, h0, ys=ys, loss_fn=loss_fn, strategy=bm.truncated(k1, k2),
                          stats=True)
    loss.backward()
    _assert_close(_grads(leaves), want)
    c = cost(step, xs, h0, ys=ys, loss_fn=loss_fn, strategy=bm.truncated(k1, k2))
    assert (stats.forward_steps, stats.backward_steps) == (c.forward_steps, c.backward_steps)
    assert stats.peak_bytes == c.peak_bytes


def test_truncated_refuses_a_gradient_into_state_T():
    step, loss_fn, xs, ys, h0 = _problem("gru", 6, False)
    loss, h = scan(step, xs, h0, ys=ys, loss_fn=loss_fn, strategy=bm.truncated(2))
    with pytest.raises(RuntimeError, match="state_T"):
        (loss + h.sum()).backward()


# --- bytes --------------------------------------------------------------------------------


class _LiveSaved:
    """Saved-tensor hooks counting the bytes autograd keeps saved, live: one count per
    storage while any saved tensor holds it, params and xs/ys excluded; `peak` is their
    maximum. Independent of the executor's books."""

    def __init__(self, shared):
        self.shared = {a.untyped_storage().data_ptr() for a in shared}
        self.live, self.held, self.peak = {}, 0, 0

    def pack(self, t):
        return _Held(self, t)

    def hooks(self):
        return torch.autograd.graph.saved_tensors_hooks(self.pack, lambda h: h.t)


class _Held:
    def __init__(self, counter, t):
        # detached: a saved output holding its own grad_fn would be a reference cycle
        self.counter, self.t, key = counter, t.detach(), t.untyped_storage().data_ptr()
        self.key = None if key in counter.shared else key
        if self.key is not None:
            n, nbytes = counter.live.get(key, (0, t.untyped_storage().nbytes()))
            if n == 0:
                counter.held += nbytes
                counter.peak = max(counter.peak, counter.held)
            counter.live[key] = (n + 1, nbytes)

    def __del__(self):
        if self.key is not None:
            c = self.counter
            n, nbytes = c.live[self.key]
            if n == 1:
                del c.live[self.key]
                c.held -= nbytes
            else:
                c.live[self.key] = (n - 1, nbytes)


@pytest.mark.parametrize("kind", ["lstm", "stack", "user"])
def test_bytes_saved_during_backward_stay_within_the_plan_and_the_budget(kind):
    T = 17
    step, loss_fn, xs, ys, h0 = _problem(kind, T, True)
    sizes = measure_step(step, xs, h0, ys=ys, loss_fn=loss_fn)
    budgets = [sizes.residual_bytes + sizes.state_bytes, 2 * sizes.residual_bytes,
               3 * sizes.state_bytes + 2 * sizes.residual_bytes, 6 * sizes.residual_bytes]
    strategies = [bm.full(), bm.uniform(every=4), bm.binomial(slots=1), bm.binomial(slots=3),
                  bm.truncated(3, 5), *(bm.optimal(budget_bytes=b) for b in budgets)]
    for strategy in strategies:
        plan = cost(step, xs, h0, ys=ys, loss_fn=loss_fn, strategy=strategy)
        counter = _LiveSaved([*step.parameters(), *loss_fn.parameters(), xs, ys])
        with counter.hooks():  # stats=False: the executor counts nothing itself
            loss, _ = scan(step, xs, h0, ys=ys, loss_fn=loss_fn, strategy=strategy)
            loss.backward()
        assert counter.held == 0, strategy.name  # nothing left behind
        assert 0 < counter.peak <= plan.peak_bytes, strategy.name
        if isinstance(strategy, bm.Optimal):
            assert plan.peak_bytes <= strategy.budget_bytes
        loss, _, stats = scan(step, xs, h0, ys=ys, loss_fn=loss_fn, strategy=strategy, stats=True)
        loss.backward()
        assert (stats.forward_steps, stats.backward_steps) == (plan.forward_steps,
                                                               plan.backward_steps)
        assert (stats.peak_bytes, stats.peak_states, stats.peak_residuals) == (
            plan.peak_bytes, plan.peak_states, plan.peak_residuals), strategy.name


def test_full_runs_T_forward_steps_and_cost_answers_before_running():
    step, loss_fn, xs, ys, h0 = _problem("gru", 100, False)
    c = cost(step, xs, h0, ys=ys, loss_fn=loss_fn, strategy=bm.full())
    assert (c.forward_steps, c.peak_residuals, c.peak_states) == (100, 100, 0)
    c = cost(step, xs, h0, ys=ys, loss_fn=loss_fn, strategy=bm.binomial(slots=4))
    assert c.forward_steps == bm.simulate(bm.binomial(slots=4).schedule(100)).forward_steps
    loss, _, stats = scan(step, xs, h0, ys=ys, loss_fn=loss_fn, strategy=bm.full(), stats=True)
    assert stats.forward_steps == 100  # the first pass is the schedule's: no duplicate sweep
    loss.backward()
    assert (stats.forward_steps, stats.backward_steps) == (100, 100)


# --- RNG, no_grad -------------------------------------------------------------------------


class Dropped(nn.Module):
    """A GRU step with dropout on its input: draws random numbers every step."""

    def __init__(self) -> None:
        super().__init__()
        self.cell = nn.GRUCell(I, H)

    def forward(self, x, h):
        return self.cell(nn.functional.dropout(x, 0.5, training=True), h)


@pytest.mark.parametrize("strategy", [bm.full(), bm.uniform(every=3), bm.binomial(slots=2),
                                      bm.truncated(4, 30)], ids=lambda s: s.name)
def test_a_step_that_draws_random_numbers_is_replayed_bit_exactly(strategy):
    torch.manual_seed(0)
    step, loss_fn = Dropped().double(), Readout().double()
    xs = torch.randn(23, B, I, dtype=F64, requires_grad=True)
    ys = torch.randn(23, B, 2, dtype=F64)
    h0 = torch.randn(B, H, dtype=F64)
    leaves = _leaves(step, loss_fn, xs, h0)
    torch.manual_seed(7)
    loss_ref, _ = _plain(step, loss_fn, xs, ys, h0)
    loss_ref.backward()
    after_ref = torch.get_rng_state()
    want = _grads(leaves)
    _zero(leaves)
    torch.manual_seed(7)
    loss, _ = scan(step, xs, h0, ys=ys, loss_fn=loss_fn, strategy=strategy)
    assert torch.equal(torch.get_rng_state(), after_ref)  # drew what the plain loop drew
    loss.backward()
    assert torch.equal(torch.get_rng_state(), after_ref)  # recomputation puts them back
    assert abs(loss.item() - loss_ref.item()) <= TOL * abs(loss_ref.item())
    _assert_close(_grads(leaves), want)


def test_a_loss_fn_that_draws_random_numbers_is_refused():
    step, _, xs, ys, h0 = _problem("rnn", 5, False)

    def noisy(h, y):
        return (h + 0.01 * torch.randn_like(h)).sum()

    with pytest.raises(ValueError, match="loss_fn draws random numbers"):
        scan(step, xs, h0, ys=ys, loss_fn=noisy)


def test_under_no_grad_scan_only_runs_forward():
    step, loss_fn, xs, ys, h0 = _problem("lstm", 17, True)
    loss_ref, (h_ref, _) = _plain(step, loss_fn, xs, ys, h0)
    with torch.no_grad():
        loss, (h, _), stats = scan(step, xs, h0, ys=ys, loss_fn=loss_fn,
                                   strategy=bm.binomial(slots=2), stats=True)
    assert loss.grad_fn is None and not loss.requires_grad
    assert abs(loss.item() - loss_ref.item()) <= TOL * abs(loss_ref.item())
    assert torch.equal(h, h_ref.detach())
    assert (stats.forward_steps, stats.backward_steps, stats.peak_bytes) == (17, 0, 0)


# --- bad input ----------------------------------------------------------------------------


def _counting(step):
    calls = []

    def counted(x, s):
        calls.append(1)
        return step(x, s)

    return counted, calls


def test_bad_input_gets_a_clear_error_before_any_work():
    step, loss_fn, xs, ys, h0 = _problem("lstm", 5, False)
    counted, calls = _counting(step)
    with pytest.raises(TypeError, match="xs must be a torch.Tensor"):
        scan(counted, xs.tolist(), h0, ys=ys, loss_fn=loss_fn)
    with pytest.raises(ValueError, match="ys has 4 steps but xs has 5"):
        scan(counted, xs, h0, ys=ys[:4], loss_fn=loss_fn)
    with pytest.raises(TypeError, match="h0 must be a tensor or a non-empty tuple"):
        scan(counted, xs, list(h0), ys=ys, loss_fn=loss_fn)
    with pytest.raises(TypeError, match="strategy must be a bptt_memory strategy"):
        scan(counted, xs, h0, ys=ys, loss_fn=loss_fn, strategy="full")
    assert not calls
    with pytest.raises(ValueError, match="not among the parameters; pass params"):
        scan(counted, xs, h0, ys=ys, loss_fn=loss_fn)  # a plain callable: its weights unnamed
    sizes = measure_step(step, xs, h0, ys=ys, loss_fn=loss_fn)
    with pytest.raises(ValueError, match=f"raise budget_bytes to at least {sizes.residual_bytes}"):
        scan(counted, xs, h0, ys=ys, loss_fn=loss_fn,
             params=[*step.parameters(), *loss_fn.parameters()],
             strategy=bm.optimal(budget_bytes=sizes.residual_bytes - 1))
    with pytest.raises(ValueError, match="raise budget_bytes"):
        cost(step, xs, h0, ys=ys, loss_fn=loss_fn, strategy=bm.optimal(budget_bytes=8))
    assert len(calls) == 2  # one traced step each, measuring the bytes


def test_a_step_returning_another_structure_is_refused_at_the_first_step():
    step, loss_fn, xs, ys, h0 = _problem("lstm", 5, False)
    for bad in (lambda x, s: step(x, s)[0], lambda x, s: (*step(x, s), s[0]),
                lambda x, s: (step(x, s)[0].float(), s[1]), lambda x, s: list(step(x, s))):
        counted, calls = _counting(bad)
        with pytest.raises(TypeError, match="same structure, shapes and dtypes"):
            scan(counted, xs, h0, ys=ys, loss_fn=loss_fn, params=step.parameters())
        assert len(calls) == 1


# --- packaging, devices -------------------------------------------------------------------


def test_import_bptt_memory_does_not_import_torch():
    code = "import sys, bptt_memory; assert 'torch' not in sys.modules, 'torch was imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_smoke():
    torch.manual_seed(0)
    dev = torch.device("cuda")
    step, loss_fn = Dropped().double().to(dev), Readout().double().to(dev)
    xs = torch.randn(30, B, I, dtype=F64, device=dev, requires_grad=True)
    ys = torch.randn(30, B, 2, dtype=F64, device=dev)
    h0 = torch.randn(B, H, dtype=F64, device=dev)
    leaves = _leaves(step, loss_fn, xs, h0)
    torch.manual_seed(3)
    _plain(step, loss_fn, xs, ys, h0)[0].backward()
    want = _grads(leaves)
    _zero(leaves)
    torch.manual_seed(3)
    loss, h, stats = scan(step, xs, h0, ys=ys, loss_fn=loss_fn, strategy=bm.binomial(slots=3),
                          stats=True)
    loss.backward()
    assert h.device.type == "cuda" and stats.forward_steps > 30
    _assert_close(_grads(leaves), want)


# --- property: any T, any schedule -----------------------------------------------------------


@settings(max_examples=25, deadline=None)
@given(T=st.integers(1, 40), which=st.sampled_from(["uniform", "binomial", "optimal"]),
       size=st.integers(1, 9), xs_grad=st.booleans())
def test_any_schedule_gives_plain_autograds_gradients(T, which, size, xs_grad):
    step, loss_fn, xs, ys, h0 = _problem("user", T, True, seed=T)
    xs.requires_grad_(xs_grad)
    if which == "optimal":
        sizes = measure_step(step, xs, h0, ys=ys, loss_fn=loss_fn)
        strategy = bm.optimal(budget_bytes=sizes.residual_bytes + size * sizes.state_bytes)
    else:
        strategy = bm.uniform(every=size) if which == "uniform" else bm.binomial(slots=size)
    leaves = [a for a in _leaves(step, loss_fn, xs, h0) if a.requires_grad]
    want = torch.autograd.grad(_plain(step, loss_fn, xs, ys, h0)[0], leaves)
    loss, _, stats = scan(step, xs, h0, ys=ys, loss_fn=loss_fn, strategy=strategy, stats=True)
    _assert_close(torch.autograd.grad(loss, leaves), want)
    plan = cost(step, xs, h0, ys=ys, loss_fn=loss_fn, strategy=strategy)
    assert (stats.forward_steps, stats.peak_bytes) == (plan.forward_steps, plan.peak_bytes)
