"""The benchmark problems: one scalar loss, defined in JAX and in torch on the same numpy data.

A :class:`Problem` holds float32 numpy parameters and data and the two definitions of its
loss, each ``loss(params: dict[str, array], data: dict[str, array]) -> scalar``. The
framework views (:func:`jax_view`, :func:`torch_view`) put the arrays on the default device
and give the forms the implementations call. The reference Hessian-vector products are
analytic where a closed form is cheap (Rosenbrock, logistic regression) and otherwise JAX's
forward-over-reverse product in float64 (:func:`references`). :func:`check_agreement`
checks that the two definitions give the same loss and gradient.

The MLP and the transformer also come split as a model and a loss in output space,
``loss(params, data) == output_loss(model(params, data), data)`` in both frameworks, and as
``torch.nn.Module`` s with the same weights (:class:`TorchModules`, for curvlinops and
BackPACK): the generalized Gauss-Newton rows. Their references (:func:`references`): the
GGN-vector product and the exact GGN diagonal in float64, and Hutchinson's estimate of the
diagonal with the very probes each implementation draws.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
import warnings
from collections.abc import Callable, Collection
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import torch
import torch.nn.functional as F
from jax import lax

F32 = np.float32
KS = (1, 8)  # vectors per call in the batched rows
KS_QUICK = (1, 8)


@dataclasses.dataclass
class Problem:
    name: str
    description: str
    params: dict[str, np.ndarray]
    data: dict[str, np.ndarray]
    jax_loss: Callable[[dict, dict], Any]
    torch_loss: Callable[[dict, dict], Any]
    analytic_hvp: Callable[[dict, dict, dict], dict] | None = None  # float64, leading k axis
    overhead: bool = False  # also gets the per-call overhead and fresh-closure rows
    # The loss as a top-level function of the bare parameter array, closing over nothing:
    # the "hand-written jit of f" comparison of the overhead rows (where the loss has one).
    plain_jax_loss: Callable[[Any], Any] | None = None
    batched: bool = False  # also gets the k-vector rows
    # The loss split in output space, for the GGN rows (None: no GGN rows):
    # jax_loss(p, d) == jax_output_loss(jax_model(p, d), d), and the same in torch.
    jax_model: Callable[[dict, dict], Any] | None = None
    jax_output_loss: Callable[[Any, dict], Any] | None = None
    torch_model: Callable[[dict, dict], Any] | None = None
    torch_output_loss: Callable[[Any, dict], Any] | None = None
    # A fresh TorchModules of the same model (curvlinops and BackPACK take modules).
    torch_modules: Callable[[Problem], TorchModules] | None = None
    # Why BackPACK cannot take the module, where it cannot (its DiagGGNExact row says so).
    backpack_unsupported: str | None = None

    @property
    def splits(self) -> bool:
        """Whether the problem comes as a model and a loss in output space (GGN rows)."""
        return self.jax_model is not None

    @property
    def names(self) -> list[str]:
        return sorted(self.params)

    @property
    def size(self) -> int:
        return sum(p.size for p in self.params.values())

    def vectors(self, k: int) -> dict[str, np.ndarray]:
        """``k`` random vectors, stacked on a leading axis; vector ``i`` does not depend on k."""
        rng = np.random.default_rng(7)
        rows = [
            {n: rng.standard_normal(self.params[n].shape).astype(F32) for n in self.names}
            for _ in range(k)
        ]
        return {n: np.stack([r[n] for r in rows]) for n in self.names}


# --- framework views -------------------------------------------------------------------------


@dataclasses.dataclass
class View:
    """A problem in one framework. ``params`` is the form passed to hvp-style functions: the
    bare array when there is one parameter, else a dict (JAX) or a tuple in sorted-name order
    (torch, whose functional API takes tensors or tuples)."""

    params: Any
    data: dict[str, Any]
    v: Any  # one vector, structured as params
    vs: list[Any]  # k vectors, each structured as params
    stacked: Any  # the k vectors stacked on a leading axis
    loss: Callable[[Any, dict], Any]  # (params, data) -> scalar
    func: Callable[[Any], Any]  # params -> scalar, closing over data (and nothing else)
    fresh_data: Callable[[], dict]  # a new copy of the data, as a fresh array each call
    # The split problem (None where it has none): params -> outputs, outputs -> scalar,
    # each closing over the data only.
    model: Callable[[Any], Any] | None = None
    output_loss: Callable[[Any], Any] | None = None


def _pack(names: list[str], arrays: dict, as_tuple: bool) -> Any:
    if len(names) == 1:
        return arrays[names[0]]
    return tuple(arrays[n] for n in names) if as_tuple else {n: arrays[n] for n in names}


def _unpack(names: list[str], packed: Any) -> dict:
    if len(names) == 1:
        return {names[0]: packed}
    return packed if isinstance(packed, dict) else dict(zip(names, packed))


def _closures(names: list[str], loss: Callable, data: dict) -> tuple[Callable, Callable]:
    """``loss(params, data)`` and ``func(params)``, as a user writes them: ``func`` closes
    over the loss and the data only. (A bound method of the view would hand jaxhvp's kernel
    cache every array the view holds, vectors included, as kernel arguments.)"""

    def packed_loss(params: Any, batch: dict) -> Any:
        return loss(_unpack(names, params), batch)

    def func(params: Any) -> Any:
        return packed_loss(params, data)

    return packed_loss, func


def _split_closures(
    names: list[str], model: Callable | None, output_loss: Callable | None, data: dict
) -> tuple[Callable | None, Callable | None]:
    """``func(params) -> outputs`` and ``loss(outputs) -> scalar``, closing over the data."""
    if model is None or output_loss is None:
        return None, None

    def func(params: Any) -> Any:
        return model(_unpack(names, params), data)

    def loss(outputs: Any) -> Any:
        return output_loss(outputs, data)

    return func, loss


def _view(
    problem: Problem,
    k: int,
    convert: Callable,
    loss: Callable,
    as_tuple: bool,
    split: tuple[Callable | None, Callable | None] = (None, None),
) -> View:
    names = problem.names
    stacked = problem.vectors(k)
    vs = [_pack(names, {n: convert(stacked[n][i]) for n in names}, as_tuple) for i in range(k)]

    def convert_data() -> dict:
        return {key: convert(value) for key, value in problem.data.items()}

    data = convert_data()
    packed_loss, func = _closures(names, loss, data)
    model, output_loss = _split_closures(names, *split, data)
    return View(
        params=_pack(names, {n: convert(problem.params[n]) for n in names}, as_tuple),
        data=data,
        v=vs[0],
        vs=vs,
        stacked=_pack(names, {n: convert(stacked[n]) for n in names}, as_tuple),
        loss=packed_loss,
        func=func,
        fresh_data=convert_data,
        model=model,
        output_loss=output_loss,
    )


def jax_view(problem: Problem, k: int = 1) -> View:
    split = (problem.jax_model, problem.jax_output_loss)
    return _view(problem, k, jax.device_put, problem.jax_loss, as_tuple=False, split=split)


def torch_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def to_torch(x: np.ndarray) -> torch.Tensor:
    t = torch.from_numpy(np.array(x))  # a copy: the numpy data stays untouched
    if t.dtype == torch.int32:
        t = t.long()  # torch's indexing and cross_entropy want int64 labels
    return t.to(torch_device())


def torch_view(problem: Problem, k: int = 1) -> View:
    split = (problem.torch_model, problem.torch_output_loss)
    return _view(problem, k, to_torch, problem.torch_loss, as_tuple=True, split=split)


# --- the losses ------------------------------------------------------------------------------
# Each loss is written once per framework, side by side; check_agreement compares them.


def rosenbrock(p: dict, d: dict) -> Any:
    """Works unchanged on jax arrays and torch tensors."""
    x = p["x"]
    return (100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (d["a"] - x[:-1]) ** 2).sum()


def rosenbrock_plain(x: Any) -> Any:
    """Rosenbrock as a top-level function of x (the problems' data ``a`` are ones)."""
    return jnp.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1.0 - x[:-1]) ** 2)


