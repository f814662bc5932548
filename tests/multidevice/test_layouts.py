"""Sharded parameters through every public function: the single-device numbers, in the
caller's layout.

Parameters are a dict with a matrix sharded over 'model' on its second axis, a vector
sharded on its only axis, and a replicated bias, on meshes of both axis types (the 2-D
'data' x 'model' mesh everywhere; the 1-D 'model' mesh for the cheaper calls). Every result
is checked against the same call on single-device copies, and every result with the
parameters' structure must come back with the parameters' shardings, eagerly and under
``jax.jit``, so that the caller's next jitted step does not recompile. Under ``jax.jit`` on
an Auto mesh XLA decides the layout of results stacked on a new axis (eigenvectors), and of
those laid out as a ``HessianOperator``'s ``grad`` (see ``test_hessian_operator_grad``):
there only the numbers are checked.
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import assert_trees_close, mesh_1d, mesh_2d
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import jaxhvp
import jaxhvp.linalg
import jaxhvp.optax
import jaxhvp.spectrum

TOL = dict(rtol=1e-9, atol=1e-9)  # float64; shards add in another order than one device
LOOSE = dict(rtol=1e-6, atol=1e-6)  # eigenvectors: converged to sqrt(eps), up to sign
KEY = jax.random.key(0)

# Per mesh: the mesh, and each leaf's shape and sharding ('model' on w's second axis).
LAYOUTS = {
    "1d": (
        lambda t: mesh_1d(t, "model"),
        {"w": ((3, 8), P(None, "model")), "v": ((16,), P("model")), "b": ((3,), P())},
    ),
    "2d": (
        mesh_2d,
        {"w": ((8, 2), P(None, "model")), "v": ((8,), P("data")), "b": ((4,), P())},
    ),
}


class Setup:
    """Sharded parameters, a differently sharded (replicated) tangent, single-device copies
    of both, and a loss with well separated Hessian eigenvalues (distinct curvatures per
    entry, coupled across the leaves) that needs no communication-ambiguous op."""

    def __init__(self, axis_type, kind):
        make_mesh, layout = LAYOUTS[kind]
        self.mesh = make_mesh(axis_type)
        rng = np.random.default_rng(0)
        values = {k: 0.3 * rng.normal(size=shape) for k, (shape, _) in layout.items()}
        sizes = np.cumsum([0] + [np.prod(shape) for shape, _ in layout.values()])
        curvature = np.linspace(1.0, 4.0, sizes[-1])
        self.curvature = {
            k: curvature[lo:hi].reshape(shape)
            for (k, (shape, _)), lo, hi in zip(layout.items(), sizes[:-1], sizes[1:])
        }
        self.params = {k: self.put(x, layout[k][1]) for k, x in values.items()}
        self.tangent = {k: self.put(np.cos(x), P()) for k, x in values.items()}
        one = jax.devices()[0]
        self.ref_params = jax.device_put(values, one)
        self.ref_tangent = jax.device_put({k: np.cos(x) for k, x in values.items()}, one)
        self.loss = self._loss()

    def put(self, x, spec):
        return jax.device_put(jnp.asarray(x), NamedSharding(self.mesh, spec))

    def _loss(self):
        curvature = self.curvature

        def loss(p):
            quadratic = sum(jnp.sum(0.5 * c * p[k] ** 2) for k, c in curvature.items())
            rows = jnp.sum(jnp.tanh(p["w"]), axis=1)
            coupling = jnp.sum(jnp.sin(p["v"])) * jnp.sum(p["w"] ** 2) + jnp.sum(rows**2)
            return quadratic + 0.05 * coupling + 0.05 * jnp.sum(p["b"] ** 2) * jnp.sum(p["v"] ** 2)

        return loss


_SETUPS = {}


@pytest.fixture
def setup(request, axis_type):
    """One Setup per mesh (2-D unless parametrized indirectly), built inside the test
    (where x64 is on) and shared by the tests after it."""
    key = (axis_type, getattr(request, "param", "2d"))
    if key not in _SETUPS:
        _SETUPS[key] = Setup(*key)
    return _SETUPS[key]


BOTH_MESHES = pytest.mark.parametrize("setup", ["1d", "2d"], indirect=True)


def assert_layout(actual, like, *, stacked=False):
    """Each leaf of ``actual`` sharded as the leaf of ``like`` (with ``stacked``, as it
    stacked on a new unsharded leading axis)."""
    for out, inp in zip(jax.tree_util.tree_leaves(actual), jax.tree_util.tree_leaves(like)):
        expected = inp.sharding
        if stacked:
            expected = NamedSharding(expected.mesh, P(None, *expected.spec))
        assert out.sharding.is_equivalent_to(expected, out.ndim), (out.sharding, expected)


def both(fn, *args):
    """``(result, jitted)`` for ``fn(*args)`` eagerly, then under ``jax.jit``."""
    return [(fn(*args), False), (jax.jit(fn)(*args), True)]


def xla_decides(setup, jitted):
    """Whether XLA lays out a stacked or operator-derived result (jitted on an Auto mesh)."""
    return jitted and setup.mesh.axis_types[0] == AxisType.Auto


def aligned(vectors, reference):
    """``vectors`` (stacked on axis 0) as numpy, with the signs that match ``reference``."""

    def rows(tree):
        leaves = jax.tree_util.tree_leaves(tree)
        return np.concatenate([np.asarray(x).reshape(x.shape[0], -1) for x in leaves], 1)

    signs = np.sign(np.sum(rows(vectors) * rows(reference), axis=1))
    return jax.tree_util.tree_map(
        lambda x: np.asarray(x) * signs.reshape(-1, *[1] * (x.ndim - 1)), vectors
    )


def test_aligned_flips_signs_only():
    ref = {"a": np.array([[1.0, -2.0], [3.0, 4.0]]), "b": np.array([1.0, -1.0])}
    flipped = {"a": ref["a"] * np.array([[-1.0], [1.0]]), "b": ref["b"] * np.array([-1.0, 1.0])}
    assert_trees_close(aligned(flipped, ref), ref)


# --- products ----------------------------------------------------------------------------


def assert_products_in_layout(setup, products):
    """``products(params, v)`` (a tuple of trees) on the mesh, eagerly and jitted: the
    single-device numbers, each tree in the parameters' layout."""
    expected = products(setup.ref_params, setup.ref_tangent)
    for result, _ in both(products, setup.params, setup.tangent):
        assert_trees_close(result, expected, **TOL)
        for tree in result:
            assert_layout(tree, setup.params)


