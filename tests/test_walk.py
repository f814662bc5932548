"""Guards split a function exactly as a fresh walk would, whatever changed since they were made."""

import collections
import functools
import gc
import weakref

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxhvp._eager import _walk

GLOBAL_WEIGHT = jnp.ones(3)


def uses_global_weight(x):
    return (GLOBAL_WEIGHT * x).sum()


def fresh_walk(func):
    walker = _walk._Walker()
    skeleton, _ = walker.walk(func, walker.source.argument, 0)
    skeleton = (skeleton, walker.walk_deferred())
    return skeleton, walker.leaves, walker.nodes, tuple(walker.plan)


def assert_split_is_a_fresh_walk(func):
    split = _walk.split(func)
    expected_skeleton, expected_leaves, expected_nodes, expected_plan = fresh_walk(func)
    assert split.skeleton.tree == expected_skeleton
    assert split.skeleton.plan == expected_plan
    assert all(a is b for a, b in zip(split.leaves, expected_leaves, strict=True))
    assert all(a is b for a, b in zip(split.nodes, expected_nodes, strict=True))


def guarded(func):
    """Whether a recorded guard accepts ``func`` (no walk needed)."""
    recorded = _walk._guarded.get(_walk._memo_key(func), ())
    return any(guard(func) is not None for guard in recorded)


class Holder:
    def __init__(self, w, scale):
        self.w = w
        self.scale = scale

    def loss(self, x):
        return self.scale * (self.w * x).sum()


class OtherHolder(Holder):
    pass


Pair = collections.namedtuple("Pair", "a b")


def make_closure(w, scale, config):
    def loss(x):
        return scale * (w * x).sum() + len(config)

    return loss


def rebind_cell(state):
    w = state

    def loss(x):
        return (w * x).sum()

    def set_w(value):
        nonlocal w
        w = value

    return loss, set_w


# Each case: (build, change) -> build() returns (func, context); change(func, context) mutates
# something the function reads. The guard must then reject, and a split must equal a walk.
def _cell_array_to_scalar(_):
    loss, set_w = rebind_cell(jnp.ones(3))
    return loss, lambda: set_w(2.0)


def _cell_scalar_value(_):
    loss, set_w = rebind_cell(2.0)
    return loss, lambda: set_w(3.0)


def _cell_scalar_type(_):
    loss, set_w = rebind_cell(2)
    return loss, lambda: set_w(2.0)


def _dict_new_key(_):
    config = {"a": 1}
    return make_closure(jnp.ones(3), 1.0, config), lambda: config.update(b=2)


def _dict_new_value(_):
    config = {"a": 1}
    return make_closure(jnp.ones(3), 1.0, config), lambda: config.update(a=jnp.ones(3))


def _list_append(_):
    config = [1, 2]
    return make_closure(jnp.ones(3), 1.0, config), lambda: config.append(3)


def _nested_none_to_array(_):
    config = {"a": [None, 1]}
    return make_closure(jnp.ones(3), 1.0, config), lambda: config["a"].__setitem__(0, jnp.ones(2))


def _namedtuple_in_list(_):
    config = [Pair(jnp.ones(2), 1)]
    return make_closure(jnp.ones(3), 1.0, config), lambda: config.__setitem__(0, Pair(1, 2))


def _large_dict_array_to_scalar(_):
    config = {f"w{i}": jnp.ones(2) for i in range(100)}  # guarded by its treedef
    return make_closure(jnp.ones(3), 1.0, config), lambda: config.update(w7=2.0)


def _attribute_value(_):
    holder = Holder(jnp.ones(3), 2.0)
    return holder.loss, lambda: setattr(holder, "scale", 3.0)


def _attribute_added(_):
    holder = Holder(jnp.ones(3), 2.0)
    return holder.loss, lambda: setattr(holder, "extra", 1)


def _class_changed(_):
    holder = Holder(jnp.ones(3), 2.0)
    return holder.loss, lambda: setattr(holder, "__class__", OtherHolder)


def _partial_keywords(_):
    func = functools.partial(lambda x, w, scale: scale * (w * x).sum(), w=jnp.ones(3), scale=1.0)
    return func, lambda: func.keywords.update(scale=2.0)


