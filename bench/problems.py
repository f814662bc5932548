"""The benchmark problems: one scalar loss, defined in JAX and in torch on the same numpy data.

A :class:`Problem` holds float32 numpy parameters and data and the two definitions of its
loss, each ``loss(params: dict[str, array], data: dict[str, array]) -> scalar``. The
framework views (:func:`jax_view`, :func:`torch_view`) put the arrays on the default device
and give the forms the implementations call. The reference Hessian-vector products are
analytic where a closed form is cheap (Rosenbrock, logistic regression) and otherwise JAX's
forward-over-reverse product in float64 (:func:`references`). :func:`check_agreement`
checks that the two definitions give the same loss and gradient.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import torch
import torch.nn.functional as F
from jax import lax

F32 = np.float32
KS = (1, 8, 64)  # vectors per call in the batched rows
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


def _view(problem: Problem, k: int, convert: Callable, loss: Callable, as_tuple: bool) -> View:
    names = problem.names
    stacked = problem.vectors(k)
    vs = [_pack(names, {n: convert(stacked[n][i]) for n in names}, as_tuple) for i in range(k)]

    def convert_data() -> dict:
        return {key: convert(value) for key, value in problem.data.items()}

    data = convert_data()
    packed_loss, func = _closures(names, loss, data)
    return View(
        params=_pack(names, {n: convert(problem.params[n]) for n in names}, as_tuple),
        data=data,
        v=vs[0],
        vs=vs,
        stacked=_pack(names, {n: convert(stacked[n]) for n in names}, as_tuple),
        loss=packed_loss,
        func=func,
        fresh_data=convert_data,
    )


def jax_view(problem: Problem, k: int = 1) -> View:
    return _view(problem, k, jax.device_put, problem.jax_loss, as_tuple=False)


def torch_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def to_torch(x: np.ndarray) -> torch.Tensor:
    t = torch.from_numpy(np.array(x))  # a copy: the numpy data stays untouched
    if t.dtype == torch.int32:
        t = t.long()  # torch's indexing and cross_entropy want int64 labels
    return t.to(torch_device())


def torch_view(problem: Problem, k: int = 1) -> View:
    return _view(problem, k, to_torch, problem.torch_loss, as_tuple=True)


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


def mlp_jax(p: dict, d: dict) -> Any:
    h = d["x"]
    for i in range(3):
        h = h @ p[f"w{i}"] + p[f"b{i}"]
        h = jnp.tanh(h) if i < 2 else h
    logp = jax.nn.log_softmax(h, axis=-1)
    return -jnp.mean(jnp.take_along_axis(logp, d["y"][:, None], axis=1))


def mlp_torch(p: dict, d: dict) -> Any:
    h = d["x"]
    for i in range(3):
        h = h @ p[f"w{i}"] + p[f"b{i}"]
        h = torch.tanh(h) if i < 2 else h
    return F.cross_entropy(h, d["y"])


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


def transformer_jax(p: dict, d: dict) -> Any:
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
    return jnp.mean((x - d["target"]) ** 2)


def transformer_torch(p: dict, d: dict) -> Any:
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
    return torch.mean((x - d["target"]) ** 2)


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


def references(problem: Problem, k: int) -> dict[str, dict[str, np.ndarray]]:
    """Float64 references: ``grad`` (JAX, float64) and ``hvp`` for the first ``k`` vectors,
    stacked on a leading axis (analytic when the problem has it, else JAX in float64)."""
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
        return {
            "grad": {n: np.asarray(grad[n]) for n in problem.names},
            "hvp": {n: np.asarray(hvp[n]) for n in problem.names},
        }


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
    return {
        "loss_rel_diff": abs(float(jl) - float(tl)) / max(abs(float(jl)), 1e-30),
        "grad_rel_diff": rel_err(torch_grad, jax_grad),
    }


def _as_tuple(params: Any) -> tuple:
    return params if isinstance(params, tuple) else (params,)