@BOTH_MESHES
def test_products(setup):
    """hvp, vhp and a Hessian operator's product with a tangent laid out unlike the params."""

    def products(p, v):
        return (
            jaxhvp.hvp(setup.loss, p, v)[1],
            jaxhvp.vhp(setup.loss, p, v)[1],
            jaxhvp.hessian_operator(setup.loss, p) @ v,
        )

    assert_products_in_layout(setup, products)


def test_hessian_operator_grad(setup):
    """The operator's ``grad`` is its ``like``, which the flat paths lay results out as: it
    is tied to the inputs' layout, also when built inside ``jax.jit`` on an Auto mesh."""
    expected = jaxhvp.hessian_operator(setup.loss, setup.ref_params).exact_diagonal()
    for result, _ in both(
        lambda p: jaxhvp.hessian_operator(setup.loss, p).exact_diagonal(), setup.params
    ):
        assert_trees_close(result, expected, **TOL)
        assert_layout(result, setup.params)


def test_dense_hessian(setup):
    expected = jaxhvp.hessian(setup.loss, setup.ref_params)
    for result, _ in both(lambda p: jaxhvp.hessian(setup.loss, p), setup.params):
        assert_trees_close(result, expected, **TOL)


def test_ggn_operator(setup):
    def model(p):
        return jnp.tanh(jnp.sum(p["w"] ** 2, axis=1)), jnp.sum(p["v"]) * p["b"]

    def loss(out):
        return 0.5 * (jnp.sum(out[0] ** 2) + jnp.sum(out[1] ** 2))

    def products(p, v):
        op = jaxhvp.ggn_operator(model, loss, p)
        return op @ v, jaxhvp.gnvp(model, loss, p, v)[1], op.exact_diagonal()

    assert_products_in_layout(setup, products)


