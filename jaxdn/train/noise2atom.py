"""Noise2Atom trainer: WGAN-GP critic + two cycle generators on the user's own movie (`configs/noise2atom.py`).

Sections: preprocessing · models & optimizers · data (on device) · the fused step · guard ·
train (shared loop) · export · evaluate.

One update (`make_train_step`) is one jitted pure function, the paper's schedule for one batch:

1. fake = M_s2c(s) once (the generators do not change during the critic updates, so the authors'
   five recomputations give the same value); its VJP is kept for step 3;
2. the critic is updated `n_critic` times in a `lax.scan` (Wasserstein loss with label −1 on clean
   images and +1 on generated ones, gradient penalty λ at per-sample random interpolations, fresh
   dropout and interpolation keys every time);
3. both generators get one RMSProp update of α·W(−1, D(M_s2c(s))) + β·L_cycle + L_lfc (+ the
   inversion guard's hinge term when enabled).

Inversion guard (beyond the paper): per sample, the Pearson correlation between the input s and the
output M_s2c(s) must be positive (bright pixels hold the atoms). It is computed on the unfiltered
images: after background removal the low-passed frame is nearly flat, its correlation with anything
is noise, and a guard on it flipped the generator back and forth (14 flips in 125 steps of a trial run).
A hinge `guard_weight · mean(relu(guard_margin − corr))` keeps it so, and if the batch mean drops below
−guard_margin (an inverted mapping) the step flips the sign exactly: M_s2c's last conv is negated
(tanh is odd) and M_c2s's first conv is negated, so M_c2s∘M_s2c is unchanged; the momentum of those
leaves is reset. The metric ``guard_flips`` counts flips. A fresh run starts with the right sign
(`canonical_sign`: the same exact flip applied to the initial state when its correlation is negative).

Direct low-frequency content (beyond the paper, ``content_weight``): L_lfc only asks that the
*cycled* frame M_c2s(M_s2c(s)) keeps the low frequencies of s, which M_c2s can satisfy whatever atom
map M_s2c draws (session-2 weights drew a plausible lattice of their own). The optional term
``content_weight · mean(1 − corr(M_s2b(s), M_s2b(M_s2c(s))))`` ties the atom map itself to the
data: blurred, it must match the blurred noisy frame up to an affine map. It also penalises an
inverted map (corr → −1).

Snapshot selection (beyond the paper, ``select_best``, simulated training only): GAN quality is not
monotonic in the steps, so `SnapshotSelector` scores the generator on a simulated validation movie
at every evaluation and the run ships the best snapshot.

Slow background (beyond the paper): with ``background_order`` set, a per-frame least-squares
polynomial of that order is subtracted from every frame before min–max normalisation, in training and
inference alike, so background ramps never reach the generator (`preprocess`).
"""
from __future__ import annotations

import functools
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError

WEIGHTS_NAME = "noise2atom.npz"


# ---- preprocessing (shared with jaxdn.methods.noise2atom) ----------------------------------------

def _poly_design(h: int, w: int, order: int) -> np.ndarray:
    y = np.linspace(-1.0, 1.0, h)[:, None] * np.ones((1, w))
    x = np.ones((h, 1)) * np.linspace(-1.0, 1.0, w)[None, :]
    cols = [(y ** i * x ** j).ravel() for i in range(order + 1) for j in range(order + 1 - i)]
    return np.stack(cols, axis=1)


