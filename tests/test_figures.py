"""The library's PNG writers work without pyplot, so a notebook's inline backend is left alone."""

import os

import numpy as np


def test_writing_figures_leaves_the_matplotlib_backend_alone(tmp_path):
    import matplotlib

    from archlab.train.data.nerf_scene import plot_views
    from archlab.train.figures import image_grid, point_cloud
    from archlab.train.metrics import plot_loss_curves

    original = matplotlib.get_backend()
    matplotlib.use("svg")  # stands in for a notebook's inline backend: any switch to Agg would show
    before = matplotlib.get_backend()
    records = [{"step": s, "split": "train", "loss": 2.0 / s} for s in range(1, 6)] + [{"step": 5, "split": "eval", "loss": 0.5, "accuracy": 0.9}]
    paths = [
        plot_loss_curves(records, str(tmp_path / "loss.png")),
        image_grid(np.random.default_rng(0).random((6, 8, 8, 1)), str(tmp_path / "grid.png"), columns=3),
        point_cloud(np.zeros((10, 2)), np.ones((2, 2)), 0.1, str(tmp_path / "points.png")),
        plot_views(np.zeros((2, 4, 4, 3)), np.ones((2, 4, 4, 3)) * 0.5, np.full((2, 4, 4), 3.0), str(tmp_path / "views.png")),
    ]
    after = matplotlib.get_backend()
    matplotlib.use(original)
    assert after == before
    for path in paths:
        with open(path, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n", path
        assert os.path.getsize(path) > 1000
    import sys

    if "matplotlib.pyplot" in sys.modules:  # if anything imported pyplot, none of our figures are registered in it
        assert sys.modules["matplotlib.pyplot"].get_fignums() == []
