"""Data-parallel operators on 8 devices: the single-device numbers, one all-reduce per product.

Batches whose leading (number-of-batches) axis is split over a mesh axis are scanned where
they live and added by one ``psum``; checked against the same operator on one device, and in
the compiled HLO (a reduction, no all-gather). Also inside ``shard_map`` with its default
checks, and streamed from a host iterable cut over the devices.
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import assert_trees_close, mesh_1d, mesh_2d
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import jaxhvp

NUM_BATCHES, BATCH = 16, 4


def _problem():
    rng = np.random.default_rng(0)
    params = {"w": jnp.asarray(rng.normal(size=(6, 4))), "b": jnp.asarray(rng.normal(size=4))}
    x = jnp.asarray(rng.normal(size=(NUM_BATCHES, BATCH, 6)))
    y = jnp.asarray(rng.integers(0, 4, size=(NUM_BATCHES, BATCH)))
    v = jax.tree_util.tree_map(lambda p: jnp.asarray(rng.normal(size=p.shape)), params)
    return params, (x, y), v


def model(params, batch):
    return jnp.tanh(batch[0] @ params["w"] + params["b"])


def cross_entropy(logits, batch):
    labels = jax.nn.one_hot(batch[1], logits.shape[-1])
    return -jnp.mean(jnp.sum(labels * jax.nn.log_softmax(logits), -1))


def per_example(logits, batch):
    labels = jax.nn.one_hot(batch[1], logits.shape[-1])
    return -jnp.sum(labels * jax.nn.log_softmax(logits), -1)


def loss(params, batch):
    return cross_entropy(model(params, batch), batch)


BUILDERS = {
    "hessian": lambda p, d, **kw: jaxhvp.hessian_operator(loss, p, batches=d, **kw),
    "ggn": lambda p, d, **kw: jaxhvp.ggn_operator(model, cross_entropy, p, batches=d, **kw),
    "fisher": lambda p, d, **kw: jaxhvp.fisher_operator(
        model, p, likelihood="categorical", batches=d, **kw
    ),
    "fisher_mc": lambda p, d, **kw: jaxhvp.fisher_operator(
        model, p, likelihood="categorical", batches=d, mc_samples=2, key=jax.random.key(3), **kw
    ),
    "empirical_fisher_sum": lambda p, d, **kw: jaxhvp.empirical_fisher_operator(
        model, per_example, p, batches=d, reduction="sum", **kw
    ),
}


def _collectives(hlo):
    return {
        name: len(re.findall(rf"\b{name}(?:-start)?\(", hlo))
        for name in ("all-reduce", "all-gather", "all-to-all", "collective-permute")
    }


def _placed(mesh, params, batches, v):
    replicated = NamedSharding(mesh, P())
    return (
        jax.device_put(params, replicated),
        jax.device_put(batches, NamedSharding(mesh, P("data"))),
        jax.device_put(v, replicated),
    )


@pytest.mark.parametrize("kind", sorted(BUILDERS))
def test_split_batches_give_single_device_products(kind, axis_type):
    params, batches, v = _problem()
    build = BUILDERS[kind]
    reference = build(params, batches)
    mesh = mesh_1d(axis_type)
    p, d, u = _placed(mesh, params, batches, v)
    op = build(p, d)  # the split is read from the batches' sharding
    assert_trees_close(op @ u, reference @ v)
    assert_trees_close(op.value, reference.value)
    assert_trees_close(op.grad, reference.grad)
    # one sampled batch per device, for LiSSA: the mean of those batches' products
    sampled = jax.jit(lambda op, u: op._batch_product(u, jnp.asarray(1)))(op, u)
    picked = jax.tree_util.tree_map(lambda x: x[1::2], batches)  # batch 1 of each device's 2
    expected = build(params, picked) @ v
    if kind == "empirical_fisher_sum":  # a sum over batches: the estimate is scaled up
        expected = jax.tree_util.tree_map(lambda x: x * 2, expected)
    if kind != "fisher_mc":  # its labels are drawn per global batch index: other batches
        assert_trees_close(sampled, expected)


@pytest.mark.parametrize("kind", ["hessian", "ggn"])
def test_product_compiles_to_one_all_reduce_and_no_all_gather(kind, axis_type):
    params, batches, v = _problem()
    mesh = mesh_1d(axis_type)
    p, d, u = _placed(mesh, params, batches, v)

    def product(p, d, u):
        return BUILDERS[kind](p, d, data_axis="data", jit=False) @ u

    with jax.set_mesh(mesh):
        compiled = jax.jit(product).lower(p, d, u).compile()
        out = compiled(p, d, u)
    counts = _collectives(compiled.as_text())
    assert counts["all-gather"] == counts["all-to-all"] == 0, counts
    assert counts["all-reduce"] == 1, counts  # the product's parameters-sized psum
    assert_trees_close(out, BUILDERS[kind](params, batches) @ v)


def test_unsplit_stacked_batches_all_gather_the_data():
    """The baseline the split avoids: under jit on an auto mesh without data_axis, the
    split is invisible and GSPMD gathers the stacked data to scan it everywhere."""
    params, batches, v = _problem()
    mesh = mesh_1d(jax.sharding.AxisType.Auto)
    p, d, u = _placed(mesh, params, batches, v)
    product = jax.jit(lambda p, d, u: jaxhvp.hessian_operator(loss, p, batches=d, jit=False) @ u)
    counts = _collectives(product.lower(p, d, u).compile().as_text())
    assert counts["all-gather"] + counts["all-to-all"] + counts["collective-permute"] > 0


def test_inside_shard_map_with_default_checks():
    params, batches, v = _problem()
    mesh = mesh_1d(jax.sharding.AxisType.Explicit)
    p, d, u = _placed(mesh, params, batches, v)

    def local(p, d, u):  # d: this device's 2 batches
        hessian = jaxhvp.hessian_operator(loss, p, batches=d, data_axis="data", jit=False)
        spectral = jaxhvp.spectrum.batch_hessian_operator(loss, p, d, data_axis="data", jit=False)
        ggn = jaxhvp.ggn_operator(model, cross_entropy, p, batches=d, data_axis="data", jit=False)
        return hessian._product(u), spectral._product(u), ggn._product(u), hessian.grad

    mapped = jax.jit(jax.shard_map(local, mesh=mesh, in_specs=(P(), P("data"), P()), out_specs=P()))
    hessian, spectral, ggn, grad = mapped(p, d, u)
    reference = jaxhvp.hessian_operator(loss, params, batches=batches)
    assert_trees_close(hessian, reference @ v)
    assert_trees_close(spectral, reference @ v)
    assert_trees_close(grad, reference.grad)
    assert_trees_close(ggn, jaxhvp.ggn_operator(model, cross_entropy, params, batches=batches) @ v)
    counts = _collectives(mapped.lower(p, d, u).compile().as_text())
    assert counts["all-gather"] == 0, counts


def test_two_dimensional_mesh_keeps_model_sharding(axis_type):
    params, batches, v = _problem()
    mesh = mesh_2d(axis_type)
    p = {
        "w": jax.device_put(params["w"], NamedSharding(mesh, P(None, "model"))),
        "b": jax.device_put(params["b"], NamedSharding(mesh, P("model"))),
    }
    u = jax.tree_util.tree_map(lambda x, s: jax.device_put(x, s.sharding), v, p)
    d = jax.device_put(batches, NamedSharding(mesh, P("data")))
    op = jaxhvp.hessian_operator(loss, p, batches=d)
    out = op @ u
    assert_trees_close(out, jaxhvp.hessian_operator(loss, params, batches=batches) @ v)
    for name in p:
        assert out[name].sharding.is_equivalent_to(p[name].sharding, p[name].ndim), name


def test_streamed_batches_cut_over_the_devices():
    params, batches, v = _problem()
    x, y = (np.asarray(a).reshape(NUM_BATCHES * BATCH, *a.shape[2:]) for a in batches)
    loader = [(x[:24], y[:24]), (x[24:48], y[24:48]), (x[48:], y[48:])]  # 24, 24, 16
    mesh = mesh_1d(jax.sharding.AxisType.Auto)
    p = jax.device_put(params, NamedSharding(mesh, P()))
    op = jaxhvp.hessian_operator(loss, p, batches=jaxhvp.operators.stream(loader), data_axis="data")
    full = jaxhvp.hessian_operator(lambda q: loss(q, (x, y)), params)
    # cut into 8 per batch: every slice has 3, 3 or 2 examples, so equal weights hold
    assert_trees_close(op @ jax.device_put(v, NamedSharding(mesh, P())), full @ v)
    assert_trees_close(op.value, full.value)
    assert op.num_data == 64


def test_split_errors():
    params, batches, _ = _problem()
    mesh = mesh_1d(jax.sharding.AxisType.Auto)
    with pytest.raises(jaxhvp.HVPError, match="names no axis of a mesh"):
        jaxhvp.hessian_operator(loss, params, batches=batches, data_axis="batch")
    odd = jax.tree_util.tree_map(lambda x: x[:12], batches)
    with jax.set_mesh(mesh), pytest.raises(jaxhvp.HVPError, match="multiple of 8"):
        jaxhvp.hessian_operator(loss, params, batches=odd, data_axis="data")
    with pytest.raises(TypeError, match="data_axis given to ggn_operator"):
        jaxhvp.ggn_operator(model, cross_entropy, params, batches=batches, data_axis=3)


def test_estimators_and_solvers_over_split_batches():
    """Spectrum, diagonal, matmat (vmapped products) and solve run the split product too."""
    params, batches, v = _problem()
    mesh = mesh_1d(jax.sharding.AxisType.Auto)
    p, d, u = _placed(mesh, params, batches, v)
    op = jaxhvp.ggn_operator(model, cross_entropy, p, batches=d)
    reference = jaxhvp.ggn_operator(model, cross_entropy, params, batches=batches)
    key = jax.random.key(0)
    stacked = jax.tree_util.tree_map(lambda x: jnp.stack([x, -x, 2 * x]), u)
    assert_trees_close(op.matmat(stacked), reference.matmat(stacked))
    assert_trees_close(op.matmat(stacked, batch_size=2), reference.matmat(stacked))
    top = jaxhvp.spectrum.eigenvalues(op, k=2, key=key).values
    assert_trees_close(top, jaxhvp.spectrum.eigenvalues(reference, k=2, key=key).values)
    trace = jaxhvp.spectrum.trace(op, key=key, num_probes=8).value
    assert_trees_close(trace, jaxhvp.spectrum.trace(reference, key=key, num_probes=8).value)
    x, info = jaxhvp.solve(op, u, damping=0.1)
    expected, _ = jaxhvp.solve(reference, v, damping=0.1)
    assert info.success
    assert_trees_close(x, expected, rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize("kind", ["hessian", "ggn"])
def test_matmat_of_vectors_split_over_the_data_axis(kind, axis_type):
    """Vectors stacked on an axis split like the batches: the products take the batches'
    axis, the vectors are whole on each device for it and come back split as given."""
    params, batches, v = _problem()
    p, d, _ = _placed(mesh_1d(axis_type), params, batches, v)
    rng = np.random.default_rng(2)
    vectors = jax.tree_util.tree_map(lambda x: rng.normal(size=(8, *x.shape)), params)
    split = jax.device_put(vectors, NamedSharding(mesh_1d(axis_type), P("data")))
    op, reference = BUILDERS[kind](p, d), BUILDERS[kind](params, batches)
    expected = reference.matmat(vectors)
    for batch_size in (None, 2):
        result = op.matmat(split, batch_size)
        assert_trees_close(result, expected)
        for out, given in zip(jax.tree_util.tree_leaves(result), jax.tree_util.tree_leaves(split)):
            assert out.sharding.is_equivalent_to(given.sharding, out.ndim)


def test_what_gspmd_communicates_without_a_split():
    """The docs' table: batches split inside each batch all-reduce once per batch (inside
    the scan's loop); hvp of a function of sharded data all-reduces once."""
    params, batches, v = _problem()
    mesh = mesh_1d(jax.sharding.AxisType.Auto)
    p, _, u = _placed(mesh, params, batches, v)
    regrouped = jax.tree_util.tree_map(lambda x: x.reshape(2, 32, *x.shape[2:]), batches)
    inner = jax.device_put(regrouped, NamedSharding(mesh, P(None, "data")))
    product = jax.jit(lambda p, d, u: jaxhvp.hessian_operator(loss, p, batches=d, jit=False) @ u)
    hlo = product.lower(p, inner, u).compile().as_text()
    assert _collectives(hlo) == {
        "all-reduce": 1,
        "all-gather": 0,
        "all-to-all": 0,
        "collective-permute": 0,
    }
    reduce_line = next(line for line in hlo.splitlines() if re.search(r"all-reduce\(", line))
    assert "while/body" in reduce_line  # once per batch
    one = jax.tree_util.tree_map(lambda x: x[0], inner)
    hvp = jax.jit(lambda p, d, u: jaxhvp.hvp(lambda q: loss(q, d), p, u)[1])
    counts = _collectives(hvp.lower(p, one, u).compile().as_text())
    assert counts["all-reduce"] == 1 and counts["all-gather"] == 0, counts