def remove_background(frames: np.ndarray, *, order: int) -> np.ndarray:
    """Subtract a least-squares 2-D polynomial of total degree `order` from each frame.

    Args:
      frames: (T, H, W) float. order: 0 (mean), 1 (plane), 2 (quadratic), ...
    Returns:
      (T, H, W) float32 residuals.
    """
    frames = np.asarray(frames, np.float64)
    t, h, w = frames.shape
    # Fit on a coarse grid (every k-th pixel) — exact enough for a low-order surface, fast for 1024².
    k = max(1, min(h, w) // 128)
    a = _poly_design(h, w, order).reshape(h, w, -1)
    a_sub = a[::k, ::k].reshape(-1, a.shape[-1])
    coef = np.linalg.lstsq(a_sub, frames[:, ::k, ::k].reshape(t, -1).T, rcond=None)[0]  # (P, T)
    bg = np.einsum("hwp,pt->thw", a, coef)
    return (frames - bg).astype(np.float32)


def preprocess(frames: np.ndarray, *, background_order: int | None, value_range=None) -> np.ndarray:
    """(T, H, W) raw frames → (T, H, W) float32 in [−1, 1] (background removal, then min–max of the stack).

    value_range: (lo, hi) to map to [−1, 1] instead of the stack's own min and max (values outside
    are clipped); used when a stack is processed in chunks."""
    frames = np.asarray(frames, np.float32)
    if frames.ndim == 2:
        frames = frames[None]
    if background_order is not None:
        frames = remove_background(frames, order=int(background_order))
    lo, hi = (float(frames.min()), float(frames.max())) if value_range is None else map(float, value_range)
    if not hi > lo:
        return np.zeros_like(frames)
    return np.clip(2.0 * (frames - lo) / (hi - lo) - 1.0, -1.0, 1.0).astype(np.float32)


# ---- models & optimizers --------------------------------------------------------------------------

def _getter(model_cfg):
    """`get(key)` on a `ModelConfig` or its dict form; `wgrad_dtype` (added in session 20) is None
    where a stored config predates it."""
    if isinstance(model_cfg, dict):
        return lambda k: model_cfg.get(k) if k == "wgrad_dtype" else model_cfg[k]
    return lambda k: getattr(model_cfg, k)


def generator_kwargs(model_cfg) -> dict:
    """Keyword arguments of `Generator` from a `ModelConfig` (or its dict form)."""
    get = _getter(model_cfg)
    return dict(widths=tuple(get("widths")), bottleneck=int(get("bottleneck")), n_res=int(get("n_res")),
                kernels_full=tuple(get("kernels_full")), kernels_deep=tuple(get("kernels_deep")),
                out_kernel=int(get("out_kernel")), out_mid=int(get("out_mid")), impl=get("impl"),
                compute_dtype=get("compute_dtype"), wgrad_dtype=get("wgrad_dtype"))


def critic_kwargs(model_cfg, crop: int) -> dict:
    get = _getter(model_cfg)
    return dict(size=int(crop), widths=tuple(get("critic_widths")), dropout=float(get("dropout")),
                impl=get("impl"), compute_dtype=get("compute_dtype"), wgrad_dtype=get("wgrad_dtype"))


class Nets:
    """Factory for the three trainable networks (a plain tuple of NNX modules: s2c, c2s, critic)."""

    @staticmethod
    def build(config, seed: int):
        from flax import nnx
        from ..models.noise2atom import Critic, Generator
        rngs = nnx.Rngs(seed)
        gk = generator_kwargs(config.model)
        return (Generator(**gk, rngs=rngs), Generator(**gk, rngs=rngs),
                Critic(**critic_kwargs(config.model, config.crop), rngs=rngs))


def make_optimizer(config):
    import optax
    return optax.rmsprop(config.lr, decay=config.rms_decay, momentum=config.momentum or None)


def graphdefs_and_init(config, *, init_nets=None):
    """Graphdefs of (s2c, c2s, critic) and `init_state()` for the loop (jitted init, no eager layers).

    The state is ``{"gen": (s2c, c2s) params, "critic": params, "opt_gen": ..., "opt_critic": ...}``.
    `init_nets`: optional ``(s2c, c2s, critic)`` param states to start from (``--init``).
    """
    import jax
    from flax import nnx
    tx = make_optimizer(config)

    def build_states():
        s2c, c2s, critic = Nets.build(config, config.seed)
        return nnx.state(s2c), nnx.state(c2s), nnx.state(critic)

    abstract = nnx.eval_shape(lambda: Nets.build(config, config.seed))
    gdefs = tuple(nnx.graphdef(m) for m in abstract)

    def init_state():
        if init_nets is None:
            s2c, c2s, critic = build_states()  # NumPy-backed init: no compile
        else:
            s2c, c2s, critic = init_nets
        gen = (s2c, c2s)
        return {"gen": gen, "critic": critic, "opt_gen": tx.init(gen), "opt_critic": tx.init(critic),
                "flips": jax.numpy.zeros((), jax.numpy.int32)}

    return gdefs, init_state, tx


# ---- data (on device) --------------------------------------------------------------------------------

def clean_sampler(config):
    """``sample(key) -> (crop, crop)`` clean-domain image in [−1, 1]."""
    from ..simulate import atoms
    c = config.crop
    if config.clean_domain == "noise2atom":
        def sample(key):
            return 2.0 * atoms.noise2atom_clean(key, size=c) - 1.0
    elif config.clean_domain == "lattice":
        max_atoms = max(256, int(4 * (c + 16) ** 2 / config.sim.spacing[0] ** 2))

        def sample(key):
            img, _, _ = atoms.haadf_lattice(key, size=c, spacing=config.sim.spacing, sigma=config.sim.sigma,
                                            max_atoms=max_atoms, background=(0.0, 0.0))
            return 2.0 * img - 1.0
    else:
        raise InputError(f"unknown clean_domain {config.clean_domain!r}")
    return sample


def make_batch_fn(config):
    """``make_batch(key, step, data) -> {"noisy", "clean"}`` each (batch, crop, crop, 1); data = {"frames": (T, H, W)}."""
    import jax
    import jax.numpy as jnp
    c, b = config.crop, config.batch_size
    sample_clean = clean_sampler(config)

    def crop_one(key, frames):
        t, h, w = frames.shape
        kt, kr, kc = jax.random.split(key, 3)
        i = jax.random.randint(kt, (), 0, t)
        r = jax.random.randint(kr, (), 0, h - c + 1)
        q = jax.random.randint(kc, (), 0, w - c + 1)
        return jax.lax.dynamic_slice(frames, (i, r, q), (1, c, c))[0]

    def make_batch(key, step, data):
        kn, kc = jax.random.split(key)
        noisy = jax.vmap(crop_one, in_axes=(0, None))(jax.random.split(kn, b), data["frames"])
        clean = jax.vmap(sample_clean)(jax.random.split(kc, b))
        return {"noisy": noisy[..., None].astype(jnp.float32), "clean": clean[..., None].astype(jnp.float32)}

    return make_batch


def simulate_movie(config, key) -> np.ndarray:
    """Simulated noisy STEM frames (T, size, size) in electron counts: HAADF lattices + slow
    background gradient, Poisson dose (peak expected electrons in `sim.peak_electrons`) + Gaussian
    detector noise. Used for the shipped weights when no `--data` is given."""
    import jax
    import jax.numpy as jnp
    from ..simulate import atoms, noise
    s = config.sim

    @jax.jit
    def one(k):
        k1, k2, k3, k4, k5 = jax.random.split(k, 5)
        img, _, _ = atoms.haadf_lattice(k1, size=s.size, spacing=s.spacing, sigma=s.sigma)
        strength = jax.random.uniform(k2, (), minval=s.background[0], maxval=s.background[1])
        img = noise.background_gradient(k3, img, strength=strength)
        peak = jnp.exp(jax.random.uniform(k4, (), minval=jnp.log(s.peak_electrons[0]),
                                          maxval=jnp.log(s.peak_electrons[1])))
        dose = peak / (0.2 * 0.2) / jnp.maximum(jnp.max(img), 1e-6)
        return noise.poisson_gaussian(k5, img, dose=dose, detector_sigma=s.detector_sigma)

    return np.stack([np.asarray(one(k)) for k in jax.random.split(key, s.frames)])


# ---- the fused step ------------------------------------------------------------------------------------

def make_train_step(config, gdefs, tx):
    """Pure ``train_step(state, batch, key) -> (state, metrics)`` (see module docstring)."""
    import jax
    import jax.numpy as jnp
    import optax
    from flax import nnx
    from ..models.noise2atom import lowpass
    from . import noise2atom_losses as L

    g_s2c, g_c2s, g_critic = gdefs
    lp = functools.partial(lowpass, size=config.lowpass_size, variance=config.lowpass_variance)

    def G(gdef, params, x):
        return nnx.merge(gdef, params)(x)

    def D(params, x, key):
        return nnx.merge(g_critic, params)(x, key=key)

    def train_step(state, batch, key):
        s, c = batch["noisy"], batch["clean"]
        k_critic, k_adv = jax.random.split(key)
        (p_s2c, p_c2s), p_d = state["gen"], state["critic"]

        # 1. fake once, keep its VJP for the generator update
        fake, fake_vjp = jax.vjp(lambda p: G(g_s2c, p, s), p_s2c)
        fake_sg = jax.lax.stop_gradient(fake)

        # 2. critic × n_critic
        def critic_loss(pd, k):
            k1, k2, k3, k4 = jax.random.split(k, 4)
            real_score = D(pd, c, k1)
            fake_score = D(pd, fake_sg, k2)
            interp = L.interpolate(k3, c, fake_sg)
            gp = L.gradient_penalty(lambda z: D(pd, z, k4), interp)
            w = L.wasserstein(-1.0, real_score) + L.wasserstein(1.0, fake_score)
            return w + config.gp_weight * gp, (w, gp)

        def critic_update(carry, k):
            pd, od = carry
            (loss, (w, gp)), grads = jax.value_and_grad(critic_loss, has_aux=True)(pd, k)
            updates, od = tx.update(grads, od, pd)
            return (optax.apply_updates(pd, updates), od), (loss, w, gp)

        # Unrolled: XLA:CPU runs the convolutions inside a while loop about 3x slower than the
        # same ops in straight-line code (measured: 5 critic updates 1.23 s in a loop, 0.40 s unrolled).
        (p_d, o_d), (d_loss, d_w, d_gp) = jax.lax.scan(
            critic_update, (p_d, state["opt_critic"]), jax.random.split(k_critic, config.n_critic),
            unroll=True)

        # 3. generators: α·W(−1, D(fake)) + β·cycle + lfc (+ guard)
        def gen_loss(fake, p_c2s, p_s2c):
            adv = L.wasserstein(-1.0, D(p_d, fake, k_adv))
            lfc = L.lowfreq_cycle(lp, s, G(g_c2s, p_c2s, fake))
            cyc = L.cycle_l1(c, G(g_s2c, p_s2c, G(g_c2s, p_c2s, c)))
            corr = L.sign_correlation(s, fake)
            guard = jnp.mean(jax.nn.relu(config.guard_margin - corr)) if config.guard else jnp.zeros(())
            content = jnp.mean(L.lowfreq_content(lp, s, fake)) if config.content_weight else jnp.zeros(())
            total = (config.alpha * adv + config.beta * cyc + lfc + config.guard_weight * guard
                     + config.content_weight * content)
            return total, {"adv": adv, "lfc": lfc, "cycle": cyc, "corr": jnp.mean(corr), "content": content}

        (g_total, aux), (g_fake, g_c2s_grad, g_s2c_cyc) = jax.value_and_grad(
            gen_loss, argnums=(0, 1, 2), has_aux=True)(fake, p_c2s, p_s2c)
        (g_s2c_adv,) = fake_vjp(g_fake)
        g_s2c_grad = jax.tree.map(jnp.add, g_s2c_adv, g_s2c_cyc)
        gen = (p_s2c, p_c2s)
        updates, o_g = tx.update((g_s2c_grad, g_c2s_grad), state["opt_gen"], gen)
        gen = optax.apply_updates(gen, updates)

        flips = state["flips"]
        if config.guard:
            inverted = aux["corr"] < -config.guard_margin
            gen, o_g = flip_if(inverted, gen, o_g)
            flips = flips + inverted.astype(jnp.int32)

        new_state = {"gen": gen, "critic": p_d, "opt_gen": o_g, "opt_critic": o_d, "flips": flips}
        metrics = {"critic_loss": d_loss[-1], "critic_w": d_w[-1], "critic_gp": d_gp[-1],
                   "gen_loss": g_total, **aux, "guard_flips": flips.astype(jnp.float32)}
        return new_state, metrics

    return train_step


# ---- guard -----------------------------------------------------------------------------------------------

_FLIP_TARGETS = ((0, "out2", "kernel"), (0, "out2", "bias"), (1, "in_block", "c1", "kernel"))


def _keys(path) -> tuple:
    """Plain keys of a pytree path (dict keys, attribute names, sequence indices), without 'value'."""
    out = []
    for p in path:
        for attr in ("key", "name", "idx"):
            if hasattr(p, attr):
                out.append(getattr(p, attr))
                break
    return tuple(k for k in out if k != "value")


def _is_flip_target(path) -> bool:
    keys = _keys(path)
    return any(keys[-len(t):] == t for t in _FLIP_TARGETS if len(keys) >= len(t))


def flip_if(pred, gen, opt_state):
    """Exact sign flip of M_s2c's output and M_c2s's input when `pred` (traced bool).

    Negates M_s2c's last conv (kernel, bias) and M_c2s's first conv kernel in `gen` = (s2c, c2s)
    params, and the momentum ('trace') of those leaves in `opt_state`; squared-gradient statistics
    are sign-invariant and kept. Returns (gen, opt_state).
    """
    import jax
    import jax.numpy as jnp

    gen = jax.tree_util.tree_map_with_path(
        lambda path, x: jnp.where(pred, -x, x) if _is_flip_target(path) else x, gen)
    opt_state = jax.tree_util.tree_map_with_path(
        lambda path, x: jnp.where(pred, -x, x) if _is_flip_target(path) and "trace" in _keys(path) else x,
        opt_state)
    return gen, opt_state


def output_correlation(config, gdef_s2c, p_s2c, noisy):
    """Mean per-sample Pearson correlation of s and M_s2c(s) for noisy (N, h, w, 1) (the guard's measure)."""
    import jax.numpy as jnp
    from flax import nnx
    from .noise2atom_losses import sign_correlation
    out = nnx.merge(gdef_s2c, p_s2c)(noisy)
    return jnp.mean(sign_correlation(noisy, out))


def canonical_sign(state, corr: float):
    """Start with the right sign: flip a (fresh) state exactly when its measured corr(s, M_s2c(s)) < 0.

    A random generator is as likely to start inverted as not (8 of 10 seeds of the tiny64 proxy
    did); the flip is exact, so it costs nothing. `corr`: `output_correlation` of the state on a few
    training crops. Returns (state, flipped: bool).
    """
    import jax.numpy as jnp
    if float(corr) >= 0:
        return state, False
    gen, opt = flip_if(jnp.asarray(True), state["gen"], state["opt_gen"])
    return {**state, "gen": gen, "opt_gen": opt}, True


# ---- snapshot selection ------------------------------------------------------------------------------------

class SnapshotSelector:
    """Keep the best snapshot of a simulated-data run (GAN quality is not monotonic in the steps).

    A `fit` hook: at every `eval_every`-th step and the last one it denoises a fixed validation movie
    (seed 1001, `VAL_FRAMES` drifting 128² frames at 3 e⁻ peak, flat and with a background gradient
    — not the seed-1000 test movie of `evaluate`), scores mean atom-column F1 (PSNR breaks ties) and,
    when that beats the best so far, writes ``workdir/noise2atom_best.npz``; the best score survives
    a resume in ``workdir/best.json``. `finish` makes the best snapshot the run's ``noise2atom.npz``
    (the final state goes to ``noise2atom_last.npz``).
    """

    VAL_FRAMES = 8

    def __init__(self, config, gdef_s2c, workdir: Path, meta: dict):
        import jax
        from flax import nnx
        self.config, self.workdir, self.meta = config, Path(workdir), meta
        self.best_path, self.record = self.workdir / "noise2atom_best.npz", self.workdir / "best.json"
        self.movies = []
        for bg in (0.0, 0.5):
            clean, noisy, truth = simulated_movie(jax.random.key(1001), frames=self.VAL_FRAMES,
                                                  peak_electrons=3.0, background=bg)
            x = preprocess(noisy, background_order=config.background_order)[..., None]
            self.movies.append((clean, x, truth))
        self.apply = jax.jit(lambda p, x: (nnx.merge(gdef_s2c, p)(x)[..., 0] + 1.0) * 0.5)
        self.best = json.loads(self.record.read_text()) if self.record.exists() else None
        self.last: dict = {}

    def score(self, p_s2c) -> dict:
        """{"val_f1", "val_psnr"} of generator params on the validation movie (means over both)."""
        f1s, psnrs = [], []
        for clean, x, truth in self.movies:
            den = np.clip(np.asarray(self.apply(p_s2c, x)), 0.0, 1.0)
            f1s.append(_f1(den, truth)["f1"])
            psnrs.append(_affine_psnr(den, clean))
        return {"val_f1": float(np.mean(f1s)), "val_psnr": float(np.mean(psnrs))}

    def __call__(self, step: int, state) -> None:
        import jax
        every = self.config.eval_every
        if jax.process_index() != 0 or not ((every and step % every == 0) or step == self.config.steps):
            return
        s = self.score(state["gen"][0])
        if self.best is None or (s["val_f1"], s["val_psnr"]) > (self.best["val_f1"], self.best["val_psnr"]):
            export_weights(self.best_path, self.config, state, extra_meta={**self.meta, "step": step, **s})
            self.best = {**s, "step": step}
            self.record.write_text(json.dumps(self.best) + "\n")
        self.last = {**s, "best_val_f1": self.best["val_f1"], "best_step": float(self.best["step"])}

    def finish(self, state) -> bool:
        """Write the final state to noise2atom_last.npz and the best snapshot to noise2atom.npz.
        Returns False when there is no snapshot yet (the caller then exports the final state)."""
        import shutil
        export_weights(self.workdir / "noise2atom_last.npz", self.config, state, extra_meta=self.meta)
        if not self.best_path.exists():
            return False
        shutil.copyfile(self.best_path, self.workdir / WEIGHTS_NAME)
        return True


# ---- train -------------------------------------------------------------------------------------------------

def _load_frames(data, frames: int | None, seed: int) -> np.ndarray:
    if isinstance(data, (str, Path)):
        from ..io import read
        arr = read(data).data
    else:
        arr = np.asarray(data, np.float32)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3:
        raise InputError(f"noise2atom training data must be (T, H, W) frames, got shape {arr.shape}")
    if frames is not None and int(frames) < arr.shape[0]:
        idx = np.sort(np.random.default_rng(seed).choice(arr.shape[0], int(frames), replace=False))
        arr = arr[idx]
    return arr


def _init_nets_from(init, config):
    """Load (s2c, c2s, critic) param states from a weights file / workdir / "default"."""
    from flax import nnx
    from ..weights_io import load_weights
    path = resolve_weights(init)
    nets = load_weights(path, lambda: _trio(config))
    return nnx.state(nets.s2c), nnx.state(nets.c2s), nnx.state(nets.critic)


def resolve_weights(weights) -> Path:
    """None/"default" → shipped file; a workdir → its noise2atom.npz; else the path itself."""
    from ..weights_io import resolve
    return resolve(weights, default_name=WEIGHTS_NAME, train_hint=(
        "`jaxdn train noise2atom --config configs/noise2atom.py:small --workdir runs/n2a` (or on your movie "
        "with --data MOVIE) and pass --weights runs/n2a"))


def _trio(config):
    """(s2c, c2s, critic) in one NNX module — the layout of a weights file."""
    from flax import nnx
    from ..models.noise2atom import Critic, Generator

    class Noise2AtomNets(nnx.Module):
        def __init__(self):
            rngs = nnx.Rngs(0)
            model = config["model"] if isinstance(config, dict) else config.model
            crop = config["crop"] if isinstance(config, dict) else config.crop
            self.s2c = Generator(**generator_kwargs(model), rngs=rngs)
            self.c2s = Generator(**generator_kwargs(model), rngs=rngs)
            self.critic = Critic(**critic_kwargs(model, crop), rngs=rngs)

    return Noise2AtomNets()


def export_weights(path, config, state, *, extra_meta: dict | None = None) -> Path:
    """Write s2c, c2s and critic of a training state to a `.npz` (`weights_io.save_weights`)."""
    from flax import nnx
    from ..weights_io import save_weights
    from .config import to_dict
    trio = nnx.eval_shape(lambda: _trio(config))
    gd, abstract = nnx.split(trio)
    s2c, c2s = state["gen"]
    st = nnx.State({"s2c": s2c, "c2s": c2s, "critic": state["critic"]})
    model = nnx.merge(gd, st)
    meta = {"method": "noise2atom", "config": to_dict(config),
            "background_order": config.background_order, **(extra_meta or {})}
    return save_weights(path, model, meta=meta)


def train(config, *, workdir, quiet: bool = False, data=None, frames=None, init=None, **extra) -> dict:
    """Train Noise2Atom on a movie (or, without `data`, on simulated noisy STEM frames).

    Args:
      config: a `configs/noise2atom.py` config.
      workdir: run folder (resumes from its checkpoints); the final weights go to
        ``workdir/noise2atom.npz``.
      data: path of a movie (any format `jaxdn.io.read` knows) or an array (T, H, W); None:
        simulated frames (`simulate_movie`).
      frames: use at most this many frames (random, seeded; default `config.frames`).
      init: start from weights: "default" (shipped), a workdir or a `.npz`.
    Returns:
      Final metrics, ``steps_run``, ``resumed_from``, ``weights``, ``wall_s``.
    """
    import jax
    import jax.numpy as jnp
    from .loop import fit

    if extra:
        raise InputError(f"noise2atom trainer: unknown options {', '.join('--' + k.replace('_', '-') for k in extra)}")
    t0 = time.perf_counter()
    workdir = Path(workdir)
    if data is None:
        raw = simulate_movie(config, jax.random.fold_in(jax.random.key(config.seed), 12345))
        source = "simulated"
    else:
        raw = _load_frames(data, int(frames) if frames is not None else config.frames, config.seed)
        source = str(data) if isinstance(data, (str, Path)) else "array"
    movie = preprocess(raw, background_order=config.background_order)
    if min(movie.shape[1:]) < config.crop:
        raise InputError(f"frames are {movie.shape[1]}x{movie.shape[2]} but the config crops {config.crop}x{config.crop}")
    init_nets = _init_nets_from(init, config) if init is not None else None
    gdefs, init_state, tx = graphdefs_and_init(config, init_nets=init_nets)
    step = make_train_step(config, gdefs, tx)
    make_batch = make_batch_fn(config)
    held = jnp.asarray(movie[: min(len(movie), 4), : config.crop, : config.crop, None])

    @jax.jit
    def corr_fn(state, key):
        return {"corr": output_correlation(config, gdefs[0], state["gen"][0], held)}

    def eval_fn(state, key):  # the selector (a hook) has scored this step just before
        return {**corr_fn(state, key), **(selector.last if selector is not None else {})}

    weights = workdir / WEIGHTS_NAME
    meta = {"data": source, "frames": int(movie.shape[0])}
    selector = (SnapshotSelector(config, gdefs[0], workdir, meta)
                if config.select_best and data is None and jax.process_count() == 1 else None)

    def export(state):
        if selector is not None and selector.finish(state):
            return
        export_weights(weights, config, state, extra_meta=meta)

    # A ready state (NumPy-backed init, seconds) rather than the callable: `fit` would jit the
    # callable, and tracing falls back to jax.random initialisers (minutes of compile here).
    state0 = init_state()
    ckpt_dir = workdir / "checkpoints"
    resuming = ckpt_dir.is_dir() and any(p.name.isdigit() for p in ckpt_dir.iterdir())
    if config.guard and not resuming:  # a fresh start begins with the right sign
        state0, _ = canonical_sign(state0, corr_fn(state0, jax.random.key(0))["corr"])  # the eval's compile
    result = fit(init_state=state0, train_step=step, make_batch=make_batch, steps=config.steps,
                 workdir=workdir, config=config, seed=config.seed, eval_fn=eval_fn,
                 eval_every=config.eval_every, log_every=config.log_every,
                 checkpoint_every=config.checkpoint_every, keep_checkpoints=config.keep_checkpoints,
                 export_fn=export, data={"frames": jnp.asarray(movie)}, quiet=quiet,
                 hooks=() if selector is None else (selector,))
    return {**result.metrics, "steps_run": result.steps_run, "resumed_from": result.resumed_from,
            "weights": str(weights), "wall_s": time.perf_counter() - t0}


# ---- evaluate ------------------------------------------------------------------------------------------------

def simulated_movie(key, *, frames: int, size: int = 128, peak_electrons: float = 3.0,
                    background: float = 0.0):
    """A drifting low-dose test movie: (clean (T, S, S) in [0, 1], noisy counts (T, S, S), truth list).

    `truth[t]` is the (N_t, 2) array of column positions inside frame t. Drift 1–2 px/frame
    (`simulate.atoms.drift_movie`), Poisson dose with `peak_electrons` expected e⁻ at the brightest
    pixel + Gaussian detector noise, plus a slow background gradient of relative `background`.
    """
    import jax
    import jax.numpy as jnp
    from ..simulate import atoms, noise
    k1, k2, k3 = jax.random.split(key, 3)
    clean, pos, _ = atoms.drift_movie(k1, frames=frames, size=size)
    img = noise.background_gradient(k2, clean, strength=background) if background > 0 else clean
    dose = peak_electrons / (0.2 * 0.2) / float(jnp.max(img))
    noisy = noise.poisson_gaussian(k3, img, dose=dose)
    pos = np.asarray(pos)
    truth = [p[np.all((p >= 0) & (p <= size - 1), axis=1)] for p in pos]
    return np.asarray(clean), np.asarray(noisy), truth


def _affine_psnr(x, ref):
    """PSNR (data range 1) after the least-squares affine map of `x` onto `ref` (scale-free methods)."""
    a = np.stack([x.ravel(), np.ones(x.size)], axis=1)
    coef = np.linalg.lstsq(a, ref.ravel(), rcond=None)[0]
    mse = float(np.mean((a @ coef - ref.ravel()) ** 2))
    return 10 * np.log10(1.0 / max(mse, 1e-12))


def _f1(movie, truth, *, min_distance=3, threshold_rel=0.3, margin=4, tolerance=2.0):
    """Atom-column scores of the peaks `metrics.find_atoms` finds in each frame of `movie` (T, S, S).

    Also, under ``"resolving"``, the scores of the peaks found at 1 px spacing without smoothing: the
    default finder (3 px, σ = 1 px smoothing) merges a dim column 5.2 px from a bright one into its
    neighbour's flank, so it scores 0.66 on seed 2's *clean* movie; this one scores 1.0 on all three
    clean test movies."""
    from ..metrics import find_atoms
    found = [find_atoms(frame, min_distance=min_distance, threshold_rel=threshold_rel) for frame in movie]
    scores = _f1_positions(found, truth, size=movie.shape[-1], margin=margin, tolerance=tolerance)
    fine = [find_atoms(frame, min_distance=1, threshold_rel=threshold_rel, smooth=0.0) for frame in movie]
    scores["resolving"] = _f1_positions(fine, truth, size=movie.shape[-1], margin=margin, tolerance=tolerance)
    return scores


def _f1_positions(found, truth, *, size: int, margin=4, tolerance=2.0):
    """Mean precision / recall / F1 (and false columns per true one) of T position arrays against the
    true ones, both restricted to `margin` px inside the (size × size) frames."""
    from ..metrics import atom_f1
    scores, fps = [], []
    for pts, tr in zip(found, truth):
        inside = lambda p: p[np.all((p >= margin) & (p <= size - 1 - margin), axis=1)] if len(p) else p
        pts, tr = inside(np.asarray(pts, np.float64).reshape(-1, 2)), inside(tr)
        p, r, f = atom_f1(pts, tr, tolerance=tolerance)
        scores.append((p, r, f))
        fps.append(len(pts) * (1 - p) / max(len(tr), 1))
    s = np.mean(np.array(scores), axis=0)
    return {"precision": float(s[0]), "recall": float(s[1]), "f1": float(s[2]), "false_atoms_per_true": float(np.mean(fps))}


def _mean_css(movie, *, normalise: bool = True) -> float:
    """Mean CSS (eq. 10) of consecutive frames; `normalise`: min–max the whole movie to [0, 1] first."""
    from ..metrics import css
    m = np.asarray(movie)
    if normalise:
        m = (m - m.min()) / max(float(m.max() - m.min()), 1e-12)
    return float(np.mean(np.asarray(css(m))))


def _refined_scores(noisy, den, gauss, clean, truth, *, weights=None, track_window: int = 2) -> dict:
    """Scores of the column refinement (`methods.noise2atom.refine`) of the atom map `den`, and of two
    peers that use the same movie: the same column fit seeded by the Gaussian filter's peaks, and the
    Gaussian-filtered frames averaged over ±`track_window` frames after drift registration
    (`columns.registered_mean` with the `columns.movie_drift` of the filtered frames)."""
    from .. import columns as C
    from ..methods.noise2atom import fit_movie_columns
    out = {}
    # the Gaussian-seeded fits run first, so the timed N2A fits find the fitting code compiled
    for name, seed_maps in (("gauss_columns", gauss), ("refined", den)):
        for mode in ("frame", "movie"):
            t0 = time.perf_counter()
            cols = fit_movie_columns(noisy, weights=weights, refine=mode, track_window=track_window,
                                     atom_maps=seed_maps)
            if name == "refined":
                out[f"refine_{mode}_s_per_frame"] = (time.perf_counter() - t0) / len(noisy)
            img = np.stack([C.render_columns(c) for c in cols])
            out[f"psnr_{name}_{mode}"] = _affine_psnr(img, clean)
            out[f"css_{name}_{mode}"] = _mean_css(img)
            out[f"atoms_{name}_{mode}"] = _f1(img, truth)
            # the column list itself (what `--refine` writes as CSV), not the peaks of its rendering:
            # columns 2.8 σ apart on unequal sublattices are one peak to `find_atoms` (seed 2)
            out[f"atoms_{name}_{mode}_fitted"] = _f1_positions([c.positions for c in cols], truth, size=clean.shape[-1])
    avg = C.registered_mean(gauss, C.movie_drift(gauss), window=track_window)
    out["psnr_gauss_temporal"] = _affine_psnr(avg, clean)
    out["css_gauss_temporal"] = _mean_css(avg)
    out["atoms_gauss_temporal"] = _f1(avg, truth)
    return out


def evaluate(*, method: str = "noise2atom", weights=None, data=None, outdir, quick: bool = False, seed: int = 0,
             quiet: bool = False, frames: int | str | None = None, peak_electrons: float | str = 3.0,
             refine: bool | str | None = None, track_window: int | str = 2, **extra) -> dict:
    """Quality of Noise2Atom on a simulated drifting low-dose movie, or on a user's movie `data`.

    With `data` (no ground truth): CSS of the denoised frames beside the atom-column consistency
    of consecutive frames (`metrics.column_consistency`; CSS alone would rank a constant output
    first), for the atom map and, with `refine`, both refinements.

    Simulated (no `data`): CSS of the denoised movie beside the clean movie's own CSS (the ceiling: frames differ
    by drift), PSNR (after a least-squares affine fit to the clean movie, for every method) against
    a Gaussian filter whose σ is tuned for PSNR on the same movie, and atom-column precision /
    recall / F1 at 2 px (also of a resolving peak finder: `_f1`) — without and with a slow background
    gradient. With `refine` also the
    column refinement (``refine="frame"`` and ``"movie"``) and its two peers (`_refined_scores`;
    default: on unless `quick`).
    Writes ``outdir/noise2atom_eval.json``.
    """
    import jax
    from scipy import ndimage
    from ..metrics import column_consistency
    from ..methods.noise2atom import denoise

    if extra:
        raise InputError(f"noise2atom evaluate: unknown options {', '.join(sorted(extra))}")
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    t_frames = int(frames) if frames is not None else (4 if quick else 16)
    refine = (not quick) if refine is None else str(refine).lower() in ("1", "true", "yes", "on")
    result: dict[str, Any] = {"weights": str(resolve_weights(weights)), "frames": t_frames,
                              "peak_electrons": float(peak_electrons)}
    if data is not None:
        from ..io import read
        movie = read(data).data
        movie = movie[None] if movie.ndim == 2 else movie
        movie = movie[:t_frames]
        if len(movie) < 2:
            raise InputError(f"{data}: evaluating without ground truth needs a movie of at least 2 frames "
                             f"(CSS and column consistency compare consecutive frames); got shape {movie.shape}")
        den = denoise(movie, weights=weights)
        result["data"] = str(data)
        result["frames"] = len(movie)
        result.pop("peak_electrons")          # a property of the simulated movie only
        result["css_denoised"] = _mean_css(den, normalise=False)
        result["column_consistency"] = column_consistency(den)   # no ground truth: do the columns persist
        if refine:
            from .. import columns as C
            from ..methods.noise2atom import fit_movie_columns
            for mode in ("frame", "movie"):
                cols = fit_movie_columns(movie, weights=weights, refine=mode, track_window=int(track_window),
                                         atom_maps=den)
                ref = np.stack([C.render_columns(c) for c in cols])
                result[f"css_refined_{mode}"] = _mean_css(ref)
                result[f"column_consistency_refined_{mode}"] = column_consistency(ref)
    else:
        for name, bg in (("flat", 0.0), ("gradient", 0.5)):
            clean, noisy, truth = simulated_movie(jax.random.key(1000 + seed), frames=t_frames,
                                                  peak_electrons=float(peak_electrons), background=bg)
            t0 = time.perf_counter()
            den = denoise(noisy, weights=weights)
            t_den = time.perf_counter() - t0
            sig_best, psnr_g = None, -np.inf
            for sig in (0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 4.0):
                g = ndimage.gaussian_filter(noisy, (0, sig, sig))
                p = _affine_psnr(g, clean)
                if p > psnr_g:
                    sig_best, psnr_g = sig, p
            gauss = ndimage.gaussian_filter(noisy, (0, sig_best, sig_best))
            q = {
                "css_clean": _mean_css(clean, normalise=False),
                "css_noisy": _mean_css(noisy),
                "css_denoised": _mean_css(den, normalise=False),
                "css_gauss": _mean_css(gauss),
                "psnr_denoised": _affine_psnr(den, clean),
                "psnr_gauss": psnr_g, "gauss_sigma": sig_best,
                "psnr_noisy": _affine_psnr(noisy, clean),
                "atoms_denoised": _f1(den, truth), "atoms_gauss": _f1(gauss, truth), "atoms_clean": _f1(clean, truth),
                "denoise_s_per_frame": t_den / t_frames,
            }
            if refine:
                q.update(_refined_scores(noisy, den, gauss, clean, truth, weights=weights,
                                         track_window=int(track_window)))
            result[name] = q
    (outdir / "noise2atom_eval.json").write_text(json.dumps(result, indent=2) + "\n")
    if not quiet:
        print(json.dumps(result, indent=2))
    return result


# ---- export from a (possibly unfinished) run ------------------------------------------------------------

def export_from_workdir(workdir, out, *, config_file: str = "configs/noise2atom.py", extra_meta: dict | None = None) -> Path:
    """Write the weights of the latest checkpoint in `workdir` to `out` (a run cut short still ships).

    The config is rebuilt from ``workdir/config.json`` with the dataclasses of `config_file`.
    """
    import jax
    from .checkpoint import Checkpointer
    from .config import from_dict, import_config_module
    workdir = Path(workdir)
    module = import_config_module(config_file)
    config = from_dict(module.Config, json.loads((workdir / "config.json").read_text()))
    ckpt = Checkpointer(workdir / "checkpoints")
    step = ckpt.latest_step()
    if step is None:
        raise InputError(f"no checkpoint in {workdir}")
    _, init_state, _ = graphdefs_and_init(config)
    abstract = jax.eval_shape(init_state)
    state, _ = ckpt.restore(step, abstract)
    ckpt.close()
    return export_weights(out, config, state, extra_meta={"step": step, **(extra_meta or {})})


if __name__ == "__main__":  # python -m jaxdn.train.noise2atom export WORKDIR OUT.npz
    if len(sys.argv) == 4 and sys.argv[1] == "export":
        print(export_from_workdir(sys.argv[2], sys.argv[3]))
    else:
        print("usage: python -m jaxdn.train.noise2atom export WORKDIR OUT.npz", file=sys.stderr)
        sys.exit(2)
