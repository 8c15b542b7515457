"""caspo-jax: confidence-aware step-wise preference optimisation (CASPO) and confidence-aware thought
(CaT) for JAX/Flax. See README.md for the map of the package."""

__version__ = "0.1.0"
