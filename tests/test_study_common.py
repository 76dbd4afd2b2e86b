"""The studies' shared helpers."""

import pytest
from threadpoolctl import threadpool_info, threadpool_limits

from studies import _common


def test_provenance_states_the_blas_threads_the_measurements_used():
    """A report measured under `pinned_blas(1)` must not claim the process's own count."""
    if not any(i.get("user_api") == "blas" for i in threadpool_info()):
        pytest.skip("numpy has no BLAS threadpool here: the line says 'unknown'")
    with threadpool_limits(limits=2, user_api="blas"):
        assert "(2 threads)" in _common.provenance("cmd")
        assert "(1 thread for the measurements, 2 otherwise)" in _common.provenance("cmd", pinned=1)
        assert "(2 threads for the measurements)" in _common.provenance("cmd", pinned=2)
    with threadpool_limits(limits=1, user_api="blas"):
        assert "(1 thread)" in _common.provenance("cmd")
