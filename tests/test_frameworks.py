"""The framework recipes of docs/frameworks.md against dense references, the errors that point
at them, and differentiation through products (``create_graph`` and ``hessian_operator``).

References: ``jax.hessian`` of the loss over the flattened parameters (``ravel_pytree``), the
dense Gauss-Newton matrix from ``jax.jacobian`` of the outputs, and ``jax.jacfwd`` of
``jax.hessian`` (the third-derivative tensor) with central finite differences of the
Hessian. Float64 throughout (conftest).
"""

import equinox as eqx
import flax.linen as linen
import jax
import jax.numpy as jnp
import jax.test_util
import numpy as np
import pytest
from conftest import assert_trees_close
from flax import nnx
from jax.flatten_util import ravel_pytree

import jaxhvp
import jaxhvp.optax
from jaxhvp._structure import difference

MAX_MESSAGE = 500  # characters: an error shows paths, never a tree dump


def data():
    x = jax.random.normal(jax.random.key(1), (16, 3), jnp.float64)
    return x, jnp.sin(x[:, :1] * x[:, 1:2])


def squared_error(pred, y):
    return ((pred - y) ** 2).mean()


def dense_hessian(loss, params):
    """``jax.hessian`` of the loss over the flattened parameters, and the unflattening."""
    flat, unravel = ravel_pytree(params)
    return jax.jit(jax.hessian(lambda f: loss(unravel(f))))(flat), unravel


def dense_hvp(loss, params, v):
    hessian, unravel = dense_hessian(loss, params)
    return unravel(hessian @ ravel_pytree(v)[0])


def dense_solve(loss, params, b, damping):
    """``(H + damping I)^-1 b``."""
    hessian, unravel = dense_hessian(loss, params)
    damped = hessian + damping * jnp.eye(len(hessian))
    return unravel(jnp.linalg.solve(damped, ravel_pytree(b)[0]))


def loss_of(outputs, params, y):
    """The recipes' loss of ``outputs(params)``, a function of the parameters alone."""
    return lambda params: squared_error(outputs(params), y), params


def probe(params, seed=0):
    """A random vector in the parameters' structure (``None`` leaves stay ``None``)."""
    flat, unravel = ravel_pytree(params)
    return unravel(jax.random.normal(jax.random.key(seed), flat.shape, flat.dtype))


def test_dense_references_agree_on_a_quadratic():
    matrix = jnp.array([[2.0, 1.0], [1.0, 3.0]])
    params = {"a": jnp.array([0.5]), "b": jnp.array([-1.0])}

    def quadratic(p):
        z = ravel_pytree(p)[0]
        return 0.5 * z @ matrix @ z

    v = {"a": jnp.array([1.0]), "b": jnp.array([2.0])}
    assert_trees_close(
        dense_hvp(quadratic, params, v), {"a": jnp.array([4.0]), "b": jnp.array([7.0])}
    )
    solved = dense_solve(quadratic, params, v, 1.0)
    assert_trees_close(
        dense_hvp(quadratic, params, solved), jax.tree.map(lambda s, w: w - s, solved, v)
    )


# --- Flax NNX ---------------------------------------------------------------------------------


class NNXModel(nnx.Module):
    """Parameters, BatchNorm statistics and Dropout's RNG state, as in docs/frameworks.md."""

    def __init__(self, rngs):
        self.linear1 = nnx.Linear(3, 8, param_dtype=jnp.float64, rngs=rngs)
        self.norm = nnx.BatchNorm(8, param_dtype=jnp.float64, rngs=rngs)
        self.dropout = nnx.Dropout(0.25, rngs=rngs)
        self.linear2 = nnx.Linear(8, 1, param_dtype=jnp.float64, rngs=rngs)
        # NNX keeps BatchNorm's statistics in float32; these tests run in float64
        for stat in (self.norm.mean, self.norm.var):
            stat.set_value(stat[...].astype(jnp.float64))

    def __call__(self, x):
        return self.linear2(self.dropout(jnp.tanh(self.norm(self.linear1(x)))))


def nnx_outputs(model, x):
    """The recipe: split once, merge (copying the closed-over state) inside the function."""
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def outputs(params):
        return nnx.merge(graphdef, params, rest, copy=True)(x)

    return outputs, params


def nnx_loss(model, x, y):
    return loss_of(*nnx_outputs(model, x), y)


