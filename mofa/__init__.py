"""mofa: model-based face autoencoders in pure JAX."""

__version__ = "0.1.0"
