"""Model: init, and input checking that fails before any work with the argument named.

Each bad input has its own test. Every run-time case goes through several strategies
while the cells' kernels are patched to fail the test if called: the error must come
from `Model.check`, before a single step runs.
"""

import math
import re

import numpy as np
import pytest

import bptt_memory as bm

T, B, N_IN, H, N_OUT = 4, 3, 2, 5, 3

# Cheap strategies with different run paths: the executor, a checkpointing schedule,
# truncated's ring buffer; plus the reference, which checks with the same rules.
RUNNERS = {
    "full": lambda m, p, xs, ys, **kw: bm.full().run(m, p, xs, ys, **kw),
    "binomial": lambda m, p, xs, ys, **kw: bm.binomial(slots=2).run(m, p, xs, ys, **kw),
    "truncated": lambda m, p, xs, ys, **kw: bm.truncated(2, 3).run(m, p, xs, ys, **kw),
    "reference": lambda m, p, xs, ys, **kw: bm.reference_gradients(m, p, xs, ys, **kw),
}


def _forbid_cell_work(monkeypatch):
    def no_work(*args, **kwargs):
        raise AssertionError("a cell kernel ran before the input was rejected")

    for name in ("step", "record", "vjp", "residual_output", "enter", "kernels"):
        monkeypatch.setattr(bm.cells.Gated, name, no_work)


@pytest.fixture(params=sorted(RUNNERS))
def run(request, monkeypatch):
    """A strategy's run, with every cell kernel patched to fail if reached."""
    _forbid_cell_work(monkeypatch)
    return RUNNERS[request.param]


def _problem(rng, kind="gru", loss="mse", dtype=np.float64):
    cell = {"vanilla": bm.vanilla, "lstm": bm.lstm, "gru": bm.gru}[kind](N_IN, H)
    model = bm.Model(cell, n_out=N_OUT, loss=loss)
    params = model.init(rng, dtype)
    xs = rng.standard_normal((T, B, N_IN)).astype(dtype)
    if loss == "mse":
        ys = rng.standard_normal((T, B, N_OUT)).astype(dtype)
    else:
        ys = rng.integers(0, N_OUT, size=(T, B))
    return model, params, xs, ys


@pytest.mark.parametrize("strategy", sorted(set(RUNNERS) - {"reference"}))
def test_the_no_work_guard_bites(rng, monkeypatch, strategy):
    """Valid input does reach the (patched) kernels, so the tests below prove "before any work"."""
    _forbid_cell_work(monkeypatch)
    model, params, xs, ys = _problem(rng)
    with pytest.raises(AssertionError, match="before the input was rejected"):
        RUNNERS[strategy](model, params, xs, ys)


# ---- init


