"""The comparison helper itself: it must fail on every kind of mismatch."""

import jax.numpy as jnp
import numpy as np
import pytest
from conftest import assert_trees_close


def test_equal_trees_pass():
    assert_trees_close({"a": jnp.ones(2)}, {"a": jnp.ones(2) + 1e-7})


@pytest.mark.parametrize(
    ("actual", "expected"),
    [
        ({"a": jnp.ones(2)}, {"b": jnp.ones(2)}),  # structure
        ((jnp.ones(2),), [jnp.ones(2)]),  # container type
        (jnp.ones(2), jnp.ones(3)),  # shape
        (jnp.ones(2, jnp.float32), jnp.ones(2, jnp.float64)),  # dtype
        (jnp.ones(2), jnp.array([1.0, 1.01])),  # value beyond float32 rtol
        (jnp.zeros(2, jnp.float64), jnp.full(2, 1e-8)),  # value beyond float64 atol
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
