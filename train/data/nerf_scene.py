"""The NeRF default data: a procedural scene of coloured analytic shapes, ray-cast exactly.

A few spheres and boxes on a slab, lit by one fixed directional light (Lambertian, so colour does
not depend on the view), in front of a constant background. Cameras sit on a sphere around the
origin, looking at it from seeded random directions; training and held-out views use different
seeds, so held-out views are poses never trained on. Ground truth is one ray through each pixel
centre, hit-tested analytically in numpy: deterministic and identical on every machine.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from archlab.train.data.dataset import Dataset
from archlab.train.data.pipeline import EvalBatches, array_stream
from archlab.train.errors import DataError
from archlab.train.figures import new_figure
from archlab.train.image_metrics import psnr

CAMERA_RADIUS = 4.0  # every shape lies within 1.5 of the origin: [near, far] = [2.5, 5.5] covers it
FIELD_OF_VIEW_DEGREES = 40.0
BACKGROUND = 1.0  # white, what the model composites behind its samples (model.background)
NUM_TRAIN_VIEWS = 64
NUM_HELD_OUT_VIEWS = 8
TRAIN_SEED, HELD_OUT_SEED = 1234, 5678
LIGHT = np.array([0.4, -0.3, 0.85]) / np.linalg.norm([0.4, -0.3, 0.85])
AMBIENT = 0.35


@dataclasses.dataclass(frozen=True)
class Sphere:
    center: tuple[float, float, float]
    radius: float
    color: tuple[float, float, float]


@dataclasses.dataclass(frozen=True)
class Box:  # axis-aligned
    lower: tuple[float, float, float]
    upper: tuple[float, float, float]
    color: tuple[float, float, float]


DEFAULT_SCENE = (
    Box((-0.9, -0.9, -0.75), (0.9, 0.9, -0.55), (0.85, 0.75, 0.35)),  # a yellow slab the shapes stand on
    Sphere((-0.4, -0.3, -0.1), 0.45, (0.9, 0.15, 0.15)),
    Sphere((0.45, 0.5, -0.25), 0.3, (0.2, 0.35, 0.9)),
    Box((0.05, -0.75, -0.55), (0.6, -0.2, 0.1), (0.2, 0.75, 0.3)),
    Box((-0.7, 0.3, -0.55), (-0.3, 0.7, 0.45), (0.8, 0.4, 0.85)),
)


def _hit_sphere(shape: Sphere, origins, directions):
    """(t [N], normals [N, 3]) of the nearest hit in front of the origin; t = inf on a miss."""
    oc = origins - np.asarray(shape.center)
    a = np.sum(directions * directions, -1)
    b = np.sum(oc * directions, -1)
    c = np.sum(oc * oc, -1) - shape.radius**2
    disc = b * b - a * c
    root = np.sqrt(np.maximum(disc, 0.0))
    t_near, t_far = (-b - root) / a, (-b + root) / a
    t = np.where(t_near > 1e-6, t_near, t_far)
    t = np.where((disc >= 0) & (t > 1e-6), t, np.inf)
    hit = origins + np.where(np.isfinite(t), t, 0.0)[:, None] * directions
    return t, (hit - np.asarray(shape.center)) / shape.radius


def _hit_box(shape: Box, origins, directions):
    """Slab test: (t [N], normals [N, 3]) of the entry point; t = inf on a miss."""
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = 1.0 / directions
        t0 = (np.asarray(shape.lower) - origins) * inv
        t1 = (np.asarray(shape.upper) - origins) * inv
    t_lo, t_hi = np.minimum(t0, t1), np.maximum(t0, t1)
    t_lo, t_hi = np.nan_to_num(t_lo, nan=-np.inf), np.nan_to_num(t_hi, nan=np.inf)
    t_enter, t_exit = t_lo.max(-1), t_hi.min(-1)
    t = np.where((t_enter <= t_exit) & (t_enter > 1e-6), t_enter, np.inf)
    axis = t_lo.argmax(-1)  # the slab entered last is the face hit
    normals = np.zeros_like(origins)
    normals[np.arange(len(origins)), axis] = -np.sign(directions[np.arange(len(origins)), axis])
    return t, normals


def ray_cast(rays: np.ndarray, scene=DEFAULT_SCENE, background: float = BACKGROUND) -> tuple[np.ndarray, np.ndarray]:
    """Exact colours and depths of rays [N, 6]: nearest hit, Lambertian shading; background
    colour and depth inf where a ray misses everything."""
    origins, directions = rays[:, :3].astype(np.float64), rays[:, 3:6].astype(np.float64)
    depth = np.full(len(rays), np.inf)
    color = np.full((len(rays), 3), float(background))
    for shape in scene:
        t, normals = (_hit_sphere if isinstance(shape, Sphere) else _hit_box)(shape, origins, directions)
        nearer = t < depth
        shade = AMBIENT + (1.0 - AMBIENT) * np.clip(normals @ LIGHT, 0.0, 1.0)
        color[nearer] = np.asarray(shape.color) * shade[nearer, None]
        depth = np.where(nearer, t, depth)
    return color.astype(np.float32), depth.astype(np.float32)


def look_at_poses(num_views: int, seed: int, radius: float = CAMERA_RADIUS) -> np.ndarray:
    """Camera-to-world matrices [V, 3, 4] on a sphere, looking at the origin, z up; azimuth
    uniform, elevation uniform in [10, 70] degrees (the scene is seen from above its slab)."""
    rng = np.random.default_rng(seed)
    azimuth = rng.uniform(0.0, 2 * np.pi, num_views)
    elevation = np.deg2rad(rng.uniform(10.0, 70.0, num_views))
    position = radius * np.stack([np.cos(elevation) * np.cos(azimuth), np.cos(elevation) * np.sin(azimuth), np.sin(elevation)], -1)
    forward = -position / np.linalg.norm(position, axis=-1, keepdims=True)
    right = np.cross(forward, [0.0, 0.0, 1.0])
    right /= np.linalg.norm(right, axis=-1, keepdims=True)
    up = np.cross(right, forward)
    # OpenGL convention: the camera looks down its -z axis, x right, y up
    return np.stack([right, up, -forward, position], axis=-1)


def camera_rays(poses: np.ndarray, size: int, fov_degrees: float = FIELD_OF_VIEW_DEGREES) -> np.ndarray:
    """Rays [V, size, size, 6] (origin, unit direction) through each pixel centre."""
    focal = 0.5 * size / np.tan(np.deg2rad(fov_degrees) / 2)
    pixel = np.arange(size) + 0.5 - size / 2
    x, y = np.meshgrid(pixel / focal, -pixel / focal)  # row index grows downwards
    camera_dirs = np.stack([x, y, -np.ones_like(x)], -1)  # [H, W, 3]
    directions = np.einsum("vij,hwj->vhwi", poses[:, :, :3], camera_dirs)
    directions /= np.linalg.norm(directions, axis=-1, keepdims=True)
    origins = np.broadcast_to(poses[:, None, None, :, 3], directions.shape)
    return np.concatenate([origins, directions], -1).astype(np.float32)


@dataclasses.dataclass(frozen=True)
class SceneViews:
    rays: np.ndarray  # [V, H, W, 6]
    images: np.ndarray  # [V, H, W, 3] in [0, 1]
    depths: np.ndarray  # [V, H, W], inf where the background shows


def render_views(num_views: int, seed: int, size: int) -> SceneViews:
    rays = camera_rays(look_at_poses(num_views, seed), size)
    color, depth = ray_cast(rays.reshape(-1, 6))
    return SceneViews(rays, color.reshape(rays.shape[:3] + (3,)), depth.reshape(rays.shape[:3]))


def build_nerf_dataset(config, shard: int, num_shards: int):
    """Train on random rays of the training views; evaluate on every ray of the held-out views."""
    t, d = config.train, config.data
    if d.path:
        raise DataError(f"nerf trains on the procedural scene only; data.path is not supported (got {d.path!r})")
    size = d.image_size or 32
    train, held_out = render_views(NUM_TRAIN_VIEWS, TRAIN_SEED, size), render_views(NUM_HELD_OUT_VIEWS, HELD_OUT_SEED, size)
    train_rays, train_rgb = train.rays.reshape(-1, 6), train.images.reshape(-1, 3)
    eval_rays = held_out.rays.reshape(-1, 6)
    # one-hot view of each held-out ray, so the evaluation can also report per-view PSNR
    view_onehot = np.repeat(np.eye(NUM_HELD_OUT_VIEWS, dtype=np.float32), size * size, axis=0)
    return Dataset(
        train=array_stream({"rays": train_rays, "rgb": train_rgb}, t.batch_size, config.seed, shard=shard, num_shards=num_shards,
                           workers=d.workers, prefetch=d.prefetch),
        eval_batches=EvalBatches.of_arrays({"rays": eval_rays, "rgb": held_out.images.reshape(-1, 3), "view_onehot": view_onehot},
                                           t.batch_size, t.eval_batches),
        example_input=train_rays[:1],
        source="procedural scene (train/data/nerf_scene.py)",
        description=f"{NUM_TRAIN_VIEWS} train / {NUM_HELD_OUT_VIEWS} held-out views of {size}x{size} "
                    f"({len(train_rays):,} / {len(eval_rays):,} rays)",
        held_out_name="held-out views",
        extras={"views": held_out.images, "rays": held_out.rays, "depths": held_out.depths, "image_shape": (size, size)},
    )


def plot_views(truth: np.ndarray, rendered: np.ndarray, depth: np.ndarray, path: str, *, depth_range=(2.5, 5.5), title: str = "") -> str:
    """Held-out views [V, H, W, 3]: ground truth over the NeRF render (titled with its PSNR) over its depth."""
    import os

    views = len(truth)
    fig = new_figure(figsize=(1.4 * views + 0.8, 4.9), dpi=110)
    axes = fig.subplots(3, views, squeeze=False)
    rendered = np.clip(rendered, 0.0, 1.0)
    for v in range(views):
        mse = float(np.mean((rendered[v] - truth[v]) ** 2))
        rows = ((truth[v], f"view {v}", {}), (rendered[v], f"{psnr(mse):.1f} dB", {}),
                (depth[v], "", dict(cmap="viridis_r", vmin=depth_range[0], vmax=depth_range[1])))
        for row, (image, label, style) in enumerate(rows):
            ax = axes[row, v]
            ax.imshow(image, interpolation="nearest", **style)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(label, fontsize=8)
    for row, name in enumerate(("ground truth", "NeRF (fine)", "NeRF depth")):
        axes[row, 0].set_ylabel(name, fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fig.savefig(path)
    return path
