"""Operators over batches streamed from a host iterable: the full-data operator, exactly.

Each product reads the loader again; unequal batches are weighted by their sizes. The
reference is the same operator on all the data at once (dense jax where small). curvlinops
on the same unequal loader: tests/test_curvlinops.py::test_streamed_unequal_batches.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.sparse.linalg
from conftest import assert_trees_close

import jaxhvp
import jaxhvp.spectrum
from jaxhvp.operators import stream

rng = np.random.default_rng(0)
X, Y = rng.normal(size=(23, 5)), rng.normal(size=(23, 3))
LOADER = [(X[i : i + 8], Y[i : i + 8]) for i in range(0, 23, 8)]  # 8, 8 and 7 examples


def params():
    return {"w": jnp.asarray(rng.normal(size=(5, 3))), "b": jnp.asarray(rng.normal(size=3))}


def model(p, batch):
    return jnp.tanh(batch[0] @ p["w"] + p["b"])


def loss(p, batch):
    return jnp.mean((model(p, batch) - batch[1]) ** 2)


def squared(out, batch):
    return jnp.sum((out - batch[1]) ** 2, axis=-1)


def full(fn):
    return lambda p: fn(p, (X, Y))


def test_hessian_value_grad_and_products():
    p = params()
    op = jaxhvp.hessian_operator(loss, p, batches=stream(LOADER, num_data=23))
    reference = jaxhvp.hessian_operator(full(loss), p)
    v = jax.tree_util.tree_map(jnp.ones_like, p)
    assert_trees_close(op @ v, reference @ v)
    assert_trees_close(op.value, reference.value)
    assert_trees_close(op.grad, reference.grad)
    assert_trees_close(op.as_matrix(), reference.as_matrix())
    stacked = jax.tree_util.tree_map(lambda x, y: jnp.stack([x, 2 * y]), v, v)
    assert_trees_close(op.matmat(stacked), reference.matmat(stacked))
    assert op.num_data == 23 and op.psd is False


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_output_space_operators(reduction):
    p = params()
    v = jax.tree_util.tree_map(jnp.ones_like, p)
    streamed = jaxhvp.empirical_fisher_operator(
        model, squared, p, batches=stream(LOADER), reduction=reduction
    )
    reference = jaxhvp.empirical_fisher_operator(
        full(model), lambda out: squared(out, (X, Y)), p, reduction=reduction
    )
    assert_trees_close(streamed @ v, reference @ v)
    assert_trees_close(streamed.value, reference.value)
    fisher = jaxhvp.fisher_operator(
        model, p, likelihood="gaussian", batches=stream(LOADER), reduction=reduction
    )
    exact = jaxhvp.fisher_operator(full(model), p, likelihood="gaussian", reduction=reduction)
    assert_trees_close(fisher @ v, exact @ v)
    assert fisher.value is None and fisher.psd


def test_scipy_eigsh_streams_too():
    p = params()
    op = jaxhvp.ggn_operator(
        model, lambda o, b: jnp.mean((o - b[1]) ** 2), p, batches=stream(LOADER)
    )
    dense = np.asarray(
        jaxhvp.ggn_operator(full(model), lambda o: jnp.mean((o - Y) ** 2), p).as_matrix()
    )
    top = scipy.sparse.linalg.eigsh(op.as_scipy(), k=2, which="LA")[0]
    np.testing.assert_allclose(np.sort(top), np.linalg.eigvalsh(dense)[-2:], rtol=1e-8)


def test_one_kernel_per_batch_shape():
    p = params()
    op = jaxhvp.hessian_operator(loss, p, batches=stream(LOADER))
    v = jax.tree_util.tree_map(jnp.ones_like, p)
    op @ v
    before = jaxhvp.cache_info().compilations
    for _ in range(3):
        op @ v
    assert jaxhvp.cache_info().compilations == before  # 8-example and 7-example kernels reused


def test_traced_uses_are_refused_with_the_fix():
    p = params()
    op = jaxhvp.hessian_operator(loss, p, batches=stream(LOADER))
    with pytest.raises(jaxhvp.HVPError, match="stacked on a leading axis"):
        jaxhvp.solve(op, p)
    with pytest.raises(jaxhvp.HVPError, match="cannot be traced"):
        jax.jit(lambda op, v: op._product(v))(op, p)
    with pytest.raises(jaxhvp.HVPError, match="cannot be traced"):  # the data not baked in
        jaxhvp.spectrum.eigenvalues(op, key=jax.random.key(0))
    for combined in (op + 0.1, op + op, op.block(lambda q: q["b"])):
        with pytest.raises(jaxhvp.HVPError, match="nor inside a sum, a damping or a block"):
            combined @ jax.tree_util.tree_map(jnp.ones_like, combined.like)


def test_stream_errors():
    with pytest.raises(TypeError, match="can be read once"):
        stream(iter(LOADER))
    with pytest.raises(TypeError, match="num_data given to stream"):
        stream(LOADER, num_data=0)
    with pytest.raises(TypeError, match="batch_size_fn given to stream must be callable"):
        stream(LOADER, batch_size_fn=3)
    with pytest.raises(jaxhvp.HVPError, match="does not match the 23 examples"):
        jaxhvp.hessian_operator(loss, params(), batches=stream(LOADER, num_data=24))
    with pytest.raises(jaxhvp.HVPError, match="yielded no batches"):
        jaxhvp.hessian_operator(loss, params(), batches=stream([]))
    odd = [({"scale": np.ones(1), "x": x}, y) for x, y in LOADER]
    with pytest.raises(jaxhvp.HVPError, match="its number of examples is not known"):
        jaxhvp.hessian_operator(
            lambda p, b: loss(p, (b[0]["x"], b[1])), params(), batches=stream(odd)
        )
    with pytest.raises(jaxhvp.HVPError, match="needs the parameters placed on a mesh"):
        jaxhvp.hessian_operator(loss, params(), batches=stream(LOADER), data_axis="data")


def test_batch_size_fn_weights():
    """Weights come from batch_size_fn: counting each batch as one example gives the plain
    mean of the batch operators."""
    p = params()
    op = jaxhvp.hessian_operator(loss, p, batches=stream(LOADER, batch_size_fn=lambda b: 1))
    per_batch = [jaxhvp.hessian_operator(lambda q, b=b: loss(q, b), p).as_matrix() for b in LOADER]
    assert_trees_close(op.as_matrix(), sum(per_batch) / 3)
    assert op.num_data == 3


def test_exact_diagonal_is_the_full_data_diagonal():
    p = params()
    op = jaxhvp.hessian_operator(loss, p, batches=stream(LOADER))
    expected = jaxhvp.hessian_operator(full(loss), p).exact_diagonal()
    assert_trees_close(op.exact_diagonal(), expected)
    assert_trees_close(op.exact_diagonal(batch_size=4), expected)


class _OneIterator:
    """A loader whose ``__iter__`` hands back the same iterator: read once, then empty."""

    def __init__(self, batches):
        self.batches = iter(batches)

    def __iter__(self):
        return self.batches


class _Shrinking:
    """A loader whose later passes drop the last batch."""

    def __init__(self):
        self.passes = 0

    def __iter__(self):
        self.passes += 1
        return iter(LOADER if self.passes == 1 else LOADER[:-1])


@pytest.mark.parametrize("loader", [_OneIterator, _Shrinking], ids=["one-iterator", "shrinking"])
def test_a_pass_with_other_examples_raises(loader):
    p = params()
    op = jaxhvp.hessian_operator(
        loss, p, batches=stream(loader(LOADER) if loader is _OneIterator else loader())
    )
    v = jax.tree_util.tree_map(jnp.ones_like, p)
    with pytest.raises(jaxhvp.HVPError, match="examples at this product, but 23 when"):
        op @ v


def test_num_data_takes_integers_of_any_kind():
    assert stream(LOADER, num_data=np.int64(23)).num_data == 23
    for wrong in (True, 23.0, "23"):
        with pytest.raises(TypeError, match="num_data given to stream must be a positive int"):
            stream(LOADER, num_data=wrong)
    with pytest.raises(TypeError, match="stream needs an iterable of batches, but got int"):
        stream(3)


def test_streamed_monte_carlo_fisher_keys():
    """Batch b of a stream draws from fold_in(fold_in(key, b), 0) (its one slice), stacked
    batch b from fold_in(key, b): the documented derivation, pinned on one batch."""
    p, key = params(), jax.random.key(3)
    batch = jax.tree_util.tree_map(lambda x: jnp.asarray(x)[None], LOADER[0])
    kw = dict(likelihood="gaussian", mc_samples=1)
    streamed = jaxhvp.fisher_operator(model, p, batches=stream(LOADER[:1]), key=key, **kw)
    folded = jax.random.fold_in(key, 0)
    stacked = jaxhvp.fisher_operator(model, p, batches=batch, key=folded, **kw)
    assert_trees_close(streamed.as_matrix(), stacked.as_matrix())
    plain = jaxhvp.fisher_operator(model, p, batches=batch, key=key, **kw)
    assert not np.allclose(streamed.as_matrix(), plain.as_matrix())


def test_influence_refuses_streams():
    p = params()
    train = (jnp.asarray(X), jnp.asarray(Y))
    with pytest.raises(jaxhvp.HVPError, match="cannot be streamed: give them stacked"):
        jaxhvp.influence(lambda q, e: loss(q, (e[0][None], e[1][None])), p, stream(LOADER), train)


def test_a_loader_with_getitem_only():
    """Python iterates objects with __getitem__ alone (as iter() and for loops do)."""

    class Indexed:
        def __getitem__(self, i):
            return LOADER[i]

    p = params()
    op = jaxhvp.hessian_operator(loss, p, batches=stream(Indexed()))
    assert op.num_data == 23
    assert_trees_close(op.as_matrix(), jaxhvp.hessian_operator(full(loss), p).as_matrix())