def test_nnx_split_solve_matches_the_dense_solution():
    x, y = data()
    loss, params = nnx_loss(NNXModel(nnx.Rngs(0)), x, y)
    op = jaxhvp.hessian_operator(loss, params)
    step, info = jaxhvp.solve(op, op.grad, damping=1.0, method="minres", tol=1e-12)
    assert info.message.startswith("The residual is within the tolerance")
    assert_trees_close(step, dense_solve(loss, params, op.grad, 1.0), rtol=1e-8, atol=1e-8)


def test_nnx_split_leaves_the_state_and_returns_the_updated_one_as_aux():
    x, y = data()
    model = NNXModel(nnx.Rngs(0))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def loss(params):
        model = nnx.merge(graphdef, params, rest, copy=True)
        return squared_error(model(x), y), nnx.state(model, nnx.Not(nnx.Param))

    v = probe(params)
    _, product, updated = jaxhvp.hvp(loss, params, v, has_aux=True)
    assert_trees_close(product, dense_hvp(lambda p: loss(p)[0], params, v))
    assert int(rest["dropout"]["rngs"]["count"][...]) == 0  # closed over, untouched
    assert int(updated["dropout"]["rngs"]["count"][...]) == 1  # one forward pass
    np.testing.assert_allclose(
        updated["norm"]["mean"][...], 0.01 * model.linear1(x).mean(0)
    )  # momentum 0.99


def test_nnx_split_inside_nnx_jit():
    x, y = data()
    model = NNXModel(nnx.Rngs(0))

    @nnx.jit
    def product(model, v):
        loss, params = nnx_loss(model, x, y)
        return jaxhvp.hvp(loss, params, v)[1]

    loss, params = nnx_loss(model, x, y)
    v = probe(params)
    assert_trees_close(product(model, v), dense_hvp(loss, params, v))


def test_nnx_eval_mode_is_deterministic_and_matches():
    x, y = data()
    model = NNXModel(nnx.Rngs(0))
    model.eval()  # Dropout off, BatchNorm on its running statistics
    loss, params = nnx_loss(model, x, y)
    v = probe(params)
    assert_trees_close(jaxhvp.hvp(loss, params, v)[1], dense_hvp(loss, params, v))


# --- Flax Linen -------------------------------------------------------------------------------


class LinenModel(linen.Module):
    @linen.compact
    def __call__(self, x, train):
        h = linen.Dense(8, param_dtype=jnp.float64)(x)
        h = linen.BatchNorm(use_running_average=not train, param_dtype=jnp.float64)(h)
        h = linen.Dropout(0.25, deterministic=not train)(jnp.tanh(h))
        return linen.Dense(1, param_dtype=jnp.float64)(h)


def test_linen_params_hvp_matches_the_dense_hessian():
    x, y = data()
    model = LinenModel()
    variables = model.init(jax.random.key(0), x, train=False)
    params, batch_stats = variables["params"], variables["batch_stats"]

    def loss(params):
        pred, updates = model.apply(
            {"params": params, "batch_stats": batch_stats},
            x,
            train=True,
            rngs={"dropout": jax.random.key(2)},
            mutable=["batch_stats"],
        )
        return squared_error(pred, y), updates

    v = probe(params)
    _, product, updates = jaxhvp.hvp(loss, params, v, has_aux=True)
    assert_trees_close(product, dense_hvp(lambda p: loss(p)[0], params, v))
    assert jax.tree.structure(updates) == jax.tree.structure({"batch_stats": batch_stats})


# --- Equinox ----------------------------------------------------------------------------------


def eqx_model():
    return eqx.nn.MLP(3, 1, 8, 2, activation=jnp.tanh, key=jax.random.key(0), dtype=jnp.float64)


def eqx_outputs(model, x):
    params, static = eqx.partition(model, eqx.is_inexact_array)

    def outputs(params):
        return jax.vmap(eqx.combine(params, static))(x)

    return outputs, params


def eqx_loss(model, x, y):
    return loss_of(*eqx_outputs(model, x), y)


@pytest.mark.parametrize("jit", [True, False])
@pytest.mark.parametrize(
    "split_loss",
    [lambda x, y: nnx_loss(NNXModel(nnx.Rngs(0)), x, y), lambda x, y: eqx_loss(eqx_model(), x, y)],
    ids=["nnx", "eqx"],
)
def test_split_hvp_and_operator_match_the_dense_hessian(split_loss, jit):
    x, y = data()
    loss, params = split_loss(x, y)
    v = probe(params)
    expected = dense_hvp(loss, params, v)
    value, product = jaxhvp.hvp(loss, params, v, jit=jit)
    assert_trees_close(product, expected)
    np.testing.assert_allclose(value, loss(params))
    assert_trees_close(jaxhvp.hessian_operator(loss, params, jit=jit) @ v, expected)