@pytest.mark.parametrize("kind", ["vanilla", "lstm", "gru"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_init_shapes_dtypes_and_pytorch_bound(kind, dtype):
    H_big = 16
    cell = {"vanilla": bm.vanilla, "lstm": bm.lstm, "gru": bm.gru}[kind](7, H_big)
    model = bm.Model(cell, n_out=5)
    params = model.init(np.random.default_rng(0), dtype)
    G = {"vanilla": 1, "lstm": 4, "gru": 3}[kind]
    assert {k: v.shape for k, v in params.items()} == {
        "weight_ih": (G * H_big, 7), "weight_hh": (G * H_big, H_big), "bias_ih": (G * H_big,),
        "bias_hh": (G * H_big,), "weight_out": (5, H_big), "bias_out": (5,),
    }
    assert params.keys() == model.param_shapes().keys()
    bound = 1.0 / math.sqrt(H_big)
    everything = np.concatenate([p.ravel() for p in params.values()]).astype(np.float64)
    for name, p in params.items():
        assert p.dtype == dtype, name
        assert np.all(np.abs(p) <= bound), name
    # the draw fills the interval: not a narrower one, not all positive
    assert everything.max() > 0.95 * bound and everything.min() < -0.95 * bound
    assert abs(everything.mean()) < 0.1 * bound


def test_init_same_seed_gives_bitwise_the_same_params():
    model = bm.Model(bm.lstm(3, 4), n_out=2)
    a = model.init(np.random.default_rng(42))
    b = model.init(np.random.default_rng(42))
    c = model.init(np.random.default_rng(43))
    assert a.keys() == b.keys()
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not all(np.array_equal(a[k], c[k]) for k in a)


def test_init_needs_a_generator():
    model = bm.Model(bm.gru(3, 4), n_out=2)
    with pytest.raises(TypeError, match="rng"):
        model.init(42)


@pytest.mark.parametrize("dtype", [np.int64, np.float16, "not a dtype"])
def test_init_rejects_unsupported_dtypes(dtype):
    model = bm.Model(bm.gru(3, 4), n_out=2)
    with pytest.raises(TypeError, match="dtype"):
        model.init(np.random.default_rng(0), dtype)


def test_zero_state_has_one_array_per_state_component():
    model = bm.Model(bm.lstm(3, 4), n_out=2)
    h0 = model.zero_state(5, np.float32)
    assert len(h0) == 2
    assert all(a.shape == (5, 4) and a.dtype == np.float32 and not a.any() for a in h0)


def test_check_returns_defaults_for_h0_and_mask(rng):
    model, params, xs, ys = _problem(rng, kind="lstm")
    xs2, ys2, h0, mask = model.check(params, xs, ys, None, None)
    assert xs2 is xs and ys2 is ys
    assert len(h0) == 2 and all(a.shape == (B, H) and not a.any() for a in h0)
    assert mask.shape == (T, B) and mask.dtype == xs.dtype and np.all(mask == 1.0)


def test_a_bool_mask_is_accepted_as_weights(rng):
    model, params, xs, ys = _problem(rng)
    mask = np.ones((T, B), bool)
    mask[0, 0] = False
    _, _, _, checked = model.check(params, xs, ys, None, mask)
    assert checked.dtype == xs.dtype and checked[0, 0] == 0.0 and checked.sum() == T * B - 1


def test_a_bare_array_is_accepted_as_h0_for_a_one_component_state(rng):
    model, params, xs, ys = _problem(rng, kind="gru")
    h0 = rng.standard_normal((B, H))
    _, _, checked, _ = model.check(params, xs, ys, h0, None)
    assert len(checked) == 1 and checked[0] is h0


# ---- construction errors: the message names the argument


def test_unknown_activation():
    with pytest.raises(ValueError, match=r"activation='gelu'"):
        bm.vanilla(N_IN, H, activation="gelu")


def test_unknown_loss():
    with pytest.raises(ValueError, match=r"loss='hinge'"):
        bm.Model(bm.gru(N_IN, H), n_out=N_OUT, loss="hinge")


def test_model_needs_a_cell():
    with pytest.raises(TypeError, match="cell"):
        bm.Model("gru", n_out=N_OUT)


@pytest.mark.parametrize("n_out", [0, -2])
def test_model_needs_a_positive_n_out(n_out):
    with pytest.raises(ValueError, match="n_out"):
        bm.Model(bm.gru(N_IN, H), n_out=n_out)


@pytest.mark.parametrize("k1", [0, -1])
def test_truncated_k1_below_1(k1):
    with pytest.raises(ValueError, match="k1"):
        bm.truncated(k1)


def test_truncated_k1_not_an_int():
    with pytest.raises(TypeError, match="k1"):
        bm.truncated(2.0)


def test_truncated_k2_below_k1():
    with pytest.raises(ValueError, match=r"k2 < k1"):
        bm.truncated(4, 3)


# ---- run-time errors: one test per bad input, each before any work


def test_xs_wrong_ndim(rng, run):
    model, params, xs, ys = _problem(rng)
    with pytest.raises(ValueError, match=r"^xs: expected 3 dims"):
        run(model, params, xs[:, 0], ys)


def test_xs_not_an_array(rng, run):
    model, params, xs, ys = _problem(rng)
    with pytest.raises(TypeError, match=r"^xs"):
        run(model, params, xs.tolist(), ys)


def test_xs_wrong_n_in(rng, run):
    model, params, xs, ys = _problem(rng)
    with pytest.raises(ValueError, match=r"^xs: last dim is 3.*n_in=2"):
        run(model, params, np.concatenate([xs, xs[..., :1]], axis=2), ys)


def test_empty_sequence(rng, run):
    model, params, xs, ys = _problem(rng)
    with pytest.raises(ValueError, match=r"^xs: the sequence is empty \(T = 0\)"):
        run(model, params, xs[:0], ys[:0])


def test_empty_batch(rng, run):
    model, params, xs, ys = _problem(rng)
    with pytest.raises(ValueError, match=r"^xs: the batch is empty"):
        run(model, params, xs[:, :0], ys[:, :0])


@pytest.mark.parametrize("bad", ["short", "n_out", "ndim"])
def test_ys_wrong_shape_mse(rng, run, bad):
    model, params, xs, ys = _problem(rng, loss="mse")
    ys = {"short": ys[:-1], "n_out": ys[..., :-1], "ndim": ys[..., 0]}[bad]
    with pytest.raises(ValueError, match=r"^ys: shape .*mse needs \(T, B, n_out\)"):
        run(model, params, xs, ys)


@pytest.mark.parametrize("bad", ["short", "3d"])
def test_ys_wrong_shape_cross_entropy(rng, run, bad):
    model, params, xs, ys = _problem(rng, loss="cross_entropy")
    ys = {"short": ys[:, :-1], "3d": ys[..., None]}[bad]
    with pytest.raises(ValueError,
                       match=r"^ys: shape .*cross_entropy needs integer labels \(T, B\)"):
        run(model, params, xs, ys)


def test_ys_dtype_mismatch_mse(rng, run):
    model, params, xs, ys = _problem(rng, loss="mse")
    with pytest.raises(TypeError, match=r"^ys: dtype float32"):
        run(model, params, xs, ys.astype(np.float32))


def test_ys_non_finite_mse(rng, run):
    model, params, xs, ys = _problem(rng, loss="mse")
    ys[1, 0, 0] = np.inf
    with pytest.raises(ValueError, match=r"^ys: contains NaN or inf"):
        run(model, params, xs, ys)


@pytest.mark.parametrize("label", [-1, N_OUT])
def test_labels_out_of_range(rng, run, label):
    model, params, xs, ys = _problem(rng, loss="cross_entropy")
    ys[2, 1] = label
    with pytest.raises(ValueError, match=re.escape(f"ys: labels must lie in [0, n_out={N_OUT})")):
        run(model, params, xs, ys)


@pytest.mark.parametrize("dtype", [np.float64, np.bool_])
def test_labels_not_integer(rng, run, dtype):
    model, params, xs, ys = _problem(rng, loss="cross_entropy")
    with pytest.raises(TypeError, match=r"^ys: cross_entropy needs integer class labels"):
        run(model, params, xs, ys.astype(dtype))


@pytest.mark.parametrize("shape", [(T, B + 1), (T,), (T, B, 1)])
def test_mask_wrong_shape(rng, run, shape):
    model, params, xs, ys = _problem(rng)
    msg = f"mask: shape {shape}, needs (T, B) = {(T, B)}"
    with pytest.raises(ValueError, match=re.escape(msg)):
        run(model, params, xs, ys, mask=np.ones(shape))


def test_mask_non_finite(rng, run):
    model, params, xs, ys = _problem(rng)
    mask = np.ones((T, B))
    mask[0, 1] = np.nan
    with pytest.raises(ValueError, match=r"^mask: contains NaN or inf"):
        run(model, params, xs, ys, mask=mask)


def test_mask_not_numeric(rng, run):
    model, params, xs, ys = _problem(rng)
    with pytest.raises(TypeError, match=r"^mask"):
        run(model, params, xs, ys, mask=np.full((T, B), "1"))


@pytest.mark.parametrize("kind", ["gru", "lstm"])
def test_h0_wrong_shape(rng, run, kind):
    model, params, xs, ys = _problem(rng, kind=kind)
    h0 = tuple(np.zeros((B, H + 1)) for _ in model.cell.state_names)
    msg = f"h0 (h): shape {(B, H + 1)}, {kind} needs {(B, H)}"
    with pytest.raises(ValueError, match=re.escape(msg)):
        run(model, params, xs, ys, h0=h0)


def test_h0_wrong_shape_of_the_cell_state(rng, run):
    model, params, xs, ys = _problem(rng, kind="lstm")
    h0 = (np.zeros((B, H)), np.zeros((B + 1, H)))
    with pytest.raises(ValueError, match=r"^h0 \(c\): shape"):
        run(model, params, xs, ys, h0=h0)


@pytest.mark.parametrize("h0", ["one array", "one-tuple", "three-tuple", "list"])
def test_h0_wrong_number_of_components_for_lstm(rng, run, h0):
    model, params, xs, ys = _problem(rng, kind="lstm")
    z = np.zeros((B, H))
    h0 = {"one array": z, "one-tuple": (z,), "three-tuple": (z, z, z), "list": [z, z]}[h0]
    with pytest.raises(ValueError, match=r"^h0: expected a tuple of 2 arrays \('h', 'c'\) "
                                         r"shaped .* for lstm"):
        run(model, params, xs, ys, h0=h0)


def test_h0_dtype_mismatch(rng, run):
    model, params, xs, ys = _problem(rng, kind="gru")
    with pytest.raises(TypeError, match=r"^h0 \(h\): dtype float32"):
        run(model, params, xs, ys, h0=(np.zeros((B, H), np.float32),))


def test_h0_non_finite(rng, run):
    model, params, xs, ys = _problem(rng, kind="lstm")
    c0 = np.zeros((B, H))
    c0[0, 0] = np.nan
    with pytest.raises(ValueError, match=r"^h0 \(c\): contains NaN or inf"):
        run(model, params, xs, ys, h0=(np.zeros((B, H)), c0))


def test_params_not_a_dict(rng, run):
    model, params, xs, ys = _problem(rng)
    with pytest.raises(TypeError, match=r"^params"):
        run(model, list(params.values()), xs, ys)


def test_params_missing_key(rng, run):
    model, params, xs, ys = _problem(rng)
    del params["bias_hh"]
    with pytest.raises(ValueError,
                       match=r"^params: keys do not match the model \(missing \['bias_hh'\]"):
        run(model, params, xs, ys)


def test_params_extra_key(rng, run):
    model, params, xs, ys = _problem(rng)
    params["weight_hr"] = np.zeros((H, H))
    with pytest.raises(ValueError,
                       match=r"^params: keys do not match .*unexpected \['weight_hr'\]"):
        run(model, params, xs, ys)


@pytest.mark.parametrize("name", ["weight_ih", "weight_hh", "bias_hh", "weight_out", "bias_out"])
def test_param_wrong_shape(rng, run, name):
    model, params, xs, ys = _problem(rng)
    params[name] = params[name][..., :-1]
    with pytest.raises(ValueError, match=re.escape(f"params[{name!r}]: shape")):
        run(model, params, xs, ys)


def test_param_not_an_array(rng, run):
    model, params, xs, ys = _problem(rng)
    params["bias_out"] = params["bias_out"].tolist()
    with pytest.raises(TypeError, match=re.escape("params['bias_out']: expected a numpy array")):
        run(model, params, xs, ys)


def test_params_with_mixed_dtypes(rng, run):
    model, params, xs, ys = _problem(rng)
    params["weight_out"] = params["weight_out"].astype(np.float32)
    with pytest.raises(TypeError, match=re.escape("params['weight_out']: dtype float32 differs")):
        run(model, params, xs, ys)


def test_params_of_an_unsupported_dtype(rng, run):
    model, params, xs, ys = _problem(rng)
    params = {k: v.astype(np.float16) for k, v in params.items()}
    with pytest.raises(TypeError, match=r"^params\['weight_ih'\]: dtype float16 is not supported"):
        run(model, params, xs.astype(np.float16), ys.astype(np.float16))


def test_dtype_mismatch_float64_params_float32_xs(rng, run):
    model, params, xs, ys = _problem(rng, dtype=np.float64)
    with pytest.raises(TypeError, match=r"^xs: dtype float32 differs from params' float64"):
        run(model, params, xs.astype(np.float32), ys)


def test_dtype_mismatch_float32_params_float64_xs(rng, run):
    model, params, xs, ys = _problem(rng, dtype=np.float32)
    with pytest.raises(TypeError, match=r"^xs: dtype float64 differs from params' float32"):
        run(model, params, xs.astype(np.float64), ys)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_xs_non_finite(rng, run, bad):
    model, params, xs, ys = _problem(rng)
    xs[T - 1, B - 1, 0] = bad
    with pytest.raises(ValueError, match=r"^xs: contains NaN or inf"):
        run(model, params, xs, ys)


@pytest.mark.parametrize("name", ["weight_hh", "bias_out"])
def test_params_non_finite(rng, run, name):
    model, params, xs, ys = _problem(rng)
    params[name].flat[0] = np.nan
    with pytest.raises(ValueError, match=re.escape(f"params[{name!r}]: contains NaN or inf")):
        run(model, params, xs, ys)
