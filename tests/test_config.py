"""ModelConfig's matmul_dtype="auto": bfloat16 operands exactly where the hardware has them."""

import jax.numpy as jnp
import pytest

from pass_jax import matmul
from pass_jax.config import ModelConfig
from pass_jax.matmul import native_bf16, resolve_matmul_dtype

CPUINFO = "processor\t: {i}\nmodel name\t: Some CPU\nflags\t\t: fpu sse2 avx2 avx512f {extra}\n\n"


@pytest.mark.parametrize(
    ("extra", "native"),
    [("avx512_bf16", True), ("amx_bf16 amx_tile", True), ("avx512_vnni", False), ("", False)],
)
def test_cpu_native_bf16_follows_the_cpuinfo_flags(extra: str, native: bool) -> None:
    cpuinfo = "".join(CPUINFO.format(i=i, extra=extra) for i in range(2))
    assert native_bf16("cpu", cpuinfo=cpuinfo) is native


def test_accelerator_native_bf16() -> None:
    assert native_bf16("tpu")
    assert native_bf16("gpu", compute_capability="8.0")  # Ampere
    assert native_bf16("gpu", compute_capability="9.0")  # Hopper
    assert not native_bf16("gpu", compute_capability="7.5")  # Turing
    assert not native_bf16("gpu", compute_capability="gfx90a")  # not an NVIDIA capability
    assert not native_bf16("gpu")
    assert not native_bf16("cpu", cpuinfo="flags: avx512_bf16_but_not_quite\n")
    assert not native_bf16("metal")


def test_auto_resolves_to_bfloat16_only_for_a_float32_model_on_native_hardware() -> None:
    assert resolve_matmul_dtype("auto", "float32", native=True) == "bfloat16"
    assert resolve_matmul_dtype("auto", "float32", native=False) is None
    assert resolve_matmul_dtype("auto", "bfloat16", native=True) is None
    assert resolve_matmul_dtype("auto", "float16", native=True) is None
    assert resolve_matmul_dtype("bfloat16", "float32", native=False) == "bfloat16"
    assert resolve_matmul_dtype(None, "float32", native=True) is None


@pytest.mark.parametrize("native", [True, False])
def test_auto_config_keeps_auto_and_resolves_per_host(monkeypatch, native: bool) -> None:
    monkeypatch.setattr(matmul, "host_native_bf16", lambda: native)
    config = ModelConfig(matmul_dtype="auto")
    assert config.operand_dtype == (jnp.bfloat16 if native else jnp.float32)
    assert ModelConfig.from_dict(config.to_dict()).matmul_dtype == "auto"
    assert ModelConfig(dtype="bfloat16", matmul_dtype="auto").operand_dtype == jnp.bfloat16


def test_bad_matmul_dtype_is_an_error() -> None:
    with pytest.raises(ValueError, match="matmul_dtype='int8'; choose None, 'auto'"):
        ModelConfig(matmul_dtype="int8")
    with pytest.raises(ValueError, match="must be narrower"):
        ModelConfig(dtype="bfloat16", matmul_dtype="float32")