def test_product_in_a_cond_on_the_current_mesh(setup):
    """An operator built and applied inside a lax.cond, eagerly, with the mesh set (as
    sophia's update does): its vectors take the parameters' layout, as its linearization."""

    def product(p, v):
        op = jaxhvp.hessian_operator(setup.loss, p)
        return jax.lax.cond(True, lambda: op @ v, lambda: v)

    expected = product(setup.ref_params, setup.ref_tangent)
    with jax.set_mesh(setup.mesh):
        result = jax.lax.cond(
            True,
            lambda: jaxhvp.hessian_operator(setup.loss, setup.params) @ setup.tangent,
            lambda: setup.params,
        )
    assert_trees_close(result, expected, **TOL)
    assert_layout(result, setup.params)


@pytest.mark.parametrize("batch_size", [None, 2, 4])
def test_influence_over_split_examples(axis_type, batch_size):
    """Training examples split over 'data' (4 shards) regrouped into batches of
    ``batch_size``: 2 batches cannot stay split over 4 shards and are gathered first."""
    mesh = mesh_2d(axis_type)
    rng = np.random.default_rng(2)
    x, y, w = rng.normal(size=(8, 4)), rng.normal(size=8), 0.3 * rng.normal(size=4)

    def loss(w, example):
        return 0.5 * (example[0] @ w - example[1]) ** 2 + 0.1 * jnp.sum(w**2)

    def put(a, spec):
        return jax.device_put(a, NamedSharding(mesh, spec))

    train, test = (put(x, P("data")), put(y, P("data"))), (put(x[:2], P()), put(y[:2], P()))
    result = jaxhvp.influence(loss, put(w, P()), train, test, batch_size=batch_size)
    expected = jaxhvp.influence(loss, w, (x, y), (x[:2], y[:2]), batch_size=batch_size)
    assert_trees_close(result.values, expected.values, **TOL)


def _stack(tree):
    return jax.tree_util.tree_map(lambda x: jnp.stack([x, 2 * x, -x, x**2]), tree)


@pytest.mark.parametrize(
    ("setup", "batch_size"), [("2d", None), ("2d", 2), ("1d", 2)], indirect=["setup"]
)
def test_matmat(setup, batch_size):
    op = jaxhvp.hessian_operator(setup.loss, setup.params)
    ref_op = jaxhvp.hessian_operator(setup.loss, setup.ref_params)
    expected = ref_op.matmat(_stack(setup.ref_params), batch_size)
    for result, _ in both(lambda op, v: op.matmat(v, batch_size), op, _stack(setup.params)):
        assert_trees_close(result, expected, **TOL)
        assert_layout(result, setup.params, stacked=True)
    result = op.matmat(_stack(setup.tangent), batch_size)  # laid out unlike the parameters
    assert_trees_close(result, ref_op.matmat(_stack(setup.ref_tangent), batch_size), **TOL)


def test_flat_views(setup):
    op = jaxhvp.hessian_operator(setup.loss, setup.params)
    ref_op = jaxhvp.hessian_operator(setup.loss, setup.ref_params)
    matrix = ref_op.as_matrix()
    assert_trees_close(op.as_matrix(), matrix, **TOL)
    x = np.linspace(-1.0, 1.0, matrix.shape[0])
    np.testing.assert_allclose(op.as_scipy() @ x, np.asarray(matrix) @ x, **TOL)
    expected = ref_op.exact_diagonal()
    for result in (op.exact_diagonal(), op.exact_diagonal(batch_size=4)):
        assert_trees_close(result, expected, **TOL)
        assert_layout(result, setup.params)
    diagonal = jax.jit(lambda op: op.exact_diagonal())(op)  # op.grad: the params' layout
    assert_trees_close(diagonal, expected, **TOL)
    assert_layout(diagonal, setup.params)


