"""Depth and image operators: back-projection, normals from depth, the image Laplacian,
the shading ratio (an image over its local mean)."""

from __future__ import annotations

import functools
from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from mofa import facemodel
from mofa.render import Camera



def backproject(depth: jax.Array, camera: Camera) -> jax.Array:
    """Depth maps (B, H, W) mm -> camera-space points (B, H, W, 3) of the pixel centres."""
    if depth.ndim != 3 or depth.shape[1:] != (camera.height, camera.width):
        raise ValueError(f"depth has shape {tuple(depth.shape)}, expected "
                         f"(B, {camera.height}, {camera.width}) like the camera")
    u = jnp.arange(camera.width, dtype=depth.dtype) + 0.5
    v = jnp.arange(camera.height, dtype=depth.dtype) + 0.5
    f = jnp.asarray(camera.focal, depth.dtype)
    cx, cy = camera.principal_point[0], camera.principal_point[1]
    x = (u[None, None, :] - cx) * depth / f
    y = -(v[None, :, None] - cy) * depth / f
    return jnp.stack([x, y, -depth], axis=-1)


def _tangent(points: jax.Array, mask: jax.Array, axis: int) -> jax.Array:
    """Central differences along `axis` (1: rows, 2: columns), one-sided where a
    neighbour is off the mask (so the silhouette's 0-depth never leaks in)."""
    def shift(x, offset):  # x[i + offset] with edge replication
        n = x.shape[axis]
        index = jnp.clip(jnp.arange(n) + offset, 0, n - 1)
        return jnp.take(x, index, axis=axis)

    n = points.shape[axis]
    inside = jnp.arange(n)
    forward_ok = (inside < n - 1).reshape((-1, 1) if axis == 1 else (1, -1))
    backward_ok = (inside > 0).reshape((-1, 1) if axis == 1 else (1, -1))
    w_forward = mask * shift(mask, 1) * forward_ok
    w_backward = mask * shift(mask, -1) * backward_ok
    forward = shift(points, 1) - points
    backward = points - shift(points, -1)
    total = jnp.maximum(w_forward + w_backward, 1.0)[..., None]
    return (forward * w_forward[..., None] + backward * w_backward[..., None]) / total


def normals_from_depth(depth: jax.Array, camera: Camera, mask: Optional[jax.Array] = None
                       ) -> jax.Array:
    """Unit camera-space normals (B, H, W, 3) facing the camera (+z), 0 off the mask.

    The pixels are back-projected with the pinhole camera; the normal is the cross
    product of the finite-difference tangents along the image rows and columns.
    """
    mask = jnp.ones_like(depth) if mask is None else mask.astype(depth.dtype)
    points = backproject(depth, camera)
    along_u = _tangent(points, mask, axis=2)  # ~ +x
    along_v = _tangent(points, mask, axis=1)  # ~ -y (image rows run down)
    # (-y) x (+x) = +z: the normal of a fronto-parallel surface faces the camera.
    normals = facemodel.safe_normalize(jnp.cross(along_v, along_u))
    return normals * mask[..., None]


def image_laplacian(x: jax.Array) -> jax.Array:
    """5-point Laplacian of (B, H, W), edge-replicated."""
    p = jnp.pad(x, ((0, 0), (1, 1), (1, 1)), mode="edge")
    return p[:, :-2, 1:-1] + p[:, 2:, 1:-1] + p[:, 1:-1, :-2] + p[:, 1:-1, 2:] - 4.0 * x


def _local_mean(x: jax.Array, weight: jax.Array, size: int = 5) -> jax.Array:
    """Weighted mean of x (B, H, W, C) over each size x size window (weights (B, H, W))."""
    w = weight[..., None]
    pool = functools.partial(nn.avg_pool, window_shape=(size, size), strides=(1, 1),
                             padding="SAME")
    return pool(x * w) / jnp.maximum(pool(jnp.broadcast_to(w, x.shape)), 1e-6)


def shading_ratio(image: jax.Array, weight: jax.Array) -> jax.Array:
    """(image - its local mean) / the local mean (5 x 5, weighted), on the weight's support.

    Where the albedo is smooth this is the high-frequency part of the shading alone:
    free of the albedo and of the light's strength and colour.
    """
    # Linear RGB of dark skin is ~0.05: the safe-division epsilon stays well below.
    local = _local_mean(image, weight)
    ratio = (image - local) / (local + 1e-3)
    return ratio * (weight[..., None] > 0)
