"""jaxhvp's output-space operators against curvlinops, on the same model and data, in float64.

A 5 -> 4 (tanh) -> 3 MLP is a ``torch.nn.Sequential`` for curvlinops and a function of a JAX
pytree for jaxhvp, with the same weights and the same three mini-batches. The operators are
compared as dense matrices, jaxhvp's permuted to torch's parameter order, to float64
precision (the tolerances of ``conftest.assert_trees_close``):

* ``ggn_operator`` (and one product in torch's list format) and ``fisher_operator`` against
  ``GGNLinearOperator``: for these losses the GGN is the exact Fisher;
* ``empirical_fisher_operator`` against ``EFLinearOperator``;
* ``fisher_operator(mc_samples=...)`` against ``FisherMCLinearOperator``, with curvlinops'
  sampler patched to hand out the gradients jaxhvp samples (the RNGs cannot agree);
* the GGN operator's ``value`` and ``grad`` against torch's loss and gradient.
"""

import functools
import itertools
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from conftest import assert_trees_close
from jax.flatten_util import ravel_pytree

import jaxhvp
from jaxhvp.operators._likelihoods import Likelihood

# torch deprecates torch.jit.script, which curvlinops' dependency linear_operator runs on import
# and torch's forward-mode AD (in curvlinops' products) runs to load its decompositions.
TORCH_JIT_WARNING = "ignore:`torch.jit.script` is deprecated:DeprecationWarning"
pytestmark = pytest.mark.filterwarnings(TORCH_JIT_WARNING)
with warnings.catch_warnings():
    warnings.filterwarnings("ignore", "`torch.jit.script` is deprecated", DeprecationWarning)
    import curvlinops
    import curvlinops.fisher

N, B, D, H, C = 12, 3, 5, 4, 3  # examples, batches (of N // B), inputs, hidden, outputs
LIKELIHOODS = ["categorical", "gaussian", "bernoulli"]
TORCH_LOSSES = {
    "categorical": torch.nn.CrossEntropyLoss,
    "gaussian": torch.nn.MSELoss,
    "bernoulli": torch.nn.BCEWithLogitsLoss,
}


def to_jax(tensors):
    """torch's ``[W1, b1, W2, b2]`` (``Linear`` weights ``(out, in)``) -> the JAX pytree
    ``[{"w": (in, out), "b": (out,)}, ...]``; ``to_torch`` is its inverse. (Layouts are
    converted in NumPy: eager JAX ops would each compile.)"""
    arrays = [t.detach().numpy() for t in tensors]
    return [
        {"w": jax.device_put(w.T), "b": jax.device_put(b)}
        for w, b in zip(arrays[::2], arrays[1::2])
    ]


def to_torch(params):
    return [torch.tensor(x) for layer in params for x in (np.asarray(layer["w"]).T, layer["b"])]


def mlp(params, batch):
    x, _ = batch
    first, second = params
    return jnp.tanh(x @ first["w"] + first["b"]) @ second["w"] + second["b"]


def terms(likelihood, f, y):
    """The loss terms torch's loss with ``reduction='mean'`` averages: (N,) or (N, C)."""
    if likelihood == "categorical":
        return jax.nn.logsumexp(f, axis=-1) - jnp.take_along_axis(f, y[:, None], -1)[:, 0]
    if likelihood == "gaussian":
        return (f - y) ** 2
    return jax.nn.softplus(f) - y * f


def mean_loss(likelihood, f, batch):
    """torch's loss with ``reduction='mean'``, as jaxhvp's ``loss(outputs, batch)``."""
    return terms(likelihood, f, batch[1]).mean()


def per_example(likelihood, f, batch):
    """One loss per example, for the empirical Fisher: the terms of each example summed."""
    out = terms(likelihood, f, batch[1])
    return out if out.ndim == 1 else out.sum(axis=-1)


