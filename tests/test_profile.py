"""bm.Profile: off by default, bitwise harmless, and its product tally is the kernels'."""

import math

import numpy as np
import pytest

import bptt_memory as bm
from bptt_memory.engine import CHUNK_STEPS
from cell_zoo import IndRNN

KINDS = ("vanilla", "lstm", "gru")
B, I, H, O = 3, 4, 5, 2


def _problem(rng, kind, T, dtype, cell=None):
    model = bm.Model(cell if cell is not None else bm.CELLS[kind](I, H), n_out=O)
    params = model.init(rng, dtype)
    xs = rng.standard_normal((T, B, I)).astype(dtype)
    ys = rng.standard_normal((T, B, O)).astype(dtype)
    return model, params, xs, ys


def _same(a, b):
    return (a.loss == b.loss and all(np.array_equal(a.grads[k], b.grads[k]) for k in a.grads)
            and all(np.array_equal(x, y) for x, y in zip(a.grad_h0, b.grad_h0)))


STRATEGIES = [bm.full(), bm.uniform(every=5), bm.binomial(slots=3), bm.optimal(budget_bytes=3000),
              bm.truncated(4, 7), bm.online(slots=3)]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("strategy", STRATEGIES, ids=lambda s: s.name)
def test_profiling_changes_no_result_bitwise(rng, kind, dtype, strategy):
    model, params, xs, ys = _problem(rng, kind, 23, dtype)
    plain = strategy.run(model, params, xs, ys)
    for products in (True, False):
        p = bm.Profile(products=products)
        res = strategy.run(model, params, xs, ys, profile=p)
        assert _same(plain, res)
        assert res.stats.forward_steps == plain.stats.forward_steps
        assert res.stats.peak_bytes == plain.stats.peak_bytes
        assert p.forward_seconds > 0 and p.backward_seconds > 0
        # the phases are timed inside the run, the products inside the phases
        assert p.forward_seconds + p.backward_seconds <= res.stats.seconds
        assert p.product_seconds <= p.forward_seconds + p.backward_seconds
        assert (p.product_count > 0) == products


def test_no_phase_seconds_in_stats_extra(rng):
    """Where the time went is the Profile's answer, not a field of Stats."""
    model, params, xs, ys = _problem(rng, "lstm", 10, np.float64)
    for st in STRATEGIES:
        extra = st.run(model, params, xs, ys, profile=bm.Profile()).stats.extra
        assert not {"forward_seconds", "backward_seconds"} & set(extra)


def _expected_products(kind, T):
    """full()'s matrix products, from the kernels' structure (NOTE [chunked products]):
    its one Record runs T steps a chunk at a time from step 0, its one Reverse gathers
    gradients in windows of CHUNK_STEPS steps on a grid from the end, each read out once.

    - per chunk: the input projection [x 1]·[W_ihᵀ; b] (NOTE [bias row]);
    - per step: h·W_hhᵀ going forward, dpre·W_hh going back;
    - per window: dW_hh, dW_ih and db (a row of ones; GRU's b_hh, gated by r, has its
      own rows: one more), and the readout's o, dL/dh, dW_out and db_out.

    Flops, 2·m·n·k per block, summed over all rows whatever the chunking: T·B rows go
    through each per-chunk and per-window product.
    """
    cell = bm.CELLS[kind](I, H)
    G, gated_bias = cell.n_gates, not cell.bias_hh_in_projection
    C = min(CHUNK_STEPS, T)
    chunks = windows = math.ceil(T / C)
    count = chunks + 2 * T + windows * (3 + gated_bias + 4)
    N = T * B  # rows
    flops = (2 * G * N * (I + 1) * H  # projections
             + 2 * (2 * T * G * B * H * H)  # the recurrence, forward and back
             + 2 * G * H * N * (H + I + 1 + gated_bias)  # weight and bias gradients
             + N * (3 * 2 * H * O + 2 * O))  # readout: o, dL/dh, dW_out; db_out
    return count, flops


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("T", [1, 16, 20, 48])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_full_makes_the_products_its_kernels_say(rng, kind, T, dtype):
    model, params, xs, ys = _problem(rng, kind, T, dtype)
    p = bm.Profile()
    bm.full().run(model, params, xs, ys, profile=p)
    assert p.complete and p.unmeasured == ()
    assert (p.product_count, p.product_flops) == _expected_products(kind, T)


@pytest.mark.parametrize("kind", KINDS)
def test_recomputation_adds_one_recurrent_product_per_forward_step(rng, kind):
    """A checkpointing strategy's cell products beyond full()'s: h·W_hhᵀ per extra forward
    step, and a projection per chunk of each of its Advance and Record actions."""
    T = 40
    model, params, xs, ys = _problem(rng, kind, T, np.float64)
    p_full, p_uni = bm.Profile(), bm.Profile()
    full = bm.full().run(model, params, xs, ys, profile=p_full)
    uni = bm.uniform(every=10).run(model, params, xs, ys, profile=p_uni)
    plan = bm.uniform(every=10).schedule(T)
    chunks = sum(math.ceil((a.n1 - a.n0) / CHUNK_STEPS) for a in plan
                 if isinstance(a, (bm.Advance, bm.Record)))
    # the backward half (vjp, windows, readout) is the same products: every segment of
    # 10 steps is reversed whole, and each window of 16 is read out in its segments' pieces
    extra_forward = uni.stats.forward_steps - full.stats.forward_steps
    extra_chunks = chunks - math.ceil(T / CHUNK_STEPS)
    extra_reads = p_uni.product_count - p_full.product_count - extra_forward - extra_chunks
    assert extra_forward == bm.uniform(every=10).forward_steps(T) - T
    assert extra_chunks > 0
    assert extra_reads >= 0 and extra_reads % 2 == 0  # o and dL/dh per extra readout piece


