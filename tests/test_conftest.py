"""The comparison helper itself: it must fail on every kind of mismatch."""

import jax.numpy as jnp
import numpy as np
import pytest
from conftest import assert_trees_close


def test_equal_trees_pass():
    x = jnp.ones(2, jnp.float32)
    assert_trees_close({"a": x}, {"a": x + 1e-7})


@pytest.mark.parametrize(
    ("actual", "expected"),
    [
        ({"a": np.ones(2)}, {"b": np.ones(2)}),  # structure
        ((np.ones(2),), [np.ones(2)]),  # container type
        (np.ones(2), np.ones(3)),  # shape
        (np.ones(2, np.float32), np.ones(2, np.float64)),  # dtype
        (np.ones(2, np.float32), np.array([1.0, 1.01], np.float32)),  # beyond float32 rtol
        (np.zeros(2), np.full(2, 1e-8)),  # beyond float64 atol
    ],
)
def test_mismatches_fail(actual, expected):
    with pytest.raises(AssertionError):
        assert_trees_close(actual, expected)


def test_explicit_tolerances_override():
    a, e = np.array([1.0]), np.array([1.1])
    assert_trees_close(a, e, rtol=0.2)
    with pytest.raises(AssertionError):
        assert_trees_close(a, e, rtol=0.01, atol=0.0)