def test_eqx_newton_step_inside_filter_jit_matches_the_dense_solution():
    x, y = data()
    model = eqx_model()

    @eqx.filter_jit
    def newton_step(model):
        loss, params = eqx_loss(model, x, y)
        op = jaxhvp.hessian_operator(loss, params)
        step, _ = jaxhvp.solve(
            op, jax.tree.map(jnp.negative, op.grad), damping=1.0, method="minres", tol=1e-12
        )
        return eqx.apply_updates(model, step), step

    stepped, step = newton_step(model)
    loss, params = eqx_loss(model, x, y)
    gradient = jax.grad(loss)(params)
    expected = dense_solve(loss, params, jax.tree.map(jnp.negative, gradient), 1.0)
    assert_trees_close(step, expected, rtol=1e-8, atol=1e-8)
    assert isinstance(stepped, eqx.nn.MLP)


# --- optax training steps ---------------------------------------------------------------------


def hessian_free_reference(outputs, loss_fn, params, damping):
    """Hessian-free's first step at learning rate 1, ``-(G + damping I)^-1 g``, with the
    dense Gauss-Newton matrix ``G = J^T H_loss J``."""
    flat, unravel = ravel_pytree(params)
    jacobian = jax.jacobian(lambda f: outputs(unravel(f)).ravel())(flat)
    out = outputs(params)
    loss_hessian = jax.hessian(lambda o: loss_fn(o.reshape(out.shape)))(out.ravel())
    ggn = jacobian.T @ loss_hessian @ jacobian + damping * jnp.eye(flat.size)
    gradient = jax.grad(lambda f: loss_fn(outputs(unravel(f))))(flat)
    return unravel(-jnp.linalg.solve(ggn, gradient))


def test_ggn_reference_is_the_hessian_reference_for_a_linear_model():
    x, y = data()
    params = {"w": jnp.array([[0.5], [-1.0], [2.0]]), "b": jnp.array([0.1])}

    def outputs(p):
        return x @ p["w"] + p["b"]

    def loss(p):
        return squared_error(outputs(p), y)

    expected = dense_solve(loss, params, jax.tree.map(jnp.negative, jax.grad(loss)(params)), 0.5)
    actual = hessian_free_reference(outputs, lambda o: squared_error(o, y), params, 0.5)
    assert_trees_close(actual, expected)


HESSIAN_FREE = dict(learning_rate=1.0, damping=0.5, cg_tol=1e-12, cg_maxiter=200)


def hessian_free_arguments(outputs, params, y):
    """What a training step gives Hessian-free's ``update``: the gradient and the step's
    ``model_fn`` and ``loss_fn``."""

    def loss_fn(pred):
        return squared_error(pred, y)

    grads = jax.grad(lambda p: loss_fn(outputs(p)))(params)
    return grads, dict(model_fn=outputs, loss_fn=loss_fn)


def test_nnx_optimizer_step_with_hessian_free_matches_the_dense_ggn_step():
    x, y = data()
    model = NNXModel(nnx.Rngs(0))
    model.eval()
    optimizer = nnx.Optimizer(model, jaxhvp.optax.hessian_free(**HESSIAN_FREE), wrt=nnx.Param)
    outputs, params = nnx_outputs(model, x)
    before = jax.tree.map(jnp.copy, params)  # the split's Variables are the model's own
    expected = hessian_free_reference(outputs, lambda o: squared_error(o, y), before, 0.5)

    @nnx.jit
    def train_step(model, optimizer):
        grads, functions = hessian_free_arguments(*nnx_outputs(model, x), y)
        optimizer.update(model, grads, **functions)

    train_step(model, optimizer)
    after = nnx.state(model, nnx.Param)
    assert_trees_close(jax.tree.map(jnp.subtract, after, before), expected, rtol=1e-7, atol=1e-9)


