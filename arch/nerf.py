"""NeRF: a positional-encoding MLP field F(x, d) -> (rgb, sigma) rendered by volume rendering.

A ray batch ``[B, 6]`` (origin, direction) is sampled stratified between ``near`` and ``far``
(one sample per equal bin, jittered in training), rendered through the coarse field, and then
resampled by inverse-CDF from the coarse weights (hierarchical sampling); the fine field renders
the union of both sample sets. The sampling and rendering functions are plain functions of a
``field(points, viewdirs) -> (rgb, sigma)`` callable, so an analytic field can be rendered with
exactly the code the model uses (the tests render an opaque plane this way).
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from archlab.arch.layers import logical_dense

Field = Callable[[jax.Array, jax.Array], tuple[jax.Array, jax.Array]]  # (points [B,N,3], viewdirs [B,3]) -> (rgb [B,N,3], sigma [B,N])


def positional_encoding(x: jax.Array, num_frequencies: int) -> jax.Array:
    """``[..., D] -> [..., D * (1 + 2L)]``: x, then sin(2^k x) and cos(2^k x) for k < L.

    Only sin(x) and cos(x) are evaluated; higher octaves follow by the double-angle identities
    (XLA:CPU spent more time in sin/cos of every octave than in the MLP's matmuls; the recurrence
    drifts by about 1e-5 at L = 8 in float32, against 1e-7 for sin/cos of each octave).
    """
    if num_frequencies == 0:
        return x
    s, c = jnp.sin(x), jnp.cos(x)
    sines, cosines = [s], [c]
    for _ in range(num_frequencies - 1):
        s, c = 2.0 * s * c, (c - s) * (c + s)
        sines.append(s)
        cosines.append(c)
    return jnp.concatenate([x, *sines, *cosines], axis=-1)


def stratified_samples(near: float, far: float, num_samples: int, batch_shape: tuple[int, ...], rng: jax.Array | None = None):
    """One depth per equal bin of [near, far]: the bin midpoint, or uniform within it given ``rng``.

    Returns (t [*batch_shape, N], bin edges [N + 1]); sample i lies in bin i.
    """
    edges = jnp.linspace(near, far, num_samples + 1)
    lower, upper = edges[:-1], edges[1:]
    u = jnp.full(batch_shape + (num_samples,), 0.5) if rng is None else jax.random.uniform(rng, batch_shape + (num_samples,))
    return lower + (upper - lower) * u, edges


def sample_pdf(edges: jax.Array, weights: jax.Array, num_samples: int, rng: jax.Array | None = None) -> jax.Array:
    """Inverse-CDF sampling of the piecewise-constant density ``weights`` [B, M] over bins ``edges`` [M + 1].

    Deterministic (evenly spaced quantiles) without ``rng``. Returns [B, num_samples], no gradient.
    """
    weights = jax.lax.stop_gradient(weights) + 1e-5  # every bin keeps a little mass: no empty CDF steps
    pdf = weights / jnp.sum(weights, axis=-1, keepdims=True)
    cdf = jnp.minimum(1.0, jnp.cumsum(pdf, axis=-1))
    cdf = jnp.concatenate([jnp.zeros_like(cdf[..., :1]), cdf[..., :-1], jnp.ones_like(cdf[..., :1])], axis=-1)  # [B, M + 1]
    batch = weights.shape[:-1]
    if rng is None:
        u = jnp.broadcast_to(jnp.linspace(0.0, 1.0, num_samples), batch + (num_samples,))
    else:
        u = jax.random.uniform(rng, batch + (num_samples,))
    # index of the bin each quantile falls in: the number of CDF knots at or below it, minus one
    above = jnp.sum(u[..., :, None] >= cdf[..., None, :], axis=-1)
    num_bins = weights.shape[-1]
    below = jnp.clip(above - 1, 0, num_bins)
    above = jnp.clip(above, 0, num_bins)
    cdf_lo, cdf_hi = jnp.take_along_axis(cdf, below, -1), jnp.take_along_axis(cdf, above, -1)
    edges = jnp.broadcast_to(edges, batch + edges.shape[-1:])
    bin_lo, bin_hi = jnp.take_along_axis(edges, below, -1), jnp.take_along_axis(edges, above, -1)
    span = cdf_hi - cdf_lo
    frac = (u - cdf_lo) / jnp.where(span < 1e-8, 1.0, span)
    return jax.lax.stop_gradient(bin_lo + frac * (bin_hi - bin_lo))


def volume_render(rgb: jax.Array, sigma: jax.Array, t: jax.Array, ray_norm: jax.Array, far: float, background: float) -> dict:
    """Alpha-composites samples sorted by depth ``t`` [B, N] in front of a constant background.

    Sample i stands for the segment [t_i, t_(i+1)] (the last one for [t_N, far]); densities are per
    unit length, so segments are scaled by the length of the un-normalised direction ``ray_norm``.
    """
    deltas = jnp.diff(t, axis=-1, append=jnp.full_like(t[..., :1], far)) * ray_norm[..., None]
    optical = sigma * jnp.maximum(deltas, 0.0)
    alpha = 1.0 - jnp.exp(-optical)
    transmittance = jnp.exp(-(jnp.cumsum(optical, axis=-1) - optical))  # exclusive: light reaching sample i
    weights = alpha * transmittance
    acc = jnp.sum(weights, axis=-1)
    color = jnp.sum(weights[..., None] * rgb, axis=-2) + (1.0 - acc)[..., None] * background
    depth = jnp.sum(weights * t, axis=-1) + (1.0 - acc) * far
    return {"rgb": color, "depth": depth, "acc": acc, "weights": weights}


def render_rays(coarse: Field, fine: Field, rays: jax.Array, *, near: float, far: float, num_coarse: int, num_fine: int,
                background: float, rng: jax.Array | None = None) -> dict:
    """Renders rays [B, 6] with stratified coarse samples and inverse-CDF fine samples.

    Returns ``rgb``/``depth``/``acc`` of the fine pass and ``rgb_coarse``/``depth_coarse``/
    ``acc_coarse``. ``rng`` (None = deterministic) jitters both sample sets.
    """
    origins, directions = rays[..., :3], rays[..., 3:6]
    ray_norm = jnp.linalg.norm(directions, axis=-1)
    viewdirs = directions / jnp.maximum(ray_norm, 1e-9)[..., None]
    coarse_rng, fine_rng = (None, None) if rng is None else jax.random.split(rng)

    t_coarse, edges = stratified_samples(near, far, num_coarse, origins.shape[:-1], coarse_rng)
    points = origins[..., None, :] + t_coarse[..., None] * directions[..., None, :]
    rgb, sigma = coarse(points, viewdirs)
    coarse_out = volume_render(rgb, sigma, t_coarse, ray_norm, far, background)

    t_fine = sample_pdf(edges, coarse_out["weights"], num_fine, fine_rng)
    t_all = jnp.sort(jnp.concatenate([jax.lax.stop_gradient(t_coarse), t_fine], axis=-1), axis=-1)
    points = origins[..., None, :] + t_all[..., None] * directions[..., None, :]
    rgb, sigma = fine(points, viewdirs)
    fine_out = volume_render(rgb, sigma, t_all, ray_norm, far, background)
    return {
        "rgb": fine_out["rgb"], "depth": fine_out["depth"], "acc": fine_out["acc"],
        "rgb_coarse": coarse_out["rgb"], "depth_coarse": coarse_out["depth"], "acc_coarse": coarse_out["acc"],
    }


class NeRFField(nn.Module):
    """F(x, d) -> (rgb, sigma): a ReLU trunk on encoded positions gives density; a feature of it
    plus the encoded view direction gives colour (so density cannot depend on the view)."""

    num_layers: int
    width: int
    pos_frequencies: int
    dir_frequencies: int
    dtype: Any
    param_dtype: Any

    @nn.compact
    def __call__(self, points: jax.Array, viewdirs: jax.Array) -> tuple[jax.Array, jax.Array]:
        lead = points.shape[:-1]  # [B, N]
        dense = lambda features, axes, name: logical_dense(features, axes, dtype=self.dtype, param_dtype=self.param_dtype, name=name)
        # one 2-D matmul per layer over all samples (XLA:CPU runs the flattened backward faster)
        h = positional_encoding(points.reshape(-1, 3), self.pos_frequencies).astype(self.dtype)
        for i in range(self.num_layers):
            h = nn.relu(dense(self.width, ("embed", "mlp"), f"trunk_{i}")(h))
        # softplus keeps a gradient everywhere; the -1 bias starts the field nearly empty
        sigma = nn.softplus(dense(1, ("mlp", None), "sigma")(h)[:, 0].astype(jnp.float32) - 1.0)
        feature = dense(self.width, ("mlp", "embed"), "feature")(h)
        dirs = positional_encoding(viewdirs, self.dir_frequencies).astype(self.dtype)
        dirs = jnp.broadcast_to(dirs[..., None, :], lead + dirs.shape[-1:]).reshape(-1, dirs.shape[-1])
        h = nn.relu(dense(self.width // 2, ("embed", "mlp"), "color_hidden")(jnp.concatenate([feature, dirs], axis=-1)))
        # a sigmoid widened by 0.1 % so pure 0 and 1 colours are reachable with finite logits
        rgb = jax.nn.sigmoid(dense(3, ("mlp", None), "rgb")(h).astype(jnp.float32)) * 1.002 - 0.001
        return rgb.reshape(lead + (3,)), sigma.reshape(lead)


class NeRF(nn.Module):
    """Maps rays [B, 6] (origin, direction) to rendered colours: ``rgb`` (fine) and ``rgb_coarse``
    [B, 3], plus ``depth``/``acc`` of both passes. Not deterministic: the samples are jittered
    with the ``dropout`` rng (the name the generic train step supplies)."""

    num_layers: int
    width: int
    pos_frequencies: int
    dir_frequencies: int
    num_coarse: int
    num_fine: int
    near: float
    far: float
    background: float
    dtype: Any
    param_dtype: Any

    @staticmethod
    def config_problems(model, data) -> list[str]:
        """What is wrong with the ``model`` config section (``data`` for the input it sets), or []."""
        m = model
        checks = [
            (m.num_layers >= 1 and m.width >= 2, "model.num_layers must be >= 1 and model.width >= 2"),
            (m.pos_frequencies >= 0 and m.dir_frequencies >= 0, "model.pos_frequencies and model.dir_frequencies must be >= 0"),
            (m.num_coarse >= 2 and m.num_fine >= 1, "model.num_coarse must be >= 2 and model.num_fine >= 1"),
            (0.0 <= m.near < m.far, f"model.near and model.far must satisfy 0 <= near < far (got {m.near}, {m.far})"),
            (0.0 <= m.background <= 1.0, "model.background must be a grey level in [0, 1]"),
        ]
        return [message for ok, message in checks if not ok]

    def setup(self):
        field = lambda name: NeRFField(self.num_layers, self.width, self.pos_frequencies, self.dir_frequencies,
                                       dtype=self.dtype, param_dtype=self.param_dtype, name=name)
        self.coarse = field("coarse")
        self.fine = field("fine")

    def __call__(self, rays: jax.Array, deterministic: bool = True) -> dict:
        rng = None if deterministic else self.make_rng("dropout")
        return render_rays(self.coarse, self.fine, rays.astype(jnp.float32), near=self.near, far=self.far,
                           num_coarse=self.num_coarse, num_fine=self.num_fine, background=self.background, rng=rng)
