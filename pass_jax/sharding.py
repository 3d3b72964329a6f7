"""Device meshes and the one table of logical-axis rules that places params and activations.

Every parameter names its dimensions (`logical_axes` metadata, e.g. `("embed", "q_heads",
"head_dim")`); `RULES` maps each name onto mesh axes. Activations are named at a few points in
the model with `constrain` (hidden states, logits, the KV cache).

Mesh axes (`MESH_AXES`): `data` (pure data parallelism: batch split, params replicated), `fsdp`
(batch split *and* params split along `embed`, gathered per layer), `tensor` (Megatron-style
tensor parallelism: heads, MLP hidden units and the vocabulary split).

Axis types are `Auto`: the compiler (GSPMD) propagates shardings from the inputs and the
`with_sharding_constraint` hints. `Explicit` axes would make shardings part of every array's type
and require an explicit output sharding on each ambiguous op (the contractions over sharded
`embed` / heads / mlp), i.e. model code written for sharding; with `Auto` the model stays plain
JAX and runs unchanged on one device.

A mesh axis that does not divide the dimension it would split is dropped for that array (that
dimension is then replicated on it): e.g. 2 KV heads on a 4-way `tensor` axis stay whole, a batch
of 1 is replicated over `data`. Every array shape is therefore valid on every mesh.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import jax
import numpy as np
from flax import nnx
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from pass_jax.experiment import MESH_AXES

MeshAxes = str | tuple[str, ...] | None
M = TypeVar("M")

RULES: dict[str, MeshAxes] = {
    # Parameters.
    "vocab": "tensor",
    "embed": "fsdp",
    "mlp": "tensor",
    "q_heads": "tensor",
    "kv_heads": "tensor",
    "head_dim": None,
    "layers": None,
    "adapter_rank": None,  # an adapter's rank (A [.., r], B [r, ..]); its other axes: its weight's
    # Activations (the KV cache also uses `layers`, `kv_heads` and `head_dim`).
    "batch": ("data", "fsdp"),
    "length": None,
    "act_embed": None,
    "act_vocab": "tensor",
}

HIDDEN = ("batch", "length", "act_embed")  # [B, T, d]
LOGITS = ("batch", "length", "act_vocab")  # [B, T, V]


def resolve_mesh_shape(shape: Sequence[int], num_devices: int) -> tuple[int, ...]:
    """The mesh shape with its (at most one) -1 filled in so that it covers `num_devices`."""
    shape = tuple(int(n) for n in shape)
    free = shape.count(-1)
    if free > 1 or any(n < 1 and n != -1 for n in shape):
        raise ValueError(f"mesh shape {shape}: sizes must be positive, with at most one -1")
    known = math.prod(n for n in shape if n != -1)
    if free:
        if num_devices % known:
            raise ValueError(
                f"mesh shape {shape}: {num_devices} devices are not divisible by {known}"
            )
        shape = tuple(num_devices // known if n == -1 else n for n in shape)
    if math.prod(shape) != num_devices:
        raise ValueError(f"mesh shape {shape} needs {math.prod(shape)} devices, have {num_devices}")
    return shape


def make_mesh(
    shape: Sequence[int] = (1, -1, 1),
    axes: Sequence[str] = MESH_AXES,
    devices: Sequence[jax.Device] | None = None,
) -> Mesh:
    """A mesh of `devices` (default: all) with `Auto` axes; one size may be -1 (the rest)."""
    if len(shape) != len(axes):
        raise ValueError(f"mesh shape {tuple(shape)} does not match its axes {tuple(axes)}")
    devices = jax.devices() if devices is None else list(devices)
    shape = resolve_mesh_shape(shape, len(devices))
    return jax.make_mesh(
        shape, tuple(axes), axis_types=(AxisType.Auto,) * len(axes), devices=devices
    )


def _mesh_axes(name: str | None, rules: dict[str, MeshAxes]) -> tuple[str, ...]:
    if name is None:
        return ()
    if name not in rules:
        raise ValueError(f"unknown logical axis {name!r}; the rules know {sorted(rules)}")
    target = rules[name]
    return () if target is None else (target,) if isinstance(target, str) else tuple(target)


def logical_to_spec(
    axes: Sequence[str | None],
    shape: Sequence[int] | None = None,
    mesh: Mesh | jax.sharding.AbstractMesh | None = None,
    rules: dict[str, MeshAxes] = RULES,
) -> PartitionSpec:
    """The PartitionSpec of an array whose dimensions carry the logical names `axes`.

    With `shape` and `mesh`, mesh axes the mesh lacks, or whose size does not divide the
    dimension, are dropped (that part of the dimension is replicated).
    """
    if shape is not None and len(shape) != len(axes):
        raise ValueError(f"logical axes {tuple(axes)} do not match shape {tuple(shape)}")
    sizes = dict(mesh.shape) if mesh is not None and shape is not None else None
    used: set[str] = set()
    spec = []
    for dim, name in enumerate(axes):
        kept: list[str] = []
        for axis in _mesh_axes(name, rules):
            if axis in used:
                raise ValueError(f"mesh axis {axis!r} used twice in logical axes {tuple(axes)}")
            used.add(axis)
            if sizes is not None:
                split = math.prod(sizes[a] for a in kept) * sizes.get(axis, 0)
                if split == 0 or shape[dim] % split:
                    continue
            kept.append(axis)
        spec.append(None if not kept else kept[0] if len(kept) == 1 else tuple(kept))
    return PartitionSpec(*spec)


def _leaf_sharding(leaf: Any, mesh: Mesh) -> NamedSharding:
    axes = leaf.get_metadata().get("logical_axes") if isinstance(leaf, nnx.Variable) else None
    spec = PartitionSpec() if axes is None else logical_to_spec(axes, leaf.shape, mesh)
    return NamedSharding(mesh, spec)


def param_shardings(tree: nnx.Module | nnx.State, mesh: Mesh) -> nnx.State:
    """`NamedSharding`s for a model's state (or a state, abstract or not), from the params'
    `logical_axes`; anything without them (e.g. the rotary table) is replicated.

    The result has the structure of `nnx.state(tree)` (a sharding in place of each value), so it
    goes straight into `jax.device_put(state, ...)`, and `nnx.to_pure_dict` of it into
    `checkpoint.load_params(..., shardings=...)`.
    """
    state = nnx.state(tree) if isinstance(tree, nnx.Module) else tree

    def sharding(leaf: Any) -> Any:
        if isinstance(leaf, nnx.Variable):
            return leaf.replace(_leaf_sharding(leaf, mesh))
        return _leaf_sharding(leaf, mesh)

    return jax.tree.map(sharding, state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def shard_model(model: nnx.Module | tuple, mesh: Mesh) -> None:
    """Moves the state of a model (or of a tuple such as model and optimizer) onto `mesh`, in
    place, as `param_shardings` says.

    This copies weights that are already in memory; a large model is better restored straight
    into its shardings (`checkpoint.load_params(..., shardings=...)`).
    """
    state = nnx.state(model)
    nnx.update(model, jax.device_put(state, param_shardings(state, mesh)))


def create_sharded(factory: Callable[[], M], mesh: Mesh) -> M:
    """`factory()` (an NNX module or a tuple of them) with its state in `param_shardings` on
    `mesh`. On several devices every array is created directly in its sharding (one jitted
    initialisation: no device ever holds the whole model; the values equal the eager ones up to
    float rounding); on one device it is built eagerly, exactly as `factory()`."""
    if mesh.size == 1:
        module = factory()
        shard_model(module, mesh)
        return module
    graphdef, abstract = nnx.split(nnx.eval_shape(factory))
    init = jax.jit(lambda: nnx.state(factory()), out_shardings=param_shardings(abstract, mesh))
    return nnx.merge(graphdef, init())


def batch_sharding(mesh: Mesh, shape: Sequence[int]) -> NamedSharding:
    """The sharding of an array whose leading dimension is the batch (the rest replicated)."""
    axes = ("batch", *([None] * (len(shape) - 1)))
    return NamedSharding(mesh, logical_to_spec(axes, shape, mesh))


def shard_batch(x: Any, mesh: Mesh | None) -> jax.Array:
    """`x` [B, ...] on `mesh` split over the batch axes; on the default device if no mesh.

    On a mesh that spans several processes, every process passes the same `x`. PRNG keys go
    as their raw data (`device_put` cannot send typed keys to other processes' devices).
    """
    if mesh is None:
        return jax.numpy.asarray(x)
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
        data = shard_batch(jax.random.key_data(x), mesh)
        return jax.random.wrap_key_data(data, impl=jax.random.key_impl(x))
    return jax.device_put(x, batch_sharding(mesh, np.shape(x)))


def global_batch(local: np.ndarray, mesh: Mesh) -> jax.Array:
    """One array [B_local * processes, ...] split over the batch axes of `mesh`, assembled from
    each process's own rows `local` [B_local, ...] (on one process: `local` itself, sharded)."""
    shape = (local.shape[0] * jax.process_count(), *local.shape[1:])
    target = batch_sharding(mesh, shape)
    if jax.process_count() > 1 and target.spec[0] is None:
        raise ValueError(
            f"a batch of {shape[0]} rows does not split over the mesh's batch axes "
            f"{dict(mesh.shape)}: with several processes each must hold its own rows"
        )
    return jax.make_array_from_process_local_data(target, local, shape)


def mesh_of(tree: Any) -> Mesh | None:
    """The mesh the `NamedSharding`-placed leaves of `tree` (arrays or `ShapeDtypeStruct`s) live
    on; None if there are none. Leaves on two different meshes are an error."""
    meshes = {
        leaf.sharding.mesh
        for leaf in jax.tree.leaves(tree)
        if isinstance(getattr(leaf, "sharding", None), NamedSharding)
    }
    if len(meshes) > 1:
        raise ValueError(
            f"arrays live on {len(meshes)} different meshes: {sorted(map(str, meshes))}"
        )
    return meshes.pop() if meshes else None


def constrain(x: jax.Array, axes: Sequence[str | None]) -> jax.Array:
    """Hints that `x` is sharded as its logical `axes` say; a no-op when no mesh is set
    (`jax.set_mesh`), so single-device code is unchanged."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return x
    return jax.lax.with_sharding_constraint(x, logical_to_spec(axes, x.shape, mesh))