def test_eqx_optax_step_with_hessian_free_matches_the_dense_ggn_step():
    x, y = data()
    model = eqx_model()
    outputs, params = eqx_outputs(model, x)
    opt = jaxhvp.optax.hessian_free(**HESSIAN_FREE)
    expected = hessian_free_reference(outputs, lambda o: squared_error(o, y), params, 0.5)

    @eqx.filter_jit
    def train_step(model, state):
        outputs, params = eqx_outputs(model, x)
        grads, functions = hessian_free_arguments(outputs, params, y)
        updates, state = opt.update(grads, state, params, **functions)
        return eqx.apply_updates(model, updates), state

    stepped, _ = train_step(model, opt.init(params))
    moved = jax.tree.map(jnp.subtract, eqx.filter(stepped, eqx.is_inexact_array), params)
    assert_trees_close(moved, expected, rtol=1e-7, atol=1e-9)


# --- errors that point at the recipes --------------------------------------------------------


def assert_short_one_line(message):
    assert len(message) <= MAX_MESSAGE, message
    assert "\n" not in message and "PyTreeDef" not in message, message


@pytest.mark.parametrize(
    ("as_inputs", "where"),
    [
        (lambda model: model, "inputs.dropout.rngs.count"),
        (lambda model: nnx.state(model), "inputs['dropout']['rngs']['count']"),
        (lambda model: nnx.split(model)[1], "inputs['dropout']['rngs']['count']"),
    ],
    ids=["model", "state", "split"],
)
def test_nnx_rng_state_error_says_to_split(as_inputs, where):
    x, y = data()
    inputs = as_inputs(NNXModel(nnx.Rngs(0)))
    with pytest.raises(jaxhvp.HVPError) as error:
        jaxhvp.hvp(lambda m: squared_error(m(x), y), inputs, inputs)
    message = str(error.value)
    assert message.startswith(
        f"{where} given to hvp is a Flax NNX RngCount holding an array of dtype uint32"
    )
    assert "`graphdef, params, rest = nnx.split(model, nnx.Param, ...)`" in message
    assert "`nnx.merge(graphdef, params, rest, copy=True)`" in message
    assert "docs/frameworks.md" in message
    assert_short_one_line(message)


def test_nnx_rng_state_error_of_the_operators():
    model = NNXModel(nnx.Rngs(0))
    with pytest.raises(jaxhvp.HVPError, match=r"^inputs\.dropout\.rngs\.count given to hessian_op"):
        jaxhvp.hessian_operator(lambda m: m.linear1.bias.sum(), model)


@pytest.mark.parametrize("inputs, where", [(None, "inputs"), ("tuple", "inputs[0]")])
def test_linen_module_error_says_to_init_and_apply(inputs, where):
    model = linen.Dense(3)
    given = model if inputs is None else (model,)
    with pytest.raises(TypeError) as error:
        jaxhvp.hvp(lambda m: 0.0, given, None)
    message = str(error.value)
    assert message.startswith(f"{where} given to hvp is a Flax Linen Dense, which holds no arrays")
    assert "`params = model.init(key, x)['params']`" in message
    assert "`model.apply({'params': params}, x)`" in message
    assert_short_one_line(message)


def test_eqx_function_leaf_error_says_to_partition():
    x, y = data()
    model = eqx_model()
    v = jax.tree.map(jnp.ones_like, eqx.filter(model, eqx.is_inexact_array))
    with pytest.raises(TypeError) as error:
        jaxhvp.hvp(lambda m: squared_error(jax.vmap(m)(x), y), model, v)
    message = str(error.value)
    assert message.startswith(
        "inputs given to hvp is an Equinox MLP whose leaf inputs.activation is a "
    )
    assert "`params, static = eqx.partition(model, eqx.is_inexact_array)`" in message
    assert "`eqx.combine(params, static)`" in message
    assert_short_one_line(message)


def test_eqx_error_names_the_module_inside_tuple_inputs_and_v():
    x = jnp.ones(3)
    model = eqx_model()
    with pytest.raises(TypeError, match=r"^inputs\[0\] given to vhp is an Equinox MLP whose leaf"):
        jaxhvp.vhp(lambda m, x: m(x).sum(), (model, x), (model, x))
    params = eqx.filter(model, eqx.is_inexact_array)
    with pytest.raises(TypeError, match=r"^v given to hvp is an Equinox MLP whose leaf v\.activ"):
        jaxhvp.hvp(lambda p: ravel_pytree(p)[0].sum(), params, model)


class Counted(eqx.Module):
    weight: jax.Array
    count: jax.Array


