"""One pytree comparison for every test: structure, shapes, dtypes, and close values."""

import jax
import numpy as np

# Tolerances per dtype: float32 results are compared loosely, float64 tightly.
TOLERANCES = {
    np.dtype(np.float64): dict(rtol=1e-10, atol=1e-10),
    np.dtype(np.float32): dict(rtol=2e-4, atol=2e-4),
    np.dtype(jax.numpy.bfloat16): dict(rtol=5e-2, atol=5e-2),
}


def assert_trees_close(actual, expected, *, rtol=None, atol=None):
    """Asserts two pytrees have the same structure, shapes and dtypes, and close values.

    Tolerances default to the dtype's entry in TOLERANCES; explicit ones override it.
    """
    actual_tree = jax.tree_util.tree_structure(actual)
    expected_tree = jax.tree_util.tree_structure(expected)
    assert actual_tree == expected_tree, f"structure {actual_tree} != {expected_tree}"
    for a, e in zip(jax.tree_util.tree_leaves(actual), jax.tree_util.tree_leaves(expected)):
        a, e = np.asarray(a), np.asarray(e)
        assert a.shape == e.shape, f"shape {a.shape} != {e.shape}"
        assert a.dtype == e.dtype, f"dtype {a.dtype} != {e.dtype}"
        tol = dict(TOLERANCES.get(a.dtype, TOLERANCES[np.dtype(np.float32)]))
        if rtol is not None:
            tol["rtol"] = rtol
        if atol is not None:
            tol["atol"] = atol
        np.testing.assert_allclose(a.astype(np.float64), e.astype(np.float64), **tol)