def _explicit_and_reference():
    params, batches, v = _problem()
    return params, batches, v, mesh_1d(jax.sharding.AxisType.Explicit)


def test_parameters_sharded_over_the_split_axis():
    """FSDP-style parameters (split over the data axis too) are gathered for the scan."""
    params, batches, v = _problem()
    mesh = mesh_2d(jax.sharding.AxisType.Explicit)
    p = dict(params, w=jax.device_put(params["w"], NamedSharding(mesh, P(None, "data"))))
    p["b"] = jax.device_put(params["b"], NamedSharding(mesh, P("model")))
    d = jax.device_put(batches, NamedSharding(mesh, P("data")))
    u = jax.tree_util.tree_map(lambda x, q: jax.device_put(x, q.sharding), v, p)
    op = jaxhvp.hessian_operator(loss, p, batches=d)
    assert_trees_close(op @ u, jaxhvp.hessian_operator(loss, params, batches=batches) @ v)


def test_explicit_mesh_under_jit_without_set_mesh_and_operators_leaving_jit():
    params, batches, v, mesh = _explicit_and_reference()
    p, d, u = _placed(mesh, params, batches, v)
    expected = jaxhvp.ggn_operator(model, cross_entropy, params, batches=batches) @ v
    built = jax.jit(lambda p, d: jaxhvp.ggn_operator(model, cross_entropy, p, batches=d))(p, d)
    assert_trees_close(built @ u, expected)  # the abstract mesh it kept serves eagerly
    product = jax.jit(lambda p, d, u: BUILDERS["ggn"](p, d, jit=False) @ u)
    assert_trees_close(product(p, d, u), expected)


