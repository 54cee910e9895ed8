"""ofa-jax: build, measure, predict and search Once-For-All sub-networks in JAX."""

from ofa_jax.space import Arch  # noqa: F401

__version__ = '0.1.0'
