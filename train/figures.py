"""Task figures written into ``WORKDIR/plots``: sample grids and point clouds (matplotlib Figures, no pyplot)."""

from __future__ import annotations

import os

import numpy as np


def new_figure(**kwargs):
    """A matplotlib Figure outside pyplot: writing PNGs never switches the caller's backend
    (a notebook keeps its inline plots) and never leaks figures into pyplot's registry."""
    from matplotlib.figure import Figure

    return Figure(**kwargs)


def _save(fig, path: str) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fig.savefig(path)
    return path


def image_grid(images: np.ndarray, path: str, *, columns: int = 8, title: str = "") -> str:
    """``images`` [N, H, W, C] in [0, 1] tiled into one PNG (grey for C=1)."""
    images = np.clip(np.asarray(images, np.float32), 0.0, 1.0)
    n, h, w, c = images.shape
    rows = -(-n // columns)
    canvas = np.ones((rows * (h + 1) + 1, columns * (w + 1) + 1, c), np.float32)
    for i, image in enumerate(images):
        r, k = divmod(i, columns)
        canvas[1 + r * (h + 1) : 1 + r * (h + 1) + h, 1 + k * (w + 1) : 1 + k * (w + 1) + w] = image
    fig = new_figure(figsize=(columns * 0.6 + 0.4, rows * 0.6 + 0.6), dpi=110)
    ax = fig.subplots()
    ax.imshow(canvas[..., 0] if c == 1 else canvas, cmap="gray" if c == 1 else None, vmin=0, vmax=1, interpolation="nearest")
    ax.axis("off")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def point_cloud(samples: np.ndarray, centers: np.ndarray, std: float, path: str, *, title: str = "") -> str:
    """2-D samples over the modes they should cover (circles of 3 std around each centre)."""
    from matplotlib.patches import Circle

    fig = new_figure(figsize=(4.8, 4.8), dpi=110)
    ax = fig.subplots()
    ax.scatter(samples[:, 0], samples[:, 1], s=2, alpha=0.4, label="generated")
    for x, y in centers:
        ax.add_patch(Circle((x, y), 3 * std, fill=False, color="red", linewidth=1))
    ax.scatter(centers[:, 0], centers[:, 1], marker="x", color="red", label="modes (3 std circles)")
    limit = 1.4 * float(np.abs(centers).max())
    ax.set_xlim(-limit, limit)
    ax.set_ylim(-limit, limit)
    ax.set_aspect("equal")
    ax.legend(loc="upper right", fontsize=7)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return _save(fig, path)