# --- spectrum ----------------------------------------------------------------------------


def _spectrum(loss, params, *, everything=True):
    op = jaxhvp.hessian_operator(loss, params)
    eig = jaxhvp.spectrum.eigenvalues(op, k=2, key=KEY, return_vectors=True)
    diagonal = jaxhvp.spectrum.diagonal(op, key=KEY, num_probes=4, method="diag++")
    if not everything:  # the results with the parameters' structure
        return eig, diagonal
    trace = jaxhvp.spectrum.trace(op, key=KEY, num_probes=6, probe_batch_size=2)
    density = jaxhvp.spectrum.density(op, key=KEY, num_probes=4, krylov_dim=6)  # all at once
    return eig, diagonal, trace, density


def test_spectrum(setup):
    """Eagerly every estimator; under jax.jit those with the parameters' structure."""
    expected = _spectrum(setup.loss, setup.ref_params)
    eager = _spectrum(setup.loss, setup.params)
    assert_trees_close(eager[2:], expected[2:], **TOL)
    jitted = jax.jit(lambda p: _spectrum(setup.loss, p, everything=False))(setup.params)
    for (eig, diagonal), jit in ((eager[:2], False), (jitted, True)):
        assert bool(jnp.all(eig.converged))
        assert_trees_close(eig.values, expected[0].values, **TOL)
        reference = aligned(expected[0].vectors, expected[0].vectors)
        assert_trees_close(aligned(eig.vectors, expected[0].vectors), reference, **LOOSE)
        assert_trees_close(diagonal, expected[1], **TOL)
        if not xla_decides(setup, jit):
            assert_layout(eig.vectors, setup.params, stacked=True)
            assert_layout(diagonal.value, setup.params)


def test_density_decomposes_one_matrix_at_a_time(setup):
    """jaxlib 0.10.2 on CPU deadlocks in a batched eigh when a process has several devices:
    the probes' tridiagonal matrices are decomposed one at a time."""
    op = jaxhvp.hessian_operator(setup.loss, setup.params)
    density = jax.jit(lambda op: jaxhvp.spectrum.density(op, key=KEY, num_probes=4, krylov_dim=5))
    lines = [line for line in density.lower(op).as_text().splitlines() if "syevd" in line]
    batch_dims = [re.search(r'num_batch_dims = "(\d+)"', line).group(1) for line in lines]
    assert batch_dims and set(batch_dims) == {"0"}, batch_dims


# --- optimisers --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("setup", "method"),
    [("2d", "newton-cg"), ("2d", "trust-ncg")],
    indirect=["setup"],
)
def test_minimize(setup, method):
    expected = jaxhvp.minimize(setup.loss, setup.ref_params, method=method)
    for result, _ in both(lambda p: jaxhvp.minimize(setup.loss, p, method=method), setup.params):
        assert bool(result.success)
        assert_trees_close((result.x, result.jac), (expected.x, expected.jac), **LOOSE)
        assert_layout((result.x, result.jac), (setup.params, setup.params))


