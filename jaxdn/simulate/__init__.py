"""Pure-JAX simulators of atomic-resolution images and microscopy noise.

Submodules: :mod:`~jaxdn.simulate.atoms` (Noise2Atom clean domain, HAADF lattices, drift movies),
:mod:`~jaxdn.simulate.graphene` (disordered graphene charge-density maps),
:mod:`~jaxdn.simulate.stm` (STM topographies) and :mod:`~jaxdn.simulate.noise` (noise models).
All functions take an explicit PRNG key first, static shape keywords, return float32 and can be
``jax.jit``-ed (with the shape keywords static) and ``jax.vmap``-ed over keys.
"""

from . import atoms, graphene, noise, stm

__all__ = ["atoms", "graphene", "noise", "stm"]
