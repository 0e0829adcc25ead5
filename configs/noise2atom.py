"""Noise2Atom (Wang et al. 2020) configs: unpaired CycleGAN-style denoiser for STEM movies.

Train on your own movie (random `crop`² crops of up to `frames` frames, background removed and
min–max normalised to [−1, 1]):

    jaxdn train noise2atom --config configs/noise2atom.py:paper --data MOVIE.tif --workdir runs/n2a

Variants:
  paper  — the paper / authors' code: 13.8 M-parameter generators (widths 64/64/64/128, 192-ch
           bottleneck, 16 residual blocks), batch 6, 128² crops, RMSProp 5e-5 (momentum 0.9),
           critic 5× per batch, α = 5, β = 1, λ = 10, 2000 steps (≈ 100 epochs of 120 frames).
           No background removal, no inversion guard (the paper's behaviour). Convolutions
           "fastgrad" (same parameters and values as XLA's own to float rounding; its gradients
           are 3.3× faster to train `small`, benchmarks/results/noise2atom.md, session 19).
  small  — the shipped default (`jaxdn/weights/noise2atom.npz`): widths 16/16/16/32, 32-ch
           bottleneck, 2 residual blocks, 64² crops, "fastgrad" convolutions; inversion guard,
           quadratic background removal, the direct low-frequency content term (weight 5) and
           best-snapshot selection on a simulated validation movie on. Trained on simulated noisy
           STEM frames (HAADF lattices, Poisson dose with 1.5–8 expected electrons at the brightest
           pixel + Gaussian detector noise + a slow background gradient) with HAADF-lattice clean
           images as the clean domain.
           Two departures from the paper for lattices: M_s2b is a 13×13 Gaussian of variance 4
           (σ = 2 px) instead of 33×33, variance 15 — the paper's σ ≈ 3.9 px low-pass removes a
           7–14 px lattice entirely (transfer ≤ 0.2), so L_lfc then ties nothing but the background to
           the input and the generator drew a plausible lattice of its own (session 2 weights: a
           denser, rotated lattice, PSNR 14.2 dB vs 22.1 for a tuned Gaussian); and the guard's hinge
           asks corr(input, output) ≥ 0.3 (a real atom map of a 3 e⁻ frame has ≈ 0.6):

             jaxdn train noise2atom --config configs/noise2atom.py:small --workdir runs/n2a_small
             cp runs/n2a_small/noise2atom.npz jaxdn/weights/noise2atom.npz   # the best snapshot
             (a run cut short) python -m jaxdn.train.noise2atom export runs/n2a_small OUT.npz

           Record of the shipped run: see `SHIPPED_RUN` below.
  clusters — `small` for nanoparticles / clusters on a support (e.g. the Pt-on-carbon frames of the
           paper's demo data) rather than lattices: the paper's clean domain (random Gaussian atoms,
           `simulate.atoms.noise2atom_clean`) and its 33×33, variance-15 low-pass, 380 steps, no
           content term (as run on the Pt frame in benchmarks/results/noise2atom.md; the content
           term was not tried there). Train it on the movie itself, from scratch:

             jaxdn train noise2atom --config configs/noise2atom.py:clusters --data MOVIE --workdir runs/mine

  fast   — `small` with bfloat16 convolution inputs (parameters and accumulation float32).
  paper_fast — `paper` with the filter gradients that run as matrix products on CPU (per-tap
           products, `_chunked_wgrad`) taking bfloat16 operands, float32 accumulation; convolutions
           stay float32 (XLA:CPU would upcast bf16 ones anyway). Same parameters as paper; 12–14 %
           faster per step than `paper` on this CPU, where bf16 products run on AMX, and 1.13× the
           PyTorch peer's fastest float32 mode (benchmarks/results/noise2atom.md, session 20).
  paper_bf16 — `paper` with bfloat16 inputs to every convolution and filter-gradient product (as
           PyTorch's bf16 autocast: parameters, accumulation, norms and losses float32). On CPU the
           wide layers' convolutions run as bf16 matrix products on AMX (`_flat_conv`); the thin
           ones stay XLA float32 convolutions of the rounded inputs. Same parameters as `paper`;
           16–17 % faster per step than `paper_fast` on this CPU, 1.31× the PyTorch peer's fastest
           float32 mode and 0.83× its bf16 autocast; gradients within 1–3 % of float32
           (benchmarks/results/noise2atom.md, session 21).
           Memory on CPU (batch 6, 128² crops): one step's scratch is 6.7 GB (`paper`) / 8.6 GB
           (`paper_bf16`); a `jaxdn train` process holds ≈ 11 / 14–17 GB (session 22).
  tiny   — for tests: widths 8/8/8/8, 8-ch bottleneck, 1 residual block, 32² crops, batch 2.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal

# Record of the shipped run (command, wall time, final losses).
SHIPPED_RUN = (
    "Session 23 (2026-12-05), code of commit 23f3146 (9046215 gave the same file): `jaxdn train noise2atom --config configs/noise2atom.py:small "
    "--workdir runs/n2a_small` (600 steps; low-pass 13x13 variance 4, guard margin 0.3, content_weight 5, "
    "select_best, fastgrad convs, RMSProp 1e-4 without momentum), then `cp runs/n2a_small/noise2atom.npz "
    "jaxdn/weights/noise2atom.npz`. Wall 553 s on the 2-core CPU, otherwise idle (0.7-0.9 s/step). Run twice: both "
    "runs wrote the same file byte for byte (same machine and software; a GAN run on another CPU follows its own "
    "float rounding). The selector's validation movie (seed 1001, 8 frames, 3 e- peak, flat + gradient) reached "
    "mean F1 0.954 at step 350 and stayed at 0.95-0.96 up to 600 (PSNR 19.4-19.7 dB); the best snapshot is step 400 "
    "(val F1 0.960, PSNR 19.56 dB). Step-400 losses (mean of steps 396-400): adv 15.6, cycle 0.21, lfc 0.023, "
    "content 0.14, corr(input, output) 0.42, guard flips 0. Test movie (seed 0, 3 e- peak): atom F1 0.987 flat / "
    "0.856 with a background gradient, PSNR 20.3 dB vs 22.1 dB for a tuned Gaussian "
    "(benchmarks/results/noise2atom.md, session 23). Replaces the session-4 file, which the code had not "
    "reproduced since session 6 (other float rounding, another GAN trajectory).")


@dataclass(frozen=True)
class ModelConfig:
    widths: tuple[int, int, int, int] = (64, 64, 64, 128)
    bottleneck: int = 192
    n_res: int = 16
    kernels_full: tuple[int, ...] = (1, 3, 5, 7)
    kernels_deep: tuple[int, ...] = (3, 5)
    out_kernel: int = 9
    out_mid: int = 8
    critic_widths: tuple[int, int, int, int] = (64, 64, 128, 128)
    dropout: float = 0.25
    impl: Literal["xla", "im2col", "fastgrad"] = "fastgrad"
    compute_dtype: Literal["float32", "bfloat16"] = "float32"
    # operand dtype of the filter gradients computed as matrix products (CPU "fastgrad"); None = compute_dtype
    wgrad_dtype: Literal["float32", "bfloat16"] | None = None


@dataclass(frozen=True)
class SimConfig:
    """Simulated noisy movie used when no `--data` is given (the shipped weights)."""
    frames: int = 120
    size: int = 256
    peak_electrons: tuple[float, float] = (1.5, 8.0)   # expected e⁻ at the brightest pixel
    detector_sigma: float = 0.05
    background: tuple[float, float] = (0.0, 1.0)       # background_gradient strength range
    spacing: tuple[float, float] = (7.0, 14.0)
    sigma: tuple[float, float] = (1.0, 2.5)


@dataclass(frozen=True)
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    sim: SimConfig = field(default_factory=SimConfig)
    crop: int = 128
    batch_size: int = 6
    steps: int = 2000
    n_critic: int = 5
    lr: float = 5e-5
    rms_decay: float = 0.9
    momentum: float = 0.9
    alpha: float = 5.0
    beta: float = 1.0
    gp_weight: float = 10.0
    lowpass_size: int = 33
    lowpass_variance: float = 15.0
    clean_domain: Literal["noise2atom", "lattice"] = "noise2atom"
    frames: int = 120                       # frames sampled from the user's movie
    background_order: int | None = None     # polynomial order of the per-frame background removed first
    guard: bool = False                     # inversion guard (hinge on input/output correlation + flip)
    guard_weight: float = 1.0
    guard_margin: float = 0.1
    content_weight: float = 0.0             # direct low-frequency content term (losses.lowfreq_content); 0 = paper
    select_best: bool = False               # simulated training: keep the snapshot with the best validation atom F1
    seed: int = 0
    log_every: int = 10
    eval_every: int = 100
    checkpoint_every: int = 100
    keep_checkpoints: int = 2


def get_config(variant: str = "default") -> Config:
    paper = Config()
    small = dataclasses.replace(
        paper,
        model=dataclasses.replace(ModelConfig(), widths=(16, 16, 16, 32), bottleneck=32, n_res=2,
                                  critic_widths=(16, 32, 32, 64)),
        crop=64, steps=600, lr=1e-4, momentum=0.0, clean_domain="lattice", background_order=2, guard=True,
        select_best=True, content_weight=5.0,
        guard_margin=0.3, lowpass_size=13, lowpass_variance=4.0,
        log_every=5, eval_every=25, checkpoint_every=10)
    variants = {
        "default": paper,
        "paper": paper,
        "paper_fast": dataclasses.replace(paper, model=dataclasses.replace(paper.model, wgrad_dtype="bfloat16")),
        "paper_bf16": dataclasses.replace(paper, model=dataclasses.replace(paper.model, compute_dtype="bfloat16")),
        "small": small,
        "clusters": dataclasses.replace(small, clean_domain="noise2atom", lowpass_size=33, lowpass_variance=15.0,
                                        content_weight=0.0, steps=380),
        "fast": dataclasses.replace(small, model=dataclasses.replace(small.model, compute_dtype="bfloat16")),
        "tiny": dataclasses.replace(
            small,
            model=dataclasses.replace(small.model, widths=(8, 8, 8, 8), bottleneck=8, n_res=1,
                                      critic_widths=(4, 4, 8, 8), out_mid=4),
            sim=dataclasses.replace(SimConfig(), frames=4, size=64),
            crop=32, batch_size=2, steps=4, n_critic=2, lowpass_size=9, lowpass_variance=4.0,
            log_every=1, eval_every=2, checkpoint_every=2),
    }
    if variant not in variants:
        raise KeyError(f"unknown variant {variant!r}; choose one of {', '.join(variants)}")
    return variants[variant]