@pytest.mark.parametrize(
    ("init", "step"),
    [
        (jaxhvp.newton_cg_init, jaxhvp.newton_cg_step),
        (jaxhvp.trust_ncg_init, jaxhvp.trust_ncg_step),
    ],
    ids=["newton_cg", "trust_ncg"],
)
def test_steps(setup, init, step):
    """One step eagerly, then a jitted training loop: the parameters stay in their layout,
    so the loop compiles once (twice on an explicit mesh, where JAX's first call turns the
    bias's P() into the equivalent P(None), as it does for any jitted function)."""
    state = init(setup.ref_params)
    first = step(setup.loss, setup.ref_params, state)[:2]
    second = step(setup.loss, *first)[:2]
    params, state, _ = step(setup.loss, setup.params, init(setup.params))
    assert_trees_close((params, state), first, **LOOSE)
    assert_layout(params, setup.params)
    train = jax.jit(lambda p, s: step(setup.loss, p, s)[:2])
    params, state = setup.params, init(setup.params)
    compiled = []
    for expected in (first, second, None):
        params, state = train(params, state)
        compiled.append(train._cache_size())
        if expected is not None:
            assert_trees_close((params, state), expected, **LOOSE)
        assert_layout(params, setup.params)
    auto = setup.mesh.axis_types[0] == AxisType.Auto
    assert compiled[0] == 1 and compiled[-1] == compiled[-2] and (compiled[-1] == 1 or not auto)


# --- linear solves -----------------------------------------------------------------------


def test_nystrom_preconditioner(setup):
    def build(p):
        op = jaxhvp.hessian_operator(setup.loss, p)
        return jaxhvp.linalg.nystrom_preconditioner(op, 3, key=KEY)

    expected = build(setup.ref_params)
    for result, jit in both(build, setup.params):
        assert_trees_close(result.values, expected.values, **LOOSE)
        reference = aligned(expected.vectors, expected.vectors)
        assert_trees_close(aligned(result.vectors, expected.vectors), reference, **LOOSE)
        if not xla_decides(setup, jit):
            assert_layout(result.vectors, setup.params, stacked=True)


def _ggn_model(p):
    return jnp.tanh(p["w"]) * jnp.sum(p["v"]), p["b"] ** 2


def _half_squares(out):
    return 0.5 * sum(jnp.sum(o**2) for o in out)


SOLVES = {
    "hessian-cg": lambda setup, p: (jaxhvp.hessian_operator(setup.loss, p), {}),
    "ggn-cg": lambda setup, p: (
        jaxhvp.ggn_operator(_ggn_model, _half_squares, p),
        {"damping": 1.0},
    ),
    "hessian-minres": lambda setup, p: (
        jaxhvp.hessian_operator(setup.loss, p),
        {"method": "minres"},
    ),
    "hessian-lowrank": lambda setup, p: (
        jaxhvp.hessian_operator(setup.loss, p),
        {"method": "lowrank", "rank": 4, "key": KEY, "damping": 0.1},
    ),
}


@pytest.mark.parametrize("kind", sorted(SOLVES))
def test_solve(setup, kind):
    """The solution in the parameters' layout, eagerly too (XLA lays a loop's result out
    as it likes: moved back where it differs)."""

    def solve(p, b):
        op, options = SOLVES[kind](setup, p)
        return jaxhvp.solve(op, b, tol=1e-12, **options)[0]

    expected = solve(setup.ref_params, setup.ref_tangent)
    for result, _ in both(solve, setup.params, setup.tangent):
        assert_trees_close(result, expected, **LOOSE)
        assert_layout(result, setup.params)


def test_monte_carlo_fisher_with_its_classes_split():
    """Sampled gradients contracted over a class axis split over 'model' (explicit meshes
    refuse a sharded contraction in einsum)."""
    mesh = mesh_2d(AxisType.Explicit)
    w = np.linspace(-1.0, 1.0, 16).reshape(8, 2)
    placed = jax.device_put(w, NamedSharding(mesh, P(None, "model")))
    v = np.cos(w)

    def product(w, v):
        kw = dict(likelihood="categorical", mc_samples=2, key=KEY)
        return jaxhvp.fisher_operator(jnp.tanh, w, **kw) @ v

    expected = product(jax.device_put(w, jax.devices()[0]), v)
    for result, _ in both(product, placed, jax.device_put(v, placed.sharding)):
        assert_trees_close(result, expected, **TOL)
        assert_layout(result, placed)


