"""Pictures of reconstructions: shaded-geometry overlays, landmark dots, contact sheets,
learning curves. numpy / PIL / matplotlib on host arrays; nothing here is traced."""

from __future__ import annotations

import os

import numpy as np

from mofa import images

# A fixed key light for showing geometry (unit-ish direction from the upper left front).
GEOMETRY_LIGHT = np.array([0.3, 0.4, 0.85])
DETECTED = (40, 220, 40)  # landmarks given (detector / ground truth): green
FITTED = (230, 40, 40)  # landmarks of the reconstructed face: red


def geometry_shading(normals: np.ndarray) -> np.ndarray:
    """Grey shading (..., ) in [0.1, 0.9] of unit normals (..., 3) under `GEOMETRY_LIGHT`."""
    return np.clip(np.asarray(normals) @ GEOMETRY_LIGHT, 0.0, 1.0) * 0.8 + 0.1


def shaded_overlay(linear: np.ndarray, mask: np.ndarray, normals: np.ndarray) -> np.ndarray:
    """sRGB float (H, W, 3): the linear-RGB image with the shaded geometry blended in
    where the mesh covers it (mask (H, W))."""
    srgb = images.linear_to_srgb(np.asarray(linear))
    m = np.asarray(mask)[..., None]
    return m * (0.65 * geometry_shading(normals)[..., None] + 0.35 * srgb) + (1 - m) * srgb


def draw_landmarks(rgb8: np.ndarray, sets: list[tuple]) -> np.ndarray:
    """uint8 (H, W, 3) with dots drawn: `sets` of (points (N, 2) pixels, RGB colour)."""
    from PIL import Image, ImageDraw

    canvas = Image.fromarray(np.asarray(rgb8))
    draw = ImageDraw.Draw(canvas)
    r = max(1, min(canvas.size) // 128)
    for points, colour in sets:
        for x, y in np.asarray(points):
            draw.ellipse([x - r, y - r, x + r, y + r], fill=colour)
    return np.asarray(canvas)


def contact_sheet(batch: dict, out, max_rows: int = 8) -> np.ndarray:
    """Rows of input | reconstruction | shaded-geometry overlay | landmarks (sRGB float),
    from a batch (linear "image", "landmarks", "landmark_weight") and its `RenderOutput`."""
    n = min(max_rows, batch["image"].shape[0])
    inputs = np.asarray(batch["image"][:n])
    tiles = []
    for i in range(n):
        given = np.asarray(batch["landmarks"][i])[np.asarray(batch["landmark_weight"][i]) > 0]
        dots = draw_landmarks(images.to_uint8(images.linear_to_srgb(inputs[i])),
                              [(given, DETECTED), (np.asarray(out.landmarks[i]), FITTED)])
        tiles += [images.linear_to_srgb(inputs[i]),
                  images.linear_to_srgb(np.asarray(out.image[i])),
                  shaded_overlay(inputs[i], np.asarray(out.mask[i]), np.asarray(out.normals[i])),
                  dots.astype(np.float32) / 255.0]
    return images.grid(np.stack(tiles), columns=4)


def plot_curves(records: list[dict], keys: list[str], path: str, title: str = "") -> None:
    """Writes a PNG with one panel per metric key: value vs step (records as
    `metric_log.read_jsonl` gives them).

    A key's records without the key are skipped; a baseline dashed line marks its
    value at step 0 (the untrained encoder: the mean face) where there is one.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    present = [k for k in keys if any(k in r for r in records)]
    if not present:
        raise ValueError(f"none of {keys} is in the metric records")
    columns = min(3, len(present))
    rows = -(-len(present) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4 * columns, 2.8 * rows), squeeze=False)
    for ax, key in zip(axes.ravel(), present):
        points = sorted((r["step"], r[key]) for r in records if key in r)
        steps, values = zip(*points)
        ax.plot(steps, values, marker="o" if len(points) < 30 else None, ms=3)
        if steps[0] == 0:
            ax.axhline(values[0], color="gray", ls="--", lw=0.8)
        ax.set_title(key, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in axes.ravel()[len(present):]:
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
