"""Contractions on rounded operands: the forward and both gradients multiply bfloat16."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import tiny_model
from flax import nnx

from pass_jax.config import ModelConfig
from pass_jax.matmul import contract

BF16 = jnp.bfloat16


def _rounded(x: jax.Array) -> jax.Array:
    return x.astype(BF16).astype(jnp.float32)


def test_forward_and_gradients_are_float32_products_of_rounded_operands():
    x = jax.random.normal(jax.random.key(0), (2, 5, 8))  # [B, T, d]
    w = jax.random.normal(jax.random.key(1), (8, 3, 4))  # [d, H, D]
    g = jax.random.normal(jax.random.key(2), (2, 5, 3, 4))  # cotangent [B, T, H, D]
    spec = "btd,dhk->bthk"
    out, vjp = jax.vjp(lambda x, w: contract(spec, x, w, BF16), x, w)
    grad_x, grad_w = vjp(g)
    # The same products of bfloat16-rounded values, exact in float32 at these sizes.
    hi = jax.lax.Precision.HIGHEST
    expected_out = jnp.einsum(spec, _rounded(x), _rounded(w), precision=hi)
    expected_x = jnp.einsum("bthk,dhk->btd", _rounded(g), _rounded(w), precision=hi)
    expected_w = jnp.einsum("btd,bthk->dhk", _rounded(x), _rounded(g), precision=hi)
    assert out.dtype == grad_x.dtype == grad_w.dtype == jnp.float32
    np.testing.assert_allclose(out, expected_out, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(grad_x, expected_x, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(grad_w, expected_w, rtol=1e-6, atol=1e-6)
    # ... and they are not the float32 products: the rounding is real.
    assert not np.allclose(out, jnp.einsum(spec, x, w, precision=hi), rtol=1e-6, atol=1e-6)


def test_the_same_dtype_is_a_plain_einsum_and_bad_input_is_an_error():
    a, b = jnp.ones((2, 3)), jnp.ones((3, 4))
    np.testing.assert_array_equal(contract("ij,jk->ik", a, b, jnp.float32), a @ b)
    with pytest.raises(ValueError, match="explicit two-operand spec"):
        contract("...j,jk->...k", a, b, BF16)
    with pytest.raises(ValueError, match="every index of 'ij'"):
        contract("ij,jk->k", a, b, BF16)
    with pytest.raises(ValueError, match="to a narrower one"):
        contract("ij,jk->ik", a, b.astype(BF16), BF16)
    with pytest.raises(ValueError, match="matmul_dtype='float32' must be narrower"):
        ModelConfig(dtype="bfloat16", matmul_dtype="float32")
    with pytest.raises(ValueError, match="matmul_dtype='int8'"):
        ModelConfig(matmul_dtype="int8")


def _dot_operand_types(program: str) -> list[str]:
    """The operand element types of every dot in a lowered program, e.g. ['bf16,bf16', ...]."""
    pattern = r"stablehlo\.dot_general.*?: \(tensor<([^>]*)>, tensor<([^>]*)>\)"
    return [",".join(t.split("x")[-1] for t in types) for types in re.findall(pattern, program)]


def test_a_bfloat16_matmul_model_trains_every_matmul_in_bfloat16():
    f32 = tiny_model(3)
    low = tiny_model(3, matmul_dtype="bfloat16")
    tokens = jnp.asarray([[1, 2, 3, 4, 5, 6, 7, 8]])

    def loss(model):
        logits = model(tokens[:, :-1])
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), tokens[:, 1:, None], -1))

    step = nnx.jit(nnx.value_and_grad(loss))
    (loss_f32, grads_f32), (loss_low, grads_low) = step(f32), step(low)
    np.testing.assert_allclose(loss_low, loss_f32, rtol=1e-3)
    for a, b in zip(jax.tree.leaves(grads_f32), jax.tree.leaves(grads_low), strict=True):
        assert b.dtype == jnp.float32
        np.testing.assert_allclose(b, a, atol=0.02 * float(jnp.abs(a).max()) + 1e-8)

    graphdef, state = nnx.split(low)
    program = (
        jax.jit(lambda state: nnx.grad(loss)(nnx.merge(graphdef, state))).lower(state).as_text()
    )
    types = _dot_operand_types(program)
    # 7 projections a layer x 2 layers + 2 attention matmuls x 2 + the head; each 3 times.
    assert len(types) == 3 * (7 * 2 + 2 * 2 + 1)
    assert set(types) == {"bf16,bf16"}
