"""mmd_jax: diffusion teachers and their few-step students in JAX/Flax."""

__version__ = '0.1.0'