@pytest.mark.parametrize(
    ("module", "error", "leaf"),
    [
        (eqx.nn.Dropout(0.5), TypeError, "inputs.p is a float"),
        (
            Counted(jnp.ones(2), jnp.zeros((), jnp.int32)),
            jaxhvp.HVPError,
            "inputs.count is an array of dtype int32",
        ),
    ],
    ids=["python-number", "integer-array"],
)
def test_eqx_error_describes_the_leaf(module, error, leaf):
    with pytest.raises(error, match=rf"^inputs given to hvp is an Equinox \w+ whose leaf {leaf}, "):
        jaxhvp.hvp(lambda m: 0.0, module, module)


def test_non_framework_leaves_keep_torch_wording():
    nnx_model = NNXModel(nnx.Rngs(0))  # flax and equinox imported, but not in these inputs
    assert nnx_model is not None
    with pytest.raises(jaxhvp.HVPError, match=r"^only Tensors of floating point dtype"):
        jaxhvp.hvp(lambda p: p["w"].sum(), {"w": jnp.ones(2), "n": jnp.ones(2, jnp.int32)})
    with pytest.raises(TypeError, match="must be either a Tensor or a tuple of Tensors"):
        jaxhvp.hvp(lambda p: p["w"].sum(), {"w": jnp.ones(2), "f": jnp.tanh}, jnp.ones(2))


def nested(**layer1):
    return {"layer1": layer1, "layer2": {"w": jnp.ones((2, 2)), "b": jnp.ones(2)}}


@pytest.mark.parametrize(
    ("v", "shown"),
    [
        (
            nested(w=jnp.ones(2), c=jnp.ones(2)),
            "inputs['layer1'] has key 'b' where v['layer1'] has key 'c'",
        ),
        (nested(w=jnp.ones(2)), "v['layer1']['b'] is missing"),
        (nested(w=jnp.ones(2), b=jnp.ones(2), c=jnp.ones(2)), "v['layer1']['c'] is not in inputs"),
        (
            nested(w=jnp.ones(2), b=[jnp.ones(2)]),
            "inputs['layer1']['b'] is an array but v['layer1']['b'] is a list",
        ),
    ],
    ids=["renamed", "missing", "extra", "kind"],
)
def test_structure_mismatch_shows_only_the_differing_path(v, shown):
    inputs = nested(w=jnp.ones(2), b=jnp.ones(2))
    with pytest.raises(jaxhvp.HVPError) as error:
        jaxhvp.hvp(lambda p: ravel_pytree(p)[0].sum(), inputs, v)
    message = str(error.value)
    assert message == (
        f"v must have the same pytree structure as the inputs given to hvp, but {shown}. Build v "
        "with jax.tree_util.tree_map over the inputs."
    )


def test_structure_mismatch_of_large_models_stays_short():
    small = eqx.filter(eqx_model(), eqx.is_inexact_array)
    deep = eqx.nn.MLP(3, 1, 8, 12, key=jax.random.key(0), dtype=jnp.float64)
    v = eqx.filter(deep, eqx.is_inexact_array)
    dump = f"{jax.tree.structure(small)} {jax.tree.structure(v)}"
    assert len(dump) > MAX_MESSAGE  # what the message used to print
    with pytest.raises(jaxhvp.HVPError) as error:
        jaxhvp.hvp(lambda p: ravel_pytree(p)[0].sum(), small, v)
    message = str(error.value)
    assert "inputs and v differ in the static fields of their MLP" in message
    assert "v.layers[3] is not in inputs" in message
    assert_short_one_line(message)


def test_operator_solve_and_matmat_show_the_differing_path():
    params = nested(w=jnp.ones(2), b=jnp.ones(2))
    op = jaxhvp.hessian_operator(lambda p: (ravel_pytree(p)[0] ** 4).sum(), params)
    wrong = nested(w=jnp.ones(2))
    with pytest.raises(jaxhvp.HVPError, match=r"but v\['layer1'\]\['b'\] is missing\. Build v"):
        op @ wrong
    with pytest.raises(jaxhvp.HVPError, match=r"\(op\.like\), but b\['layer1'\]\['b'\] is missing"):
        jaxhvp.solve(op, wrong)
    longer = nested(w=jnp.ones(2), b=jnp.ones(3))
    with pytest.raises(jaxhvp.HVPError, match=r"but x0\['layer1'\]\['b'\] has shape \(3,\) and"):
        jaxhvp.solve(op, params, x0=longer)
    with pytest.raises(
        jaxhvp.HVPError, match=r"\(op\.like\), but vectors\['layer1'\]\['b'\] is miss"
    ):
        op.matmat(jax.tree.map(lambda a: a[None], wrong))


