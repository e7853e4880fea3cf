"""sb3dr_jax: sketch-based 3D shape retrieval in JAX/Flax."""

__version__ = "0.1.0"