class Problem:
    """One model and data set in both frameworks."""

    def __init__(self, likelihood, seed=0):
        rng = np.random.default_rng(seed)
        torch.manual_seed(seed)
        self.likelihood = likelihood
        self.model = torch.nn.Sequential(
            torch.nn.Linear(D, H), torch.nn.Tanh(), torch.nn.Linear(H, C)
        ).double()
        self.tensors = list(self.model.parameters())
        self.params = to_jax(self.tensors)
        x = rng.normal(size=(N, D))
        if likelihood == "categorical":
            y = rng.integers(0, C, size=N)
        elif likelihood == "gaussian":
            y = rng.normal(size=(N, C))
        else:
            y = rng.integers(0, 2, size=(N, C)).astype(np.float64)
        self.x, self.y = torch.tensor(x), torch.tensor(y)
        self.data = list(zip(self.x.split(N // B), self.y.split(N // B)))  # curvlinops
        self.batches = (  # jaxhvp: the same mini-batches, stacked
            jax.device_put(x.reshape(B, N // B, D)),
            jax.device_put(y.reshape(B, N // B, *y.shape[1:])),
        )

    def loss_func(self, reduction="mean"):
        return TORCH_LOSSES[self.likelihood](reduction=reduction)

    def torch_operator(self, operator, reduction="mean", **kwargs):
        """A curvlinops operator on the model and the mini-batches (deterministic, so its
        checks that two passes agree are skipped)."""
        loss_func = self.loss_func(reduction)
        return operator(
            self.model, loss_func, self.tensors, self.data, check_deterministic=False, **kwargs
        )

    # jaxhvp gets plain functions, not bound methods: its kernel cache would walk this
    # object, torch model included, and fall back to running op by op.
    def loss(self):
        return functools.partial(mean_loss, self.likelihood)

    def losses(self):
        return functools.partial(per_example, self.likelihood)


def torch_order(params):
    """``order[i]``: the position in ``ravel_pytree(params)`` of torch's flat entry ``i``."""
    leaves, treedef = jax.tree_util.tree_flatten(params)  # ravel_pytree's order
    starts = np.cumsum([0] + [x.size for x in leaves])
    positions = [start + np.arange(x.size).reshape(x.shape) for start, x in zip(starts, leaves)]
    return torch.cat([t.flatten() for t in to_torch(treedef.unflatten(positions))]).numpy()


def dense(torch_op):
    return (torch_op @ torch.eye(torch_op.shape[1], dtype=torch.float64)).numpy()


def assert_same_matrix(jax_op, torch_op, params):
    """The dense matrices agree, jaxhvp's (``ravel_pytree`` order) permuted to torch's."""
    order = torch_order(params)
    assert_trees_close(np.asarray(jax_op.as_matrix())[np.ix_(order, order)], dense(torch_op))


# (likelihood, reduction): every likelihood with the mean, and the sum once.
FISHER_CASES = [(likelihood, "mean") for likelihood in LIKELIHOODS] + [("gaussian", "sum")]


def test_to_jax_and_to_torch_round_trip():
    p = Problem("categorical")
    back = to_torch(p.params)
    assert all(torch.equal(b, t.detach()) for b, t in zip(back, p.tensors, strict=True))
    assert_trees_close(to_jax(back), p.params)
    # the pytree runs the torch model, and torch_order maps ravel_pytree's order to torch's
    f = mlp(p.params, (jax.device_put(p.x.numpy()), None))
    assert_trees_close(np.asarray(f), p.model(p.x).detach().numpy())
    flat = np.asarray(ravel_pytree(p.params)[0])
    np.testing.assert_array_equal(
        flat[torch_order(p.params)], torch.cat([t.flatten() for t in back])
    )


@pytest.mark.parametrize("likelihood", LIKELIHOODS)
def test_ggn(likelihood):
    """The GGN, one product in list format, and the loss and gradient on the whole data."""
    p = Problem(likelihood)
    op = jaxhvp.ggn_operator(mlp, p.loss(), p.params, batches=p.batches)
    ggn = p.torch_operator(curvlinops.GGNLinearOperator)
    assert_same_matrix(op, ggn, p.params)

    v = to_jax([torch.randn_like(t) for t in p.tensors])
    assert_trees_close(op @ v, to_jax(ggn @ to_torch(v)))

    loss = p.loss_func()(p.model(p.x), p.y)
    assert_trees_close(np.asarray(op.value), loss.detach().numpy())
    assert_trees_close(op.grad, to_jax(torch.autograd.grad(loss, p.tensors)))


@pytest.mark.parametrize(("likelihood", "reduction"), FISHER_CASES)
def test_exact_fisher(likelihood, reduction):
    """For these losses curvlinops' GGN is the exact Fisher."""
    p = Problem(likelihood)
    op = jaxhvp.fisher_operator(
        mlp, p.params, likelihood=likelihood, batches=p.batches, reduction=reduction
    )
    ggn = p.torch_operator(curvlinops.GGNLinearOperator, reduction)
    assert_same_matrix(op, ggn, p.params)


@pytest.mark.parametrize(
    ("likelihood", "reduction"),
    # With reduction='mean', curvlinops divides the EF of MSELoss and BCEWithLogitsLoss by
    # N * C (its loss terms are elements), jaxhvp by N (one loss per example): they agree on
    # the sum, and on the mean of CrossEntropyLoss (one term per example).
    [("categorical", "mean"), ("gaussian", "sum"), ("bernoulli", "sum")],
)
def test_empirical_fisher(likelihood, reduction):
    p = Problem(likelihood)
    op = jaxhvp.empirical_fisher_operator(
        mlp, p.losses(), p.params, batches=p.batches, reduction=reduction
    )
    ef = p.torch_operator(curvlinops.EFLinearOperator, reduction)
    assert_same_matrix(op, ef, p.params)
    loss = p.loss_func(reduction)(p.model(p.x), p.y)
    assert_trees_close(np.asarray(op.value), loss.detach().numpy())


@pytest.mark.parametrize("likelihood", LIKELIHOODS)
def test_monte_carlo_fisher(likelihood, monkeypatch):
    """The two RNGs cannot agree, so curvlinops is handed jaxhvp's samples.

    curvlinops builds its sampler with ``make_grad_output_sampler(loss_func)`` and calls it
    once per mini-batch of every product, the batches in order (``FIXED_DATA_ORDER``). The
    patched sampler returns, for batch ``b``, the output gradients jaxhvp draws for it,
    ``Likelihood(...).sampled_gradients(fold_in(key, b), f_b, mc_samples)``, after checking
    that curvlinops' outputs are the JAX model's ``f_b``.
    """
    # An RBG key: the samples' source is beside the point here, and threefry's hash takes
    # about a second to compile into each program on CPU.
    p, key, mc_samples = Problem(likelihood), jax.random.key(3, impl="rbg"), 2
    outputs = [mlp(p.params, (x, None)) for x in p.batches[0]]
    samples = [
        Likelihood(likelihood).sampled_gradients(jax.random.fold_in(key, b), f, mc_samples)
        for b, f in enumerate(outputs)
    ]
    handed_out = itertools.cycle(zip(outputs, samples))
    calls = []

    def sampler(output, num_samples, y, generator):
        f, grads = next(handed_out)
        assert num_samples == mc_samples
        torch.testing.assert_close(output, torch.tensor(np.asarray(f)), rtol=1e-12, atol=1e-12)
        calls.append(num_samples)
        return torch.tensor(np.asarray(grads))

    monkeypatch.setattr(curvlinops.fisher, "make_grad_output_sampler", lambda loss_func: sampler)
    op = jaxhvp.fisher_operator(
        mlp,
        p.params,
        likelihood=likelihood,
        batches=p.batches,
        mc_samples=mc_samples,
        key=key,
    )
    fisher = p.torch_operator(curvlinops.FisherMCLinearOperator, mc_samples=mc_samples)
    assert_same_matrix(op, fisher, p.params)
    assert calls and len(calls) % B == 0  # each product took all the batches' samples

    # the samples matter: with two of them, the Monte Carlo Fisher is not the exact one
    exact = dense(p.torch_operator(curvlinops.GGNLinearOperator))
    assert not np.allclose(dense(fisher), exact, rtol=1e-2, atol=0)


@pytest.mark.parametrize("kind", ["ggn", "hessian"])
def test_streamed_unequal_batches(kind):
    """Batches of 5, 4 and 3 examples read from a list at every product, against curvlinops
    on the same data loader (both weight batch b by n_b / num_data)."""
    p = Problem("categorical")
    sizes = [5, 4, 3]
    edges = np.cumsum([0, *sizes])
    data = [(p.x[a:b], p.y[a:b]) for a, b in itertools.pairwise(edges)]
    loader = [(x.numpy(), y.numpy()) for x, y in data]
    batches = jaxhvp.operators.stream(loader, num_data=N)
    loss = p.loss()
    if kind == "ggn":
        op = jaxhvp.ggn_operator(mlp, loss, p.params, batches=batches)
        torch_class = curvlinops.GGNLinearOperator
    else:
        op = jaxhvp.hessian_operator(lambda w, b: loss(mlp(w, b), b), p.params, batches=batches)
        torch_class = curvlinops.HessianLinearOperator
    torch_op = torch_class(
        p.model, p.loss_func(), p.tensors, data, num_data=N, check_deterministic=False
    )
    assert_same_matrix(op, torch_op, p.params)
    loss_all = p.loss_func()(p.model(p.x), p.y)
    assert_trees_close(np.asarray(op.value), loss_all.detach().numpy())
    assert_trees_close(op.grad, to_jax(torch.autograd.grad(loss_all, p.tensors)))