@pytest.mark.parametrize(
    ("expected", "given", "shown"),
    [
        ((1.0, 2.0), [1.0, 2.0], "x is a tuple but y is a list"),
        ({"a": None}, {"a": 1.0}, "x['a'] is None but y['a'] is an array"),
        ([1.0, 2.0, 3.0], [1.0], "y[1] is missing (and 1 more at that level)"),
        (
            {"a": 1.0, "b": 1.0},
            {"c": 1.0, "d": 1.0},
            "x has keys 'a', 'b' where y has keys 'c', 'd'",
        ),
        (
            {k: 1.0 for k in "abcde"},
            {k: [1.0] for k in "abcde"},
            "x['a'] is an array but y['a'] is a list; x['b'] is an array but y['b'] is a list; "
            "x['c'] is an array but y['c'] is a list; and more",
        ),
    ],
    ids=["node-type", "none", "length", "keys", "many"],
)
def test_structure_difference(expected, given, shown):
    assert difference(expected, given, "x", "y") == shown


# --- differentiating through products --------------------------------------------------------


def cubic(x):
    return jnp.sum(jnp.sin(x) * x**2) + jnp.prod(x)


def third_derivative_reference(x, v, w):
    """``d/dx <w, H(x) v>`` from the dense third-derivative tensor."""
    tensor = jax.jit(jax.jacfwd(jax.hessian(cubic)))(x)  # tensor[i, j, k] = d^3 f / dx_i dx_j dx_k
    return jnp.einsum("ijk,i,j->k", tensor, w, v)


@pytest.mark.parametrize("mode", ["fwd-rev", "rev-rev", "rev-fwd"])
def test_create_graph_and_operator_products_have_the_third_derivative(mode):
    x, v, w = jnp.array([0.3, -1.2, 0.7]), jnp.array([1.0, 0.5, -2.0]), jnp.array([0.2, 1.0, 0.4])
    expected = third_derivative_reference(x, v, w)

    def through_hvp(x, create_graph):
        return w @ jaxhvp.hvp(cubic, x, v, create_graph=create_graph, mode=mode)[1]

    def through_operator(x):
        return w @ (jaxhvp.hessian_operator(cubic, x, mode=mode) @ v)

    np.testing.assert_allclose(jax.grad(through_hvp)(x, True), expected, rtol=1e-10)
    np.testing.assert_allclose(jax.grad(through_operator)(x), expected, rtol=1e-10)
    np.testing.assert_array_equal(jax.grad(through_hvp)(x, False), jnp.zeros(3))


def test_third_derivative_reference_agrees_with_finite_differences():
    x, v, w = jnp.array([0.3, -1.2, 0.7]), jnp.array([1.0, 0.5, -2.0]), jnp.array([0.2, 1.0, 0.4])
    eps = 1e-5

    @jax.jit
    def bilinear(x):
        return w @ jax.hessian(cubic)(x) @ v

    steps = eps * jnp.eye(3)
    differences = jnp.array([(bilinear(x + e) - bilinear(x - e)) / (2 * eps) for e in steps])
    np.testing.assert_allclose(third_derivative_reference(x, v, w), differences, rtol=1e-7)


@pytest.mark.parametrize("form", ["create_graph", "operator"])
def test_differentiable_products_pass_check_grads(form):
    x, v = jnp.array([0.3, -1.2, 0.7]), jnp.array([1.0, 0.5, -2.0])
    products = {
        "create_graph": lambda x: jaxhvp.hvp(cubic, x, v, create_graph=True)[1],
        "operator": lambda x: jaxhvp.hessian_operator(cubic, x) @ v,
    }
    jax.test_util.check_grads(products[form], (x,), order=1, modes=("fwd", "rev"))


def test_operator_products_are_differentiable_in_the_vector():
    x, v, w = jnp.array([0.3, -1.2, 0.7]), jnp.array([1.0, 0.5, -2.0]), jnp.array([0.2, 1.0, 0.4])
    op = jaxhvp.hessian_operator(cubic, x)  # built once, outside the differentiated function
    np.testing.assert_allclose(jax.grad(lambda v: w @ (op @ v))(v), jax.hessian(cubic)(x) @ w)
    np.testing.assert_allclose(
        jax.jacfwd(lambda v: op @ v)(v), jax.hessian(cubic)(x), rtol=1e-12, atol=1e-12
    )