def _defaults(_):
    def loss(x, scale=1.0):
        return scale * x.sum()

    return loss, lambda: setattr(loss, "__defaults__", (2.0,))


def _kwdefaults(_):
    def loss(x, *, scale=1.0):
        return scale * x.sum()

    return loss, lambda: setattr(loss, "__kwdefaults__", {"scale": jnp.ones(())})


def _code_swapped(_):
    def loss(x):
        return x.sum()

    return loss, lambda: setattr(loss, "__code__", (lambda x: (x**2).sum()).__code__)


def _global_array(monkeypatch):
    return uses_global_weight, lambda: monkeypatch.setitem(globals(), "GLOBAL_WEIGHT", 2.0)


def _global_shadowing_a_module(monkeypatch):
    def loss(x):
        return jnp.sum(x)

    return loss, lambda: monkeypatch.setitem(globals(), "jnp", np)


def _global_appears(monkeypatch):
    def loss(x):
        return x.sum() * NOT_YET_DEFINED  # noqa: F821

    return loss, lambda: monkeypatch.setitem(globals(), "NOT_YET_DEFINED", 2.0)


def _cell_filled(_):
    def outer():
        def loss(x):
            return later * x.sum()

        yield loss
        later = 2.0
        yield later

    steps = outer()
    return next(steps), lambda: next(steps)


def _cycle(_):
    holder = Holder(jnp.ones(3), 2.0)
    holder.me = holder
    return holder.loss, lambda: setattr(holder, "me", None)


def _function_attribute(_):
    def loss(x):
        return loss.scale * x.sum()

    loss.scale = 2.0
    return loss, lambda: setattr(loss, "scale", 3.0)


def _zero_sign(_):
    return make_closure(jnp.ones(3), 0.0, {}), lambda: None


def _negative_zero(_):
    loss, set_w = rebind_cell(0.0)
    return loss, lambda: set_w(-0.0)


def _dict_order(_):
    config = {"a": 1, "b": 2}

    def reorder():
        config.pop("a")
        config["a"] = 1

    return make_closure(jnp.ones(3), 1.0, config), reorder


class Slotted:
    __slots__ = ("__dict__", "w")

    def __init__(self, w):
        self.w = w

    def loss(self, x):
        return (self.w * x).sum()


def _slot_rebound_to_scalar(_):
    obj = Slotted(jnp.ones(3))
    return obj.loss, lambda: setattr(obj, "w", 2.0)


class WithHelper:
    def loss(self, x):
        return self.helper(x)

    def helper(self, x):
        return x.sum()


def _method_replaced(monkeypatch):
    obj = WithHelper()
    return obj.loss, lambda: monkeypatch.setattr(WithHelper, "helper", lambda self, x: x.max())


class WithProperty:
    @property
    def weight(self):
        return GLOBAL_WEIGHT

    def loss(self, x):
        return (self.weight * x).sum()


def _global_behind_a_property(monkeypatch):
    obj = WithProperty()
    return obj.loss, lambda: monkeypatch.setitem(globals(), "GLOBAL_WEIGHT", 2.0)


def _sharing_changes(_):
    shared = {"w": jnp.ones(3)}
    config = [shared, shared]
    return make_closure(jnp.ones(3), 1.0, config), lambda: config.__setitem__(1, dict(shared))


@jax.tree_util.register_pytree_node_class
class Tagged:
    def __init__(self, w, tags):
        self.w, self.tags = w, tags

    def tree_flatten(self):
        return (self.w,), self.tags

    @classmethod
    def tree_unflatten(cls, tags, children):
        return cls(children[0], tags)


def _aux_mutated_in_place(_):
    tagged = Tagged(jnp.ones(3), ["a"])
    return make_closure(jnp.ones(3), 1.0, [tagged]), lambda: tagged.tags.append("b")