# --- chunks over a sharded stacked axis --------------------------------------------------


def test_matmat_chunks_stay_on_their_devices(axis_type):
    """Vectors stacked on an axis split over 'data', parameters using only 'model': chunks
    of batch_size vectors take the same number from every 'data' shard, so the compiled
    program gathers nothing and the products keep the vectors' layout."""
    mesh = mesh_2d(axis_type)
    rng = np.random.default_rng(1)
    values = {"w": rng.normal(size=(3, 4)), "b": rng.normal(size=(4,))}
    specs = {"w": P(None, "model"), "b": P("model")}
    params = {k: jax.device_put(x, NamedSharding(mesh, specs[k])) for k, x in values.items()}
    stacked = {k: rng.normal(size=(8, *x.shape)) for k, x in values.items()}
    vectors = {
        k: jax.device_put(x, NamedSharding(mesh, P("data", *specs[k]))) for k, x in stacked.items()
    }

    def loss(p):
        return jnp.sum(jnp.tanh(p["w"]) ** 2) * jnp.sum(p["b"] ** 2) + jnp.sum(p["w"] ** 4)

    one = jax.devices()[0]
    ref_op = jaxhvp.hessian_operator(loss, jax.device_put(values, one))
    expected = ref_op.matmat(jax.device_put(stacked, one))
    op = jaxhvp.hessian_operator(loss, params)
    matmat = jax.jit(lambda op, v: op.matmat(v, batch_size=4))
    assert "all-gather" not in matmat.lower(op, vectors).compile().as_text()
    results = [op.matmat(vectors, batch_size=size) for size in (4, 1)]  # 1: one per shard
    for result in (*results, matmat(op, vectors)):
        assert_trees_close(result, expected, **TOL)
        assert_layout(result, vectors)


# --- second-order optax transformations --------------------------------------------------


@pytest.mark.parametrize("name", ["adahessian", "sophia", "hessian_free"])
def test_optax_training_loop(setup, name):
    """Three jitted steps: the single-device numbers, the parameters' layout, and one
    compilation for the steps that follow the first (init places the state's scalars on the
    parameters' mesh). A carried PRNG key's data comes back from the second step laid out
    as P(None) rather than P(), which JAX caches as another entry, as it does for any loop
    carrying jax.random.split."""
    transform = {
        "adahessian": lambda: jaxhvp.optax.adahessian(0.05, key=KEY),
        "sophia": lambda: jaxhvp.optax.sophia(0.05, update_interval=2, key=KEY),
        "hessian_free": lambda: jaxhvp.optax.hessian_free(0.5, curvature="hessian"),
    }[name]()

    def step(p, state):
        updates, state = transform.update(jax.grad(setup.loss)(p), state, p, obj_fn=setup.loss)
        return optax.apply_updates(p, updates), state

    def run(p, train, steps):
        cached = getattr(train, "_cache_size", lambda: 0)
        state, out, sizes, before = transform.init(p), [], [], cached()
        for _ in range(steps):  # the compilations of these steps (shared with other runs)
            p, state = train(p, state)
            out.append(p)
            sizes.append(cached() - before)
        return out, sizes

    expected, _ = run(setup.ref_params, jax.jit(step), 3)
    with jax.set_mesh(setup.mesh):  # explicit meshes: the eager grad needs the mesh
        eager, _ = run(setup.params, step, 1)
    params, sizes = run(setup.params, jax.jit(step), 3)
    for result, reference in ((eager[0], expected[0]), (params[-1], expected[-1])):
        assert_trees_close(result, reference, **LOOSE)
        assert_layout(result, setup.params)
    keyed = name != "hessian_free"
    auto = setup.mesh.axis_types[0] == AxisType.Auto
    assert sizes[:2] == [1, 1] or not auto, sizes
    assert sizes[-1] <= 1 + keyed + (not auto), sizes
