"""REUCID (Mitchell, Sanvito & Jones 2025): PSF-sized patches, per-stack SVD, a classifier that
keeps the useful eigenpatches, and a patch-terrain-normalised reconstruction.

Modules: `psf` (patch size), `patches` (stacks, labels, extraction), `rsvd` (randomized SVD),
`terrain` (patch overlap counts), `pipeline` (decompose / reconstruct / denoise, fast and faithful
paths), `labels` (training labels for the classifier).
"""
from . import patches, pipeline, psf, rsvd, terrain
from .pipeline import Decomposition, decompose, denoise, reconstruct, reconstruct_each_rank

__all__ = ["patches", "pipeline", "psf", "rsvd", "terrain", "Decomposition", "decompose", "denoise",
           "reconstruct", "reconstruct_each_rank"]