def rosenbrock_hvp(p: dict, d: dict, vs: dict) -> dict:
    x, v = p["x"], vs["x"]  # v: (k, n)
    diag = np.zeros_like(x)
    diag[:-1] += 1200.0 * x[:-1] ** 2 - 400.0 * x[1:] + 2.0
    diag[1:] += 200.0
    off = -400.0 * x[:-1]
    hv = diag * v
    hv[:, :-1] += off * v[:, 1:]
    hv[:, 1:] += off * v[:, :-1]
    return {"x": hv}


LOGREG_L2 = 1e-3


def logreg_jax(p: dict, d: dict) -> Any:
    z = d["X"] @ p["w"]
    return jnp.mean(jnp.logaddexp(0.0, z) - d["y"] * z) + 0.5 * LOGREG_L2 * jnp.sum(p["w"] ** 2)


def logreg_torch(p: dict, d: dict) -> Any:
    z = d["X"] @ p["w"]
    return torch.mean(F.softplus(z) - d["y"] * z) + 0.5 * LOGREG_L2 * torch.sum(p["w"] ** 2)


def logreg_hvp(p: dict, d: dict, vs: dict) -> dict:
    """H = X^T diag(s (1 - s)) X / m + lambda I, with s = sigmoid(X w)."""
    X, v = d["X"], vs["w"]  # v: (k, d)
    s = 1.0 / (1.0 + np.exp(-(X @ p["w"])))
    curvature = (s * (1.0 - s))[:, None] * (X @ v.T)  # (m, k)
    return {"w": (X.T @ curvature).T / X.shape[0] + LOGREG_L2 * v}


