import numpy as np
import pytest


@pytest.fixture(autouse=True)
def _raise_on_float_errors():
    old = np.seterr(all="raise")
    yield
    np.seterr(**old)


@pytest.fixture
def rng():
    return np.random.default_rng(1234)