CHANGES = [
    _function_attribute,
    _negative_zero,
    _dict_order,
    _slot_rebound_to_scalar,
    _method_replaced,
    _global_behind_a_property,
    _sharing_changes,
    _aux_mutated_in_place,
    _cell_array_to_scalar,
    _cell_scalar_value,
    _cell_scalar_type,
    _dict_new_key,
    _dict_new_value,
    _list_append,
    _nested_none_to_array,
    _namedtuple_in_list,
    _large_dict_array_to_scalar,
    _attribute_value,
    _attribute_added,
    _class_changed,
    _partial_keywords,
    _defaults,
    _kwdefaults,
    _code_swapped,
    _global_array,
    _global_shadowing_a_module,
    _global_appears,
    _cell_filled,
    _cycle,
]


@pytest.fixture(autouse=True)
def _no_recorded_guards():
    _walk.forget()
    yield
    _walk.forget()


@pytest.mark.parametrize("build", CHANGES, ids=lambda b: b.__name__.strip("_"))
def test_guards_reject_every_change_and_the_split_follows_it(build, monkeypatch):
    func, change = build(monkeypatch)
    assert_split_is_a_fresh_walk(func)
    assert guarded(func)  # unchanged: the recorded guard splits it
    change()
    assert not guarded(func)
    assert_split_is_a_fresh_walk(func)
    assert guarded(func)


def test_new_arrays_pass_the_guard_and_are_the_new_leaves():
    loss, set_w = rebind_cell(jnp.ones(3))
    _walk.split(loss)
    new = jnp.zeros(3)
    set_w(new)
    assert guarded(loss)
    assert _walk.split(loss).leaves[0] is new
    assert_split_is_a_fresh_walk(loss)


def test_fresh_closures_of_one_code_share_a_guard():
    funcs = [make_closure(jnp.full(3, float(k)), 2.0, {"a": 1}) for k in range(3)]
    _walk.split(funcs[0])
    for func in funcs:
        assert guarded(func)
        assert_split_is_a_fresh_walk(func)
    assert not guarded(make_closure(jnp.ones(3), 3.0, {"a": 1}))  # a new scalar value


def test_each_code_remembers_a_few_variants():
    variants = [make_closure(jnp.ones(3), float(k), {}) for k in range(_walk._GUARDS_PER_KEY)]
    for func in variants:
        _walk.split(func)
    assert all(guarded(func) for func in variants)
    _walk.split(make_closure(jnp.ones(3), -1.0, {}))
    assert not guarded(variants[0])  # the oldest is dropped


def test_guards_keep_no_arrays_alive():
    loss, set_w = rebind_cell(np.ones(1000))
    ref = weakref.ref(loss.__closure__[0].cell_contents)
    _walk.split(loss)
    set_w(np.zeros(1000))
    gc.collect()
    assert ref() is None
    assert_split_is_a_fresh_walk(loss)


@pytest.mark.parametrize("value", [float("nan"), 0.0, -0.0, 1.5, 2**70, 1 + 2j, np.float32(-0.0)])
def test_scalars_are_guarded_bit_for_bit(value):
    loss, set_w = rebind_cell(value)
    _walk.split(loss)
    set_w(type(value)(value))  # the same value, a new object: still guarded
    assert guarded(loss)
    other = {float: -value if value == value else 1.0}.get(type(value), value + 1)
    set_w(other)
    assert not guarded(loss)
    assert_split_is_a_fresh_walk(loss)


def test_the_fast_path_for_many_arrays_keeps_their_order_and_places():
    params = {f"w{i}": jnp.full(2, float(i)) for i in reversed(range(10))}
    func = make_closure(jnp.ones(3), 1.0, params)
    split = _walk.split(func)
    assert [float(leaf[0]) for leaf in split.leaves if leaf.shape == (2,)] == list(
        map(float, reversed(range(10)))
    )
    params["w3"] = params["w4"]  # the same array twice: no longer one test for all
    assert not any(
        g(func) is not None and len({*map(id, g(func).leaves)}) == len(g(func).leaves)
        for g in _walk._guarded[_walk._memo_key(func)]
    )
    assert_split_is_a_fresh_walk(func)


def test_huge_plain_trees_are_guarded_by_their_structure():
    config = [{"k": i} for i in range(100)]
    func = make_closure(jnp.ones(3), 1.0, config)
    assert_split_is_a_fresh_walk(func)
    assert guarded(func)
    config[50]["k"] = -1
    assert not guarded(func)
    assert_split_is_a_fresh_walk(func)
