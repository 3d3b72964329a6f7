"""Logical-axis rules, meshes, and sharded decoding (on 8 fake CPU devices, in a subprocess)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest
from conftest import chain_model, tiny_model
from flax import nnx
from jax.sharding import AbstractMesh, AxisType
from jax.sharding import PartitionSpec as P
from multidevice import run_on_devices

from pass_jax import sharding
from pass_jax.decode.generation import generate
from pass_jax.kv_cache import CACHE_AXES

LAYER_SPECS = {
    ("attn_norm", "scale"): P("fsdp"),
    ("attn", "wq"): P("fsdp", "tensor", None),
    ("attn", "wk"): P("fsdp", "tensor", None),
    ("attn", "wv"): P("fsdp", "tensor", None),
    ("attn", "wo"): P("tensor", None, "fsdp"),
    ("mlp_norm", "scale"): P("fsdp"),
    ("mlp", "w_gate"): P("fsdp", "tensor"),
    ("mlp", "w_up"): P("fsdp", "tensor"),
    ("mlp", "w_down"): P("tensor", "fsdp"),
}
TOP_SPECS = {
    ("embed",): P("tensor", "fsdp"),
    ("final_norm", "scale"): P("fsdp"),
    ("lm_head",): P("fsdp", "tensor"),
    ("lookahead",): P(None, None),
}


def abstract_mesh(data: int, fsdp: int, tensor: int) -> AbstractMesh:
    return AbstractMesh((data, fsdp, tensor), sharding.MESH_AXES, (AxisType.Auto,) * 3)


@pytest.mark.parametrize("scan_layers", [False, True])
def test_rules_give_every_param_its_spec(scan_layers):
    model = nnx.eval_shape(lambda: tiny_model(scan_layers=scan_layers))
    specs = {}
    for path, leaf in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        specs[path] = sharding.logical_to_spec(leaf.get_metadata()["logical_axes"])
    expected = dict(TOP_SPECS)
    for name, spec in LAYER_SPECS.items():
        if scan_layers:
            expected[("layers", *name)] = P(None, *spec)
        else:
            expected.update({("layers", i, *name): spec for i in range(2)})
    assert specs == expected


def test_param_shardings_cover_the_whole_state():
    model = tiny_model()
    mesh = sharding.make_mesh((1, 1, -1))  # every device of this process on `tensor`
    shardings = dict(nnx.to_flat_state(sharding.param_shardings(model, mesh)))
    assert shardings.keys() == dict(nnx.to_flat_state(nnx.state(model))).keys()
    assert shardings[("inv_freq",)].spec == P()  # not a param: replicated
    assert shardings[("lookahead",)].get_value().spec == P(None, None)


def test_activation_and_cache_specs():
    mesh = abstract_mesh(2, 2, 4)
    assert sharding.logical_to_spec(sharding.HIDDEN, (8, 5, 32), mesh) == P(
        ("data", "fsdp"), None, None
    )
    assert sharding.logical_to_spec(sharding.LOGITS, (8, 5, 64), mesh) == P(
        ("data", "fsdp"), None, "tensor"
    )
    assert sharding.logical_to_spec(CACHE_AXES, (2, 4, 16, 8, 8), mesh) == P(
        None, ("data", "fsdp"), None, "tensor", None
    )


def test_mesh_axes_that_do_not_divide_are_dropped():
    mesh = abstract_mesh(2, 2, 4)
    assert sharding.logical_to_spec(("batch", None), (2, 5), mesh) == P("data", None)
    assert sharding.logical_to_spec(("batch", None), (3, 5), mesh) == P(None, None)
    assert sharding.logical_to_spec(("embed", "kv_heads", "head_dim"), (32, 2, 8), mesh) == P(
        "fsdp", None, None
    )
    no_fsdp = AbstractMesh((2, 4), ("data", "tensor"), (AxisType.Auto,) * 2)
    assert sharding.logical_to_spec(("vocab", "embed"), (64, 32), no_fsdp) == P("tensor", None)


def test_unknown_logical_axis_is_a_clear_error():
    with pytest.raises(ValueError, match=r"unknown logical axis 'heads'.*'kv_heads'"):
        sharding.logical_to_spec(("embed", "heads"))


def test_a_mesh_axis_used_twice_is_an_error():
    with pytest.raises(ValueError, match="mesh axis 'fsdp' used twice"):
        sharding.logical_to_spec(("batch", "embed"))


def test_mesh_shape_with_minus_one():
    assert sharding.resolve_mesh_shape((1, -1, 2), 8) == (1, 4, 2)
    assert sharding.resolve_mesh_shape((2, 1, 4), 8) == (2, 1, 4)
    with pytest.raises(ValueError, match="at most one -1"):
        sharding.resolve_mesh_shape((-1, -1, 1), 8)
    with pytest.raises(ValueError, match="not divisible by 3"):
        sharding.resolve_mesh_shape((3, -1, 1), 8)
    with pytest.raises(ValueError, match="needs 4 devices, have 8"):
        sharding.resolve_mesh_shape((2, 1, 2), 8)
    mesh = sharding.make_mesh((1, -1, 1))
    assert dict(mesh.shape) == {"data": 1, "fsdp": jax.device_count(), "tensor": 1}
    assert set(mesh.axis_types) == {AxisType.Auto}


def test_constrain_is_a_no_op_without_a_mesh():
    x = jnp.ones((2, 3, 4))
    assert sharding.constrain(x, sharding.HIDDEN) is x
    assert sharding.mesh_of({"x": x}) is None


def test_sharded_generate_matches_unsharded():
    run_on_devices("test_sharding", "check_sharded_generate")


def check_sharded_generate() -> None:
    """On 8 devices: greedy AR, PaSS and tree lookahead on three meshes give the unsharded
    tokens and stats."""
    assert jax.device_count() == 8
    prompts = [[5, 1, 2], [7, 8, 9, 10, 11], [3], [4, 4, 4, 4], [9, 1], [2, 3, 5], [6], [1, 2]]

    options = {"pass_tree": dict(num_lookahead=3, candidates=2)}  # a tree: paths move in the cache

    def run(make_model, method, mesh_shape=None, rows=prompts):
        model = make_model()
        if mesh_shape is not None:
            sharding.shard_model(model, sharding.make_mesh(mesh_shape))
            assert model.embed[...].sharding.spec == P("tensor", "fsdp")
        return generate(model, rows, max_new_tokens=10, method=method, **options.get(method, {}))

    base, c = chain_model(0, good_drafts=3, n_kv_heads=4)
    chain = lambda: nnx.clone(base)
    chain_prompts = [[*p, c] if i % 2 else p for i, p in enumerate(prompts)]  # half on the chain
    references = {}
    # Every mesh shape with one method or both: data only, data x tensor, fsdp x tensor.
    meshes = {
        "ar": ((8, 1, 1), (1, 2, 4)),
        "pass": ((2, 1, 4), (1, 2, 4)),
        "pass_tree": ((2, 1, 4),),
    }
    for method in ("ar", "pass", "pass_tree"):
        reference = references[method] = run(chain, method, rows=chain_prompts)
        for mesh_shape in meshes[method]:
            result = run(chain, method, mesh_shape, rows=chain_prompts)
            assert result.stats.compile_s > 0  # its own executables: keyed on the shardings
            assert result.tokens == reference.tokens, (method, mesh_shape)
            for key in ("tau", "forward_passes", "accepted_by_position"):
                assert getattr(result.stats, key) == getattr(reference.stats, key), (
                    method,
                    mesh_shape,
                    key,
                )
    assert references["pass"].stats.tau > 1.3  # PaSS drafts were accepted
    assert references["pass_tree"].tokens == references["ar"].tokens
    # 3 rows do not divide over data=2: replicated. Rows are independent of the batch.
    odd_batch = run(chain, "ar", (2, 1, 4), rows=chain_prompts[:3])
    assert odd_batch.tokens == references["ar"].tokens[:3]
