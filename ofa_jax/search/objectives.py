"""Search objectives with explicit names, so a proxy is never shown as accuracy.

An :class:`Objective` pairs a pure ``archs -> float32[n]`` score (higher is
better) with the name reported next to every number it produces:
``'predicted_top1'`` for an accuracy predictor, ``'proxy:macs_millions'`` for
the analytic MACs proxy used when no accuracy source is given.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp

from ofa_jax import counts, space

PROXY_PREFIX = 'proxy:'


@dataclasses.dataclass(frozen=True)
class Objective:
    """A named objective: ``objective(archs) -> float32[n]``, higher is better.

    Attributes:
      fn: the pure scoring function.
      name: what the number is; names of proxies start with ``'proxy:'``.
    """

    fn: Callable[[space.Arch], jax.Array]
    name: str

    def __call__(self, archs: space.Arch) -> jax.Array:
        return jnp.asarray(self.fn(archs), jnp.float32)

    @property
    def is_proxy(self) -> bool:
        """True when the score is not an accuracy (e.g. MACs)."""
        return self.name.startswith(PROXY_PREFIX)


def accuracy_objective(predictor: Callable[[space.Arch], jax.Array],
                       name: str = 'predicted_top1') -> Objective:
    """Predicted accuracy (a fraction) from an accuracy predictor."""
    return Objective(fn=predictor, name=name)


def macs_proxy(width: float = 1.2) -> Objective:
    """Proxy objective: analytic MACs in millions (bigger networks tend to be more accurate).

    Only a stand-in when no accuracy predictor is available; it is labelled
    ``'proxy:macs_millions'`` everywhere it is reported.
    """
    return Objective(
        fn=lambda archs: jnp.asarray(counts.count_macs(archs, width), jnp.float32) / 1e6,
        name=PROXY_PREFIX + 'macs_millions')
