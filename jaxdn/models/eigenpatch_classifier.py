"""REUCID's eigenpatch utility classifier (Flax NNX, NHWC).

The paper's Fig. 3 network: a 25×25 eigenpatch and its normalised singular value go in, the
probability that the eigenpatch is useful for the reconstruction comes out.

    (B, 25, 25, 1) ─ Conv 14ch 5×5 pad 1 ─ ELU ─ maxpool 2 ─ Conv 15ch 3×3 pad 1 ─ ELU ─ maxpool 2
      ─ mean over H, W ─ concat eigenvalue (B, 1) ─ Dense 16 ─ ELU ─ Dense 16 ─ ELU ─ Dense 1

Spatial sizes: 25 → 23 (conv1) → 11 (pool) → 11 (conv2) → 5 (pool). 2 830 parameters.

`load_default()` restores the shipped weights (`jaxdn/weights/reucid_classifier.npz`, produced by
`jaxdn train reucid-classifier --config configs/reucid.py`) into an abstract model and returns a
jitted ``(patches, eigvals) -> probs`` callable, the form `jaxdn.reucid.pipeline.denoise` expects.
"""
from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Callable

import jax
import jax.numpy as jnp
from flax import nnx

__all__ = ["EigenpatchClassifier", "probabilities", "load", "load_default", "make_predictor",
           "WEIGHTS_NAME", "INPUT_SIZE"]

WEIGHTS_NAME = "reucid_classifier.npz"
INPUT_SIZE = 25


class EigenpatchClassifier(nnx.Module):
    """Binary classifier of eigenpatch utility (paper Fig. 3).

    Args:
      conv_features: channels of the two convolutions (paper: 14, 15).
      hidden: width of the two dense layers (paper: 16).
      rngs: `nnx.Rngs` for parameter initialisation.
    """

    def __init__(self, *, conv_features=(14, 15), hidden=16, rngs: nnx.Rngs):
        c1, c2 = conv_features
        self.conv1 = nnx.Conv(1, c1, (5, 5), padding=1, rngs=rngs)
        self.conv2 = nnx.Conv(c1, c2, (3, 3), padding=1, rngs=rngs)
        self.fc3 = nnx.Linear(c2 + 1, hidden, rngs=rngs)
        self.fc4 = nnx.Linear(hidden, hidden, rngs=rngs)
        self.out = nnx.Linear(hidden, 1, rngs=rngs)

    def __call__(self, patches, eigvals):
        """Logits of eigenpatch utility.

        Args:
          patches: (B, 25, 25, 1) float32 eigenpatches (unit-norm singular vectors resized to 25²).
          eigvals: (B, 1) float32 singular values divided by their stack's largest (in [0, 1]).

        Returns:
          (B,) float32 logits; ``sigmoid(logits)`` is the probability the eigenpatch is useful.
        """
        x = nnx.elu(self.conv1(patches))
        x = nnx.max_pool(x, window_shape=(2, 2), strides=(2, 2))
        x = nnx.elu(self.conv2(x))
        x = nnx.max_pool(x, window_shape=(2, 2), strides=(2, 2))
        x = jnp.mean(x, axis=(1, 2))
        x = jnp.concatenate([x, eigvals.astype(x.dtype)], axis=-1)
        x = nnx.elu(self.fc3(x))
        x = nnx.elu(self.fc4(x))
        return self.out(x)[..., 0]


def probabilities(model: EigenpatchClassifier, patches, eigvals):
    """Utility probabilities for any leading batch shape.

    Args:
      model: the classifier.
      patches: (..., 25, 25, 1) eigenpatches.
      eigvals: (..., 1) normalised singular values.

    Returns:
      (...) float32 probabilities in [0, 1].
    """
    lead = patches.shape[:-3]
    logits = model(patches.reshape((-1,) + patches.shape[-3:]).astype(jnp.float32),
                   eigvals.reshape(-1, 1).astype(jnp.float32))
    return jax.nn.sigmoid(logits).reshape(lead)


def make_predictor(model: EigenpatchClassifier) -> Callable:
    """A jitted ``(patches (..., 25, 25, 1), eigvals (..., 1)) -> probs (...)`` closure over `model`.

    The weights are captured as a pytree argument (not constants), so one compilation per input
    shape serves any weights of the same architecture.
    """
    graphdef, state = nnx.split(model)

    @jax.jit
    def _predict(state, patches, eigvals):
        return probabilities(nnx.merge(graphdef, state), patches, eigvals)

    def predict(patches, eigvals):
        return _predict(state, jnp.asarray(patches, jnp.float32), jnp.asarray(eigvals, jnp.float32))

    predict.model = model  # for introspection (tests, peers)
    return predict


def _build(conv_features=(14, 15), hidden=16):
    return EigenpatchClassifier(conv_features=conv_features, hidden=hidden, rngs=nnx.Rngs(0))


def load(path: str | os.PathLike, *, conv_features=(14, 15), hidden=16) -> Callable:
    """Load user weights (an `.npz` from `jaxdn.weights_io.save_weights`) as a jitted predictor.

    Args:
      path: weights file.
      conv_features, hidden: architecture, must match the file.

    Returns:
      ``predict(patches (..., 25, 25, 1), eigvals (..., 1)) -> probs (...)``.
    """
    from ..weights_io import load_weights
    model = load_weights(path, functools.partial(_build, tuple(conv_features), hidden))
    return make_predictor(model)


@functools.lru_cache(maxsize=1)
def load_default() -> Callable:
    """The shipped classifier (`jaxdn/weights/reucid_classifier.npz`) as a jitted predictor.

    Raises:
      MethodNotAvailable: the shipped weights file is missing from this installation.
    """
    from ..errors import MethodNotAvailable
    from ..weights_io import shipped
    path = shipped(WEIGHTS_NAME)
    if not Path(path).is_file():
        raise MethodNotAvailable(
            f"REUCID classifier weights are missing ({path}); reinstall jaxdn or train them with "
            "`jaxdn train reucid-classifier --config configs/reucid.py --workdir DIR` and pass "
            "weights=DIR/reucid_classifier.npz")
    return load(path)
