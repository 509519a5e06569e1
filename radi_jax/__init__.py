"""radi_jax: ranking distillation (RADI, CVPR 2024) for open-ended video QA in JAX/Flax."""

__version__ = "0.1.0"
