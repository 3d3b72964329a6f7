"""Two-operand contractions whose operands may be rounded to a narrower dtype.

`ModelConfig.matmul_dtype="bfloat16"` on a float32 model rounds the operands of every matrix
multiply to bfloat16 and accumulates in float32, forward and backward, as a TPU's default
matmul precision does. Where the hardware multiplies bfloat16 faster than float32
(AVX512-BF16 CPUs: about 1.5-2x per matmul; GPUs, TPUs) the train step speeds up, while the
weights, norms, softmaxes, residual stream and optimizer stay float32.

XLA's autodiff of `einsum(x.astype(bf16), w.astype(bf16))` would multiply the float32
cotangent by the upcast operand, i.e. run the backward matmuls (two thirds of a train step's
FLOPs) in float32; `contract` has its own VJP that rounds the cotangent as well.

`matmul_dtype="auto"` picks bfloat16 operands for a float32 model where the hardware multiplies
bfloat16 natively (`native_bf16`), else the compute dtype (`resolve_matmul_dtype`).
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

import jax
import jax.numpy as jnp

BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")  # /proc/cpuinfo flags of native bf16 multiplies


def native_bf16(platform: str, *, compute_capability: str | None = None, cpuinfo: str = "") -> bool:
    """Whether a device multiplies bfloat16 natively: any TPU; an NVIDIA GPU of compute
    capability >= 8.0 (``"8.0"``: Ampere); a CPU whose ``/proc/cpuinfo`` text (`cpuinfo`) lists
    one of `BF16_CPU_FLAGS`. Anything else (other GPUs, unknown platforms): False."""
    if platform == "tpu":
        return True
    if platform in ("gpu", "cuda"):
        major = re.match(r"(\d+)\.", compute_capability or "")
        return major is not None and int(major.group(1)) >= 8
    if platform == "cpu":
        flags = {
            flag
            for line in cpuinfo.splitlines()
            if line.partition(":")[0].strip() == "flags"
            for flag in line.partition(":")[2].split()
        }
        return any(flag in flags for flag in BF16_CPU_FLAGS)
    return False


@functools.cache
def host_native_bf16() -> bool:
    """`native_bf16` of this process's default device, checked once (so fixed per process)."""
    device = jax.devices()[0]
    cpuinfo_path = Path("/proc/cpuinfo")
    cpuinfo = (
        cpuinfo_path.read_text() if device.platform == "cpu" and cpuinfo_path.is_file() else ""
    )
    capability = getattr(device, "compute_capability", None)
    return native_bf16(device.platform, compute_capability=capability, cpuinfo=cpuinfo)


def resolve_matmul_dtype(
    matmul_dtype: str | None, dtype: str, *, native: bool | None = None
) -> str | None:
    """A `ModelConfig.matmul_dtype` with "auto" resolved: "bfloat16" on a float32 model whose
    device multiplies bfloat16 natively (`native`, default `host_native_bf16()`), else None (the
    compute dtype). Any other value is returned as is."""
    if matmul_dtype != "auto":
        return matmul_dtype
    if dtype != "float32":
        return None
    return "bfloat16" if (host_native_bf16() if native is None else native) else None


def _terms(spec: str) -> tuple[str, str, str]:
    """`"lhs,rhs->out"` split into its three index strings, checked to have a transpose."""
    inputs, arrow, out = spec.replace(" ", "").partition("->")
    lhs, comma, rhs = inputs.partition(",")
    if not arrow or not comma or "." in spec or "," in rhs:
        raise ValueError(f"contract takes an explicit two-operand spec 'ab,bc->ac', got {spec!r}")
    for term, others in ((lhs, rhs + out), (rhs, lhs + out)):
        if len(set(term)) != len(term) or any(i not in others for i in term):
            raise ValueError(
                f"contract spec {spec!r}: every index of {term!r} must appear once in it and "
                "again in the other operand or the output"
            )
    return lhs, rhs, out


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _rounded_einsum(spec: str, operand_dtype: jnp.dtype, a: jax.Array, b: jax.Array) -> jax.Array:
    return _rounded_einsum_fwd(spec, operand_dtype, a, b)[0]


def _rounded_einsum_fwd(spec, operand_dtype, a, b):
    a_low, b_low = a.astype(operand_dtype), b.astype(operand_dtype)
    out = jnp.einsum(spec, a_low, b_low, preferred_element_type=a.dtype)
    return out, (a_low, b_low)  # the rounded operands: half the residual memory


def _rounded_einsum_bwd(spec, operand_dtype, residuals, cotangent):
    a_low, b_low = residuals
    lhs, rhs, out = _terms(spec)
    g_low = cotangent.astype(operand_dtype)
    acc = cotangent.dtype  # the operands' own dtype
    grad_a = jnp.einsum(f"{out},{rhs}->{lhs}", g_low, b_low, preferred_element_type=acc)
    grad_b = jnp.einsum(f"{lhs},{out}->{rhs}", a_low, g_low, preferred_element_type=acc)
    return grad_a, grad_b


_rounded_einsum.defvjp(_rounded_einsum_fwd, _rounded_einsum_bwd)


def contract(
    spec: str,
    a: jax.Array,
    b: jax.Array,
    operand_dtype: jnp.dtype,
    out_dtype: jnp.dtype | None = None,
) -> jax.Array:
    """`einsum(spec, a, b)` with both operands rounded to `operand_dtype`.

    When `operand_dtype` is the operands' own dtype this is a plain einsum accumulating in
    `out_dtype` (default: theirs). Otherwise a and b share a dtype wider than `operand_dtype`;
    the products accumulate in it, and the gradients round their operands (the cotangent too)
    to `operand_dtype` and accumulate in it. `spec` is explicit (no `...`) and every index
    appears in two of its terms.
    """
    if a.dtype == b.dtype == operand_dtype:
        return jnp.einsum(spec, a, b, preferred_element_type=out_dtype)
    if a.dtype != b.dtype or jnp.dtype(operand_dtype).itemsize >= a.dtype.itemsize:
        raise ValueError(
            f"contract rounds operands of one dtype to a narrower one; got {a.dtype} and "
            f"{b.dtype} rounded to {jnp.dtype(operand_dtype)}"
        )
    _terms(spec)
    out = _rounded_einsum(spec, jnp.dtype(operand_dtype), a, b)
    return out if out_dtype is None else out.astype(out_dtype)
