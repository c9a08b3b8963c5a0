"""PSNR, the one definition every image metric uses: training and evaluation of NeRF and
restoration, the rendered-view labels and ``launch.nerf_views``-style reports."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def psnr(mse, max_value: float = 1.0):
    """Peak signal-to-noise ratio in dB of a mean squared error (or an array of them) of values in
    [0, max_value]; in jax under a trace or on a jax array, in numpy (float64) on host values."""
    xp = jnp if isinstance(mse, jax.Array) else np
    return 10.0 * xp.log10(max_value**2 / xp.maximum(mse, 1e-10))
