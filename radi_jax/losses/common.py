"""Masked array helpers shared by the RADI losses.

Every loss takes a boolean mask of valid answers instead of sentinel scores. The helpers here
keep masked entries out of reductions *and* out of gradients: a masked score is replaced before
it enters `exp`/`log` (the "safe where" pattern), so a padded answer can never turn a gradient
into NaN.
"""

from collections.abc import Sequence

import jax
import jax.numpy as jnp


class LossConfigError(ValueError):
  """A loss option has a value the library does not know (one line naming the key)."""


def check_choice(key: str, value: str, choices: Sequence[str]) -> None:
  """Raises `LossConfigError` unless `value` is one of `choices`."""
  if value not in choices:
    raise LossConfigError(
        f"{key}={value!r} is not supported; expected one of {', '.join(map(repr, choices))}")


def lowest(dtype) -> jax.Array:
  """The most negative finite value of a float dtype (a score no valid answer beats)."""
  return jnp.asarray(jnp.finfo(dtype).min, dtype)


def masked_log_softmax(scores: jax.Array, mask: jax.Array, axis: int = -1) -> jax.Array:
  """`log softmax` over the valid entries of `axis`; masked entries come out as 0.

  Args:
    scores: `[..., answers]` float scores.
    mask: boolean, broadcastable to `scores`.
    axis: the axis to normalise over.

  Returns:
    Same shape as `scores`: log-probabilities at valid entries, 0 elsewhere. A row with no
    valid entry is all 0.
  """
  mask = jnp.broadcast_to(mask, scores.shape)
  safe = jnp.where(mask, scores, 0.0)
  row_max = jax.lax.stop_gradient(jnp.max(jnp.where(mask, safe, lowest(safe.dtype)), axis, keepdims=True))
  row_max = jnp.where(jnp.any(mask, axis, keepdims=True), row_max, 0.0)
  shifted = safe - row_max
  exp = jnp.where(mask, jnp.exp(jnp.where(mask, shifted, 0.0)), 0.0)
  total = jnp.sum(exp, axis, keepdims=True)
  log_total = jnp.log(jnp.where(total > 0, total, 1.0))
  return jnp.where(mask, shifted - log_total, 0.0)


def masked_softmax(scores: jax.Array, mask: jax.Array, axis: int = -1) -> jax.Array:
  """`softmax` over the valid entries of `axis`; masked entries come out as 0."""
  mask = jnp.broadcast_to(mask, scores.shape)
  return jnp.where(mask, jnp.exp(masked_log_softmax(scores, mask, axis)), 0.0)


def safe_divide(numerator: jax.Array, denominator: jax.Array) -> jax.Array:
  """`numerator / denominator`, with 0 where the denominator is 0 (and a finite gradient)."""
  nonzero = denominator != 0
  return jnp.where(nonzero, numerator / jnp.where(nonzero, denominator, 1.0), 0.0)


def example_keys(rng: jax.Array, batch: int) -> jax.Array:
  """One random key per example.

  Args:
    rng: a single key (typed `jax.random.key` or raw `PRNGKey`), split into `batch` keys, or
      `batch` keys already (e.g. derived from example indices, which makes the draws independent
      of how examples are batched or sharded).
    batch: the batch size.

  Returns:
    `[batch]` keys (raw keys: `[batch, 2]`).
  """
  typed = jnp.issubdtype(rng.dtype, jax.dtypes.prng_key)
  if rng.ndim == (0 if typed else 1):
    return jax.random.split(rng, batch)
  if rng.shape[0] != batch:
    raise LossConfigError(f"rng holds {rng.shape[0]} keys; expected one key or {batch} (one per example)")
  return rng