def mlp_model_jax(p: dict, d: dict) -> Any:
    """The logits."""
    h = d["x"]
    for i in range(3):
        h = h @ p[f"w{i}"] + p[f"b{i}"]
        h = jnp.tanh(h) if i < 2 else h
    return h


def mlp_model_torch(p: dict, d: dict) -> Any:
    h = d["x"]
    for i in range(3):
        h = h @ p[f"w{i}"] + p[f"b{i}"]
        h = torch.tanh(h) if i < 2 else h
    return h


def cross_entropy_jax(logits: Any, d: dict) -> Any:
    logp = jax.nn.log_softmax(logits, axis=-1)
    return -jnp.mean(jnp.take_along_axis(logp, d["y"][:, None], axis=1))


def cross_entropy_torch(logits: Any, d: dict) -> Any:
    return F.cross_entropy(logits, d["y"])


def mlp_jax(p: dict, d: dict) -> Any:
    return cross_entropy_jax(mlp_model_jax(p, d), d)


def mlp_torch(p: dict, d: dict) -> Any:
    return cross_entropy_torch(mlp_model_torch(p, d), d)


def _pool_jax(x: Any) -> Any:  # 2x2 average pooling, NCHW
    n, c, h, w = x.shape
    return x.reshape(n, c, h // 2, 2, w // 2, 2).mean(axis=(3, 5))


def _conv_jax(x: Any, w: Any, b: Any) -> Any:
    y = lax.conv_general_dilated(
        x, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=("NCHW", "OIHW", "NCHW")
    )
    return y + b[None, :, None, None]


def cnn_jax(p: dict, d: dict) -> Any:
    h = _pool_jax(jnp.tanh(_conv_jax(d["x"], p["c0w"], p["c0b"])))
    h = _pool_jax(jnp.tanh(_conv_jax(h, p["c1w"], p["c1b"])))
    logits = h.reshape(h.shape[0], -1) @ p["dw"] + p["db"]
    logp = jax.nn.log_softmax(logits, axis=-1)
    return -jnp.mean(jnp.take_along_axis(logp, d["y"][:, None], axis=1))


def cnn_torch(p: dict, d: dict) -> Any:
    h = F.avg_pool2d(torch.tanh(F.conv2d(d["x"], p["c0w"], p["c0b"], padding=1)), 2)
    h = F.avg_pool2d(torch.tanh(F.conv2d(h, p["c1w"], p["c1b"], padding=1)), 2)
    logits = h.reshape(h.shape[0], -1) @ p["dw"] + p["db"]
    return F.cross_entropy(logits, d["y"])


HEADS = 4


def _layer_norm(x: Any, g: Any, b: Any) -> Any:  # the same arithmetic in both frameworks
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / (var + 1e-5) ** 0.5 * g + b


def _split_heads(x: Any, batch: int, seq: int) -> Any:  # (B, T, D) -> (B, H, T, D/H)
    return x.reshape(batch, seq, HEADS, -1).transpose(0, 2, 1, 3)


def transformer_model_jax(p: dict, d: dict) -> Any:
    """The last residual stream, (batch, sequence, width)."""
    x = d["x"]
    batch, seq, width = x.shape
    causal = jnp.tril(jnp.ones((seq, seq), dtype=bool))
    for i in range(len(p) // 12):  # 12 parameters per layer
        q = f"l{i}."
        h = _layer_norm(x, p[q + "ln1g"], p[q + "ln1b"]) @ p[q + "qkvw"] + p[q + "qkvb"]
        qh, kh, vh = (_split_heads(t, batch, seq) for t in jnp.split(h, 3, axis=-1))
        scores = qh @ kh.swapaxes(-1, -2) / math.sqrt(width // HEADS)
        attn = jax.nn.softmax(jnp.where(causal, scores, -1e9), axis=-1)
        o = (attn @ vh).transpose(0, 2, 1, 3).reshape(batch, seq, width)
        x = x + o @ p[q + "ow"] + p[q + "ob"]
        h = _layer_norm(x, p[q + "ln2g"], p[q + "ln2b"]) @ p[q + "m1w"] + p[q + "m1b"]
        x = x + jax.nn.gelu(h, approximate=True) @ p[q + "m2w"] + p[q + "m2b"]
    return x


def squared_error(out: Any, d: dict) -> Any:
    """The mean squared error; works unchanged on jax arrays and torch tensors."""
    return ((out - d["target"]) ** 2).mean()


def transformer_jax(p: dict, d: dict) -> Any:
    return squared_error(transformer_model_jax(p, d), d)


def transformer_model_torch(p: dict, d: dict) -> Any:
    x = d["x"]
    batch, seq, width = x.shape
    causal = torch.tril(torch.ones(seq, seq, dtype=torch.bool, device=x.device))
    for i in range(len(p) // 12):  # 12 parameters per layer
        q = f"l{i}."
        h = _layer_norm(x, p[q + "ln1g"], p[q + "ln1b"]) @ p[q + "qkvw"] + p[q + "qkvb"]
        qh, kh, vh = (
            t.reshape(batch, seq, HEADS, -1).transpose(1, 2) for t in h.split(width, dim=-1)
        )
        scores = qh @ kh.transpose(-1, -2) / math.sqrt(width // HEADS)
        attn = torch.softmax(scores.masked_fill(~causal, -1e9), dim=-1)
        o = (attn @ vh).transpose(1, 2).reshape(batch, seq, width)
        x = x + o @ p[q + "ow"] + p[q + "ob"]
        h = _layer_norm(x, p[q + "ln2g"], p[q + "ln2b"]) @ p[q + "m1w"] + p[q + "m1b"]
        x = x + F.gelu(h, approximate="tanh") @ p[q + "m2w"] + p[q + "m2b"]
    return x


def transformer_torch(p: dict, d: dict) -> Any:
    return squared_error(transformer_model_torch(p, d), d)


# --- the same models as torch modules (curvlinops and BackPACK take nn.Modules) ---------------


def curvlinops() -> Any:
    """The ``curvlinops`` module, imported without the DeprecationWarning its dependency
    ``linear_operator`` raises on import with this torch (``torch.jit.script``)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "`torch.jit.script` is deprecated", DeprecationWarning)
        import curvlinops

    return curvlinops


@dataclasses.dataclass
class TorchModules:
    """A split problem as ``model(X) -> outputs`` and ``loss(outputs, y)``, torch modules
    with the problem's weights and data: curvlinops' and BackPACK's calling convention.

    The module's parameter ``i`` (``model.parameters()`` order) is the problem's parameter
    ``names[i]``, transposed where ``transposed[i]`` (``nn.Linear`` keeps its weight as
    ``(out, in)``, the problems as ``(in, out)``).
    """

    model: torch.nn.Module
    loss: torch.nn.Module  # reduction="mean", as the problem's loss
    X: torch.Tensor
    y: torch.Tensor
    names: list[str]
    transposed: list[bool]

    @property
    def params(self) -> list[torch.nn.Parameter]:
        return list(self.model.parameters())

    def to_module(self, tree: dict[str, np.ndarray]) -> list[torch.Tensor]:
        """A vector in the problem's layout (name -> array) in the module's list format."""
        return [
            to_torch(np.ascontiguousarray(tree[n].T) if t else tree[n])
            for n, t in zip(self.names, self.transposed)
        ]

    def to_problem(self, tensors: Any) -> dict[str, torch.Tensor]:
        """The module's list format in the problem's layout, a leading axis of stacked
        vectors kept (the transposes are views)."""
        return {
            n: x.transpose(-1, -2) if t else x
            for n, t, x in zip(self.names, self.transposed, tensors)
        }

    def unflatten(self, flat: torch.Tensor) -> list[torch.Tensor]:
        """A flat vector (the last axis) in the module's flat order, as curvlinops flattens,
        in the module's list format (views)."""
        shapes = [p.shape for p in self.params]
        pieces = flat.split([s.numel() for s in shapes], dim=-1)
        return [x.reshape(*flat.shape[:-1], *s) for x, s in zip(pieces, shapes)]


def mlp_modules(problem: Problem) -> TorchModules:
    """``nn.Sequential`` of ``nn.Linear`` and ``nn.Tanh``: what BackPACK supports."""
    layers: list[torch.nn.Module] = []
    for i in range(3):
        w, b = problem.params[f"w{i}"], problem.params[f"b{i}"]
        linear = torch.nn.Linear(*w.shape)
        with torch.no_grad():
            linear.weight.copy_(torch.from_numpy(w.T.copy()))  # y = x W^T + b in torch
            linear.bias.copy_(torch.from_numpy(b.copy()))
        layers += [linear, torch.nn.Tanh()] if i < 2 else [linear]
    return TorchModules(
        model=torch.nn.Sequential(*layers).to(torch_device()),
        loss=torch.nn.CrossEntropyLoss(),
        X=to_torch(problem.data["x"]),
        y=to_torch(problem.data["y"]),
        names=[f"{kind}{i}" for i in range(3) for kind in ("w", "b")],
        transposed=[kind == "w" for i in range(3) for kind in ("w", "b")],
    )


class TransformerModule(torch.nn.Module):
    """:func:`transformer_model_torch` as a module holding the problem's parameters."""

    def __init__(self, params: dict[str, np.ndarray]) -> None:
        super().__init__()
        self.names = sorted(params)
        self.weights = torch.nn.ParameterList(
            torch.nn.Parameter(to_torch(params[n])) for n in self.names
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return transformer_model_torch(dict(zip(self.names, self.weights)), {"x": x})


# What BackPACK 1.7 says, tried on this module (bench/problems.py's TransformerModule):
BACKPACK_TRANSFORMER = (
    "BackPACK does not support this model: its MSELoss extension takes 2D outputs only "
    "(ValueError on the (batch, sequence, width) outputs), and with the outputs flattened "
    "to 2D it has no DiagGGNExact extension for the transformer module, whose attention, "
    "layer norm and residual connections are tensor operations, not BackPACK layers "
    "(NotImplementedError)"
)


def transformer_modules(problem: Problem) -> TorchModules:
    model = TransformerModule(problem.params)
    return TorchModules(
        model=model,
        loss=torch.nn.MSELoss(),
        X=to_torch(problem.data["x"]),
        y=to_torch(problem.data["target"]),
        names=list(model.names),
        transposed=[False] * len(model.names),
    )


# --- the registry ----------------------------------------------------------------------------


def _dense(rng: np.random.Generator, fan_in: int, *shape: int) -> np.ndarray:
    return (rng.standard_normal(shape) / math.sqrt(fan_in)).astype(F32)


def _rosenbrock(n: int, overhead: bool) -> Callable[[bool], Problem]:
    def build(quick: bool) -> Problem:
        rng = np.random.default_rng(0)
        return Problem(
            name=f"rosenbrock{n}",
            description=f"Rosenbrock, n={n}",
            params={"x": (1.0 + 0.5 * rng.standard_normal(n)).astype(F32)},
            data={"a": np.ones(n - 1, F32)},
            jax_loss=rosenbrock,
            torch_loss=rosenbrock,
            analytic_hvp=rosenbrock_hvp,
            overhead=overhead,
            plain_jax_loss=rosenbrock_plain,
        )

    return build


def _logreg(quick: bool, d: int = 1000, m: int = 10000) -> Problem:
    rng = np.random.default_rng(1)
    X = (rng.standard_normal((m, d)) / math.sqrt(d)).astype(F32)
    truth = rng.standard_normal(d)
    y = (rng.random(m) < 1.0 / (1.0 + np.exp(-(X @ truth)))).astype(F32)
    return Problem(
        name="logreg",
        description=f"L2 logistic regression, d={d}, m={m}",
        params={"w": (0.1 * rng.standard_normal(d)).astype(F32)},
        data={"X": X, "y": y},
        jax_loss=logreg_jax,
        torch_loss=logreg_torch,
        analytic_hvp=logreg_hvp,
    )


def _mlp(quick: bool, batch: int = 256, widths: tuple = (784, 512, 512, 10)) -> Problem:
    rng = np.random.default_rng(2)
    params = {}
    for i, (a, b) in enumerate(itertools.pairwise(widths)):
        params[f"w{i}"] = _dense(rng, a, a, b)
        params[f"b{i}"] = (0.1 * rng.standard_normal(b)).astype(F32)
    return Problem(
        name="mlp",
        description=f"MLP {'-'.join(map(str, widths))}, tanh, batch {batch}",
        params=params,
        data={
            "x": rng.standard_normal((batch, widths[0])).astype(F32),
            "y": rng.integers(0, widths[-1], batch).astype(np.int32),
        },
        jax_loss=mlp_jax,
        torch_loss=mlp_torch,
        overhead=True,
        batched=True,
        jax_model=mlp_model_jax,
        jax_output_loss=cross_entropy_jax,
        torch_model=mlp_model_torch,
        torch_output_loss=cross_entropy_torch,
        torch_modules=mlp_modules,
    )


def _cnn(quick: bool) -> Problem:
    batch = 16 if quick else 64
    rng = np.random.default_rng(3)
    return Problem(
        name="cnn",
        description=f"CNN conv16-pool-conv32-pool-dense10 on 32x32x3, tanh, batch {batch}",
        params={
            "c0w": _dense(rng, 27, 16, 3, 3, 3),
            "c0b": np.zeros(16, F32),
            "c1w": _dense(rng, 144, 32, 16, 3, 3),
            "c1b": np.zeros(32, F32),
            "dw": _dense(rng, 2048, 2048, 10),
            "db": np.zeros(10, F32),
        },
        data={
            "x": rng.standard_normal((batch, 3, 32, 32)).astype(F32),
            "y": rng.integers(0, 10, batch).astype(np.int32),
        },
        jax_loss=cnn_jax,
        torch_loss=cnn_torch,
    )


def _transformer(quick: bool, width: int = 128, seq: int = 64) -> Problem:
    """Two layers at batch 8; --quick: one layer at batch 2 (compilation dominates there)."""
    batch, layers = (2, 1) if quick else (8, 2)
    rng = np.random.default_rng(4)
    params = {}
    for i in range(layers):
        q = f"l{i}."
        for ln in ("ln1", "ln2"):
            params[q + ln + "g"] = np.ones(width, F32)
            params[q + ln + "b"] = np.zeros(width, F32)
        for name, a, b in (
            ("qkv", width, 3 * width),
            ("o", width, width),
            ("m1", width, 4 * width),
            ("m2", 4 * width, width),
        ):
            params[q + name + "w"] = _dense(rng, a, a, b)
            params[q + name + "b"] = np.zeros(b, F32)
    return Problem(
        name="transformer",
        description=f"Transformer, {layers} pre-LN layer(s), d_model {width}, "
        f"{HEADS} heads, sequence {seq}, batch {batch}",
        params=params,
        data={
            "x": rng.standard_normal((batch, seq, width)).astype(F32),
            "target": rng.standard_normal((batch, seq, width)).astype(F32),
        },
        jax_loss=transformer_jax,
        torch_loss=transformer_torch,
        jax_model=transformer_model_jax,
        jax_output_loss=squared_error,
        torch_model=transformer_model_torch,
        torch_output_loss=squared_error,
        torch_modules=transformer_modules,
        backpack_unsupported=BACKPACK_TRANSFORMER,
    )


BUILDERS: dict[str, Callable[[bool], Problem]] = {
    "rosenbrock10": _rosenbrock(10, overhead=True),
    "rosenbrock100000": _rosenbrock(100_000, overhead=False),
    "logreg": _logreg,
    "mlp": _mlp,
    "cnn": _cnn,
    "transformer": _transformer,
}


def build(name: str, quick: bool) -> Problem:
    """The problem called ``name``; ``quick`` shrinks the batch of the CNN and transformer."""
    return BUILDERS[name](quick)


# --- references and the agreement check ------------------------------------------------------


PROBE_SEED = 0  # the seed of the Hutchinson rows' probes: jax.random.key and torch.manual_seed
REFERENCE_PARTS = ("ggn", "ggn_diag", "hutchinson:jaxhvp", "hutchinson:torch")


def references(
    problem: Problem, k: int, parts: Collection[str] = (), probes: int = 0
) -> dict[str, dict[str, np.ndarray]]:
    """References, by part: ``grad`` (JAX, float64) and ``hvp`` for the first ``k`` vectors,
    stacked on a leading axis (analytic when the problem has it, else JAX in float64); and
    for a split problem, those of ``parts`` asked for:

    * ``ggn``: the GGN-vector product ``J^T H_L J v`` with the first vector, JAX, float64;
    * ``ggn_diag``: the exact GGN diagonal, float64, from per-example Jacobians
      (:func:`exact_ggn_diagonal`);
    * ``hutchinson:torch``: Hutchinson's estimate of the GGN diagonal with the ``probes``
      Rademacher probes ``curvlinops.hutchinson_diag`` draws after
      ``torch.manual_seed(PROBE_SEED)`` (:func:`curvlinops_probes`), computed in float64
      with the product above: ``mean_i z_i * (G z_i)``;
    * ``hutchinson:jaxhvp``: ``jaxhvp.spectrum.diagonal`` with ``key=PROBE_SEED`` and
      ``probes`` probes on the product above written in float32 (a plain matvec, not jaxhvp's
      operator). Not float64: under x64, JAX draws other Rademacher signs
      (``jax.random.bernoulli`` samples uniforms in the dtype of ``p=0.5``), so the probes of
      a float64 run would not be the row's.
    """
    unknown = set(parts) - set(REFERENCE_PARTS)
    if unknown or (parts and not problem.splits):
        raise ValueError(f"{problem.name}: no references {sorted(unknown or parts)}")
    p64 = {n: x.astype(np.float64) for n, x in problem.params.items()}
    d64 = {
        n: x.astype(np.float64) if np.issubdtype(x.dtype, np.floating) else x
        for n, x in problem.data.items()
    }
    vs64 = {n: x.astype(np.float64) for n, x in problem.vectors(k).items()}
    with jax.enable_x64(True):
        loss = problem.jax_loss  # everything is an argument: closed-over arrays would be
        grad = jax.jit(jax.grad(loss))(p64, d64)  # folded into the program as constants

        def products(p: dict, d: dict, vs: dict) -> dict:
            def one(v: dict) -> dict:
                return jax.jvp(lambda q: jax.grad(loss)(q, d), (p,), (v,))[1]

            return lax.map(one, vs, batch_size=8)

        if problem.analytic_hvp is not None:
            hvp = problem.analytic_hvp(p64, d64, vs64)
        else:
            hvp = jax.jit(products)(p64, d64, vs64)
        refs = {"grad": _numpy_tree(problem, grad), "hvp": _numpy_tree(problem, hvp)}
        if "ggn" in parts:
            v0 = {n: x[0] for n, x in vs64.items()}
            refs["ggn"] = _numpy_tree(problem, jax.jit(ggn_product(problem))(p64, d64, v0))
        if "ggn_diag" in parts:
            diagonal = jax.jit(functools.partial(exact_ggn_diagonal, problem))(p64, d64)
            refs["ggn_diag"] = _numpy_tree(problem, diagonal)
        if "hutchinson:torch" in parts:
            zs = {n: z.astype(np.float64) for n, z in curvlinops_probes(problem, probes).items()}
            refs["hutchinson:torch"] = _numpy_tree(
                problem, jax.jit(_hutchinson(ggn_product(problem)))(p64, d64, zs)
            )
    if "hutchinson:jaxhvp" in parts:  # in the caller's precision: the rows' probes
        import jaxhvp.spectrum

        product = ggn_product(problem)
        params = jax.device_put(problem.params)
        data = jax.device_put(problem.data)
        estimate = jaxhvp.spectrum.diagonal(
            lambda v: product(params, data, v),
            like=params,
            key=jax.random.key(PROBE_SEED),
            num_probes=probes,
        )
        refs["hutchinson:jaxhvp"] = _numpy_tree(problem, estimate.value)
    return refs


def _numpy_tree(problem: Problem, tree: dict) -> dict[str, np.ndarray]:
    return {n: np.asarray(tree[n]) for n in problem.names}


def ggn_product(problem: Problem) -> Callable[[dict, dict, dict], dict]:
    """``(params, data, v) -> J^T H_L J v`` written out: the model's jvp, the Hessian-vector
    product of the loss in output space (forward over reverse), the model's vjp. It closes
    over the two functions only (jaxhvp's kernel cache walks what a matvec reads)."""
    jax_model, jax_output_loss = problem.jax_model, problem.jax_output_loss

    def product(p: dict, d: dict, v: dict) -> dict:
        def model(q: dict) -> Any:
            return jax_model(q, d)

        out, jv = jax.jvp(model, (p,), (v,))
        hjv = jax.jvp(jax.grad(lambda o: jax_output_loss(o, d)), (out,), (jv,))[1]
        return jax.vjp(model, p)[1](hjv)[0]

    return product


def _hutchinson(product: Callable) -> Callable[[dict, dict, dict], dict]:
    """``(params, data, probes) -> mean_i z_i * (G z_i)``, the probes stacked on axis 0."""

    def estimate(p: dict, d: dict, zs: dict) -> dict:
        samples = lax.map(
            lambda z: jax.tree.map(jnp.multiply, z, product(p, d, z)), zs, batch_size=4
        )
        return jax.tree.map(lambda x: x.mean(axis=0), samples)

    return estimate


def exact_ggn_diagonal(problem: Problem, p: dict, d: dict) -> dict:
    """``diag(G) = sum_i diag(J_i^T C_i J_i)`` over the examples ``i`` of the batch.

    ``J_i`` is the Jacobian of example ``i``'s outputs (the model run on that example alone)
    and ``C_i`` the Hessian of the loss in those outputs, the other examples' outputs held
    fixed. Exact when the loss is a sum of per-example terms (its Hessian in the outputs is
    block-diagonal: cross-entropy and squared error, averaged) and the model treats the
    examples independently (no batch statistics): both hold for the MLP and the transformer.
    Every data array has the examples on its leading axis.
    """
    model, loss = problem.jax_model, problem.jax_output_loss
    out = model(p, d)

    def add(total: dict, i: jax.Array) -> tuple[dict, None]:
        d_i = jax.tree.map(lambda x: lax.dynamic_slice_in_dim(x, i, 1), d)
        o_i = lax.dynamic_slice_in_dim(out, i, 1)
        m = o_i.size
        c = jax.hessian(lambda o: loss(lax.dynamic_update_slice_in_dim(out, o, i, 0), d))(o_i)
        c = c.reshape(m, m)
        jac = jax.jacrev(lambda q: model(q, d_i).reshape(-1))(p)  # leaves: (m, *shape)

        def term(j: jax.Array) -> jax.Array:
            return jnp.sum(j * jnp.tensordot(c, j, axes=(1, 0)), axis=0)

        return jax.tree.map(lambda t, j: t + term(j), total, jac), None

    zeros = jax.tree.map(jnp.zeros_like, p)
    return lax.scan(add, zeros, jnp.arange(out.shape[0]))[0]


class _RecordingOperator:
    """Stands in for a square operator in ``curvlinops.hutchinson_diag``: records the probe
    matrix it is multiplied with (what the function drew) and returns zeros."""

    def __init__(self, dim: int, device: torch.device, dtype: torch.dtype) -> None:
        self.shape, self.device, self.dtype = (dim, dim), device, dtype
        self.probes: torch.Tensor | None = None

    def __matmul__(self, probes: torch.Tensor) -> torch.Tensor:
        self.probes = probes.clone()
        return torch.zeros_like(probes)


def curvlinops_probes(problem: Problem, probes: int) -> dict[str, np.ndarray]:
    """The Rademacher probes ``curvlinops.hutchinson_diag(A, probes)`` draws right after
    ``torch.manual_seed(PROBE_SEED)`` on the problem's torch module, in the problem's layout,
    stacked on axis 0: captured by calling the function itself on a recording operator."""
    hutchinson_diag = curvlinops().hutchinson_diag
    modules = problem.torch_modules(problem)
    dim = sum(p.numel() for p in modules.params)
    recorder = _RecordingOperator(dim, modules.X.device, modules.params[0].dtype)
    torch.manual_seed(PROBE_SEED)
    hutchinson_diag(recorder, probes)
    stacked = modules.to_problem(modules.unflatten(recorder.probes.T))  # (probes, dim) rows
    return {n: x.cpu().numpy() for n, x in stacked.items()}


def rel_err(got: dict[str, np.ndarray], ref: dict[str, np.ndarray]) -> float:
    """``max |got - ref| / max |ref|`` per leaf, the largest over leaves (inf on a mismatch)."""
    worst = 0.0
    for name, r in ref.items():
        g = np.asarray(got.get(name), dtype=np.float64)
        if g.shape != r.shape or not np.all(np.isfinite(g)):
            return math.inf
        scale = float(np.max(np.abs(r))) or 1.0
        worst = max(worst, float(np.max(np.abs(g - r))) / scale)
    return worst


def check_agreement(problem: Problem) -> dict[str, float]:
    """Relative differences of the float32 loss and gradient between JAX and torch."""
    jv, tv = jax_view(problem), torch_view(problem)
    jl, jg = jax.jit(jax.value_and_grad(jv.loss))(jv.params, jv.data)
    tp = tuple(t.detach().requires_grad_() for t in _as_tuple(tv.params))
    tl = tv.loss(tp if len(tp) > 1 else tp[0], tv.data)
    tg = torch.autograd.grad(tl, tp)
    tl = tl.detach()
    names = problem.names
    jax_grad = {n: np.asarray(x) for n, x in _unpack(names, jg).items()}
    torch_grad = {n: g.detach().cpu().numpy() for n, g in zip(names, tg)}
    agreement = {
        "loss_rel_diff": abs(float(jl) - float(tl)) / max(abs(float(jl)), 1e-30),
        "grad_rel_diff": rel_err(torch_grad, jax_grad),
    }
    if problem.torch_modules is not None:  # the nn.Module's outputs: the same weights
        modules = problem.torch_modules(problem)
        with torch.no_grad():
            torch_out = modules.model(modules.X).cpu().numpy()
        jax_out = np.asarray(jax.jit(problem.jax_model)(jv.params, jv.data), np.float64)
        agreement["module_output_rel_diff"] = rel_err({"out": torch_out}, {"out": jax_out})
    return agreement


def _as_tuple(params: Any) -> tuple:
    return params if isinstance(params, tuple) else (params,)