def test_a_profile_is_cleared_by_each_run(rng):
    model, params, xs, ys = _problem(rng, "gru", 20, np.float64)
    p = bm.Profile()
    bm.full().run(model, params, xs, ys, profile=p)
    first = (p.product_count, p.product_flops)
    bm.full().run(model, params, xs, ys, profile=p)
    assert (p.product_count, p.product_flops) == first


class _OwnKernels(bm.PlainKernels):
    """A user's Kernels that knows nothing of profiling."""


class _IndRNNOwnKernels(IndRNN):
    def kernels(self, params, batch, grads, rows):  # the protocol's signature as it was
        return _OwnKernels(self, params, grads, batch)


@pytest.mark.parametrize("make", [IndRNN, _IndRNNOwnKernels,
                                  lambda i, h: bm.lstm(i, h, num_layers=2)],
                         ids=["no kernels", "own kernels", "stack"])
@pytest.mark.parametrize("strategy", [bm.full(), bm.binomial(slots=2)], ids=lambda s: s.name)
def test_a_cell_whose_kernels_cannot_route_runs_and_is_reported_unmeasured(rng, make, strategy):
    T = 20
    cell = make(I, H)
    model, params, xs, ys = _problem(rng, None, T, np.float64, cell=cell)
    plain = strategy.run(model, params, xs, ys)
    p = bm.Profile()
    res = strategy.run(model, params, xs, ys, profile=p)
    assert _same(plain, res)
    assert not p.complete and len(p.unmeasured) == 1
    assert cell.name in p.unmeasured[0] and "route_products" in p.unmeasured[0]
    assert p.forward_seconds > 0 and p.backward_seconds > 0
    if strategy == bm.full():  # the readout's alone: o, dL/dh, dW_out, db_out per window
        assert p.product_count == 4 * math.ceil(T / CHUNK_STEPS)


def test_truncated_and_a_streams_forward_pass_are_reported_unmeasured(rng):
    model, params, xs, ys = _problem(rng, "lstm", 20, np.float64)
    p = bm.Profile()
    bm.truncated(5).run(model, params, xs, ys, profile=p)
    assert not p.complete and "truncated(k1=5, k2=5)" in p.unmeasured[0]
    assert p.product_count > 0  # the readout's
    st = bm.online(slots=3)
    ref = st.stream(model, params, zip(xs, ys))
    res = st.stream(model, params, zip(xs, ys), profile=p)
    assert _same(ref, res)
    assert not p.complete and p.unmeasured[0].startswith("online(slots=3).stream")
    assert p.forward_seconds + p.backward_seconds <= res.stats.seconds


def test_products_false_times_phases_only(rng):
    model, params, xs, ys = _problem(rng, "vanilla", 20, np.float32)
    p = bm.Profile(products=False)
    bm.binomial(slots=2).run(model, params, xs, ys, profile=p)
    assert (p.product_count, p.product_flops, p.product_seconds) == (0, 0, 0.0)
    assert not p.complete and "products=False" in p.unmeasured[0]
    assert p.forward_seconds > 0 and p.backward_seconds > 0


def test_execute_takes_a_profile(rng):
    model, params, xs, ys = _problem(rng, "gru", 20, np.float64)
    p = bm.Profile()
    res = bm.execute(bm.full().schedule(20), model, params, xs, ys, profile=p)
    assert p.complete and (p.product_count, p.product_flops) == _expected_products("gru", 20)
    assert p.forward_seconds + p.backward_seconds <= res.stats.seconds


def test_bad_profile_arguments_are_named(rng):
    model, params, xs, ys = _problem(rng, "vanilla", 4, np.float64)
    for call, where in [
        (lambda: bm.full().run(model, params, xs, ys, profile=True), "full().run(profile="),
        (lambda: bm.truncated(2).run(model, params, xs, ys, profile="yes"),
         "truncated(k1=2, k2=2).run(profile="),
        (lambda: bm.execute(bm.full().schedule(4), model, params, xs, ys, profile=bm.Profile),
         "execute(profile="),
        (lambda: bm.online(2).stream(model, params, zip(xs, ys), profile={}),
         "online(slots=2).stream(profile="),
    ]:
        with pytest.raises(TypeError, match=r"expected a bm\.Profile or None") as e:
            call()
        assert where in str(e.value)
    with pytest.raises(TypeError, match=r"Profile\(products='no'\)"):
        bm.Profile(products="no")  # type: ignore[arg-type]


def test_flops_of_broadcast_and_vector_products():
    p = bm.Profile()
    a, b = np.ones((3, 4, 5)), np.ones((5, 6))
    assert np.array_equal(p.matmul(a, b), np.matmul(a, b))
    assert p.product_flops == 2 * 3 * 4 * 6 * 5
    out = np.empty((2, 6))
    assert p.matmul(np.ones(5), np.ones((2, 5, 6)), out=out) is out  # a row of ones, batched
    assert p.product_flops == 2 * 3 * 4 * 6 * 5 + 2 * 2 * 6 * 5
    assert p.product_count == 2
