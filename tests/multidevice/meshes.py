"""The meshes of the 8-device tests (tests/multidevice/): 1-D 'data', 2-D 'data' x 'model'."""

import jax


def mesh_1d(axis_type, name="data"):
    return jax.make_mesh((8,), (name,), axis_types=(axis_type,))


def mesh_2d(axis_type):
    return jax.make_mesh((4, 2), ("data", "model"), axis_types=(axis_type, axis_type))