def test_unplaced_parameters_with_placed_batches(axis_type):
    params, batches, v = _problem()
    d = jax.device_put(batches, NamedSharding(mesh_1d(axis_type), P("data")))
    op = jaxhvp.hessian_operator(loss, params, batches=d)
    assert_trees_close(op @ v, jaxhvp.hessian_operator(loss, params, batches=batches) @ v)


def test_explicit_mesh_diagonal_mixed_placement_and_influence():
    params, batches, v, mesh = _explicit_and_reference()
    p, d, _ = _placed(mesh, params, batches, v)
    ggn = jaxhvp.ggn_operator(model, cross_entropy, p, batches=d)
    reference = jaxhvp.ggn_operator(model, cross_entropy, params, batches=batches)
    assert_trees_close(ggn.exact_diagonal(), reference.exact_diagonal())
    # inputs split, labels replicated: not a split the operator can use; gathered, correct
    mixed = (d[0], jax.device_put(batches[1], NamedSharding(mesh, P())))
    assert_trees_close(
        jaxhvp.ggn_operator(model, cross_entropy, p, batches=mixed) @ v, reference @ v
    )
    flat = jax.tree_util.tree_map(lambda x: x.reshape(-1, *x.shape[2:]), batches)
    placed = jax.device_put(flat, NamedSharding(mesh, P("data")))

    def example_loss(q, example):
        return cross_entropy(model(q, (example[0][None], None)), (None, example[1][None]))

    test = jax.tree_util.tree_map(lambda x: x[:2], flat)
    expected = jaxhvp.influence(example_loss, params, flat, test, damping=0.1, batch_size=8)
    got = jaxhvp.influence(example_loss, p, placed, test, damping=0.1, batch_size=8)
    assert_trees_close(got.values, expected.values, rtol=1e-8, atol=1e-10)


def test_inside_shard_map_without_data_axis_follows_jax_rules():
    """Without data_axis, JAX's own rule applies under check_vma: the derivative with respect
    to parameters that are the same on every device is summed over the devices (the
    transpose of the implicit broadcast), once per batch: each device's result is the sum of
    the 8 devices' local means."""
    params, batches, v = _problem()
    mesh = mesh_1d(jax.sharding.AxisType.Explicit)
    p, d, u = _placed(mesh, params, batches, v)

    def local(p, d, u):
        product = jaxhvp.hessian_operator(loss, p, batches=d, jit=False)._product(u)
        return jax.tree_util.tree_map(lambda x: x[None], product)

    mapped = jax.jit(
        jax.shard_map(local, mesh=mesh, in_specs=(P(), P("data"), P()), out_specs=P("data"))
    )
    total = jaxhvp.hessian_operator(loss, params, batches=batches) @ v  # the mean of 16
    expected = jax.tree_util.tree_map(lambda x: jnp.stack([8 * x] * 8), total)
    assert_trees_close(mapped(p, d, u), expected)
