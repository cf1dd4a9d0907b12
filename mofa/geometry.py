"""Geometry shared by evaluation, scan scoring and model conversion: similarity
alignment (Umeyama) and closest points on triangle meshes.

`similarity_transform` and `apply_similarity` take numpy arrays (computed in
float64, for offline conversion and scoring) or JAX arrays (traceable, for
metrics inside jit), with any leading batch dimensions.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from scipy.spatial import cKDTree


def _array_module(*arrays):
    return jnp if any(isinstance(a, jax.Array) for a in arrays) else np


def similarity_transform(source, target, weights=None, with_scale: bool = True) -> tuple:
    """Umeyama (1991): (scale (...,), rotation (..., 3, 3), translation (..., 3)) such that
    `scale * rotation @ source + translation` is closest to `target` (..., N, 3) in the
    (weighted) least-squares sense; never a reflection."""
    xp = _array_module(source, target, weights)
    if xp is np:
        source, target = np.asarray(source, np.float64), np.asarray(target, np.float64)
    w = xp.ones(source.shape[:-1]) if weights is None else xp.broadcast_to(
        xp.asarray(weights), source.shape[:-1])
    w = w / xp.sum(w, -1, keepdims=True)
    mu_s = xp.sum(w[..., None] * source, -2, keepdims=True)
    mu_t = xp.sum(w[..., None] * target, -2, keepdims=True)
    s, t = source - mu_s, target - mu_t
    cov = xp.einsum("...n,...ni,...nj->...ij", w, t, s)
    u, d, vt = xp.linalg.svd(cov)
    det = xp.sign(xp.linalg.det(u @ vt))
    fix = xp.concatenate([xp.ones_like(d[..., :-1]), det[..., None]], -1)
    rotation = u @ (fix[..., :, None] * vt)
    if with_scale:
        variance = xp.sum(w * xp.sum(s * s, -1), -1)
        scale = xp.sum(d * fix, -1) / xp.maximum(variance, 1e-12)
    else:
        scale = xp.ones(d.shape[:-1], d.dtype)
    translation = mu_t[..., 0, :] - scale[..., None] * xp.einsum("...ij,...j->...i", rotation,
                                                                 mu_s[..., 0, :])
    return scale, rotation, translation


def apply_similarity(points, scale, rotation, translation):
    """`scale * rotation @ points + translation` for points (..., N, 3)."""
    xp = _array_module(points, scale, rotation, translation)
    scale = xp.asarray(scale)
    return (scale[..., None, None] * xp.einsum("...ij,...nj->...ni", rotation, points)
            + xp.asarray(translation)[..., None, :])


def similarity_align(source, target, weights=None):
    """The similarity transform of `source` (..., N, 3) closest to `target` (Umeyama)."""
    return apply_similarity(source, *similarity_transform(source, target, weights))


# --- closest points on triangle meshes --------------------------------------------


def closest_on_triangles(p: np.ndarray, a: np.ndarray, b: np.ndarray,
                         c: np.ndarray) -> np.ndarray:
    """Barycentric coordinates (..., 3) of the closest points to `p` on triangles
    (a, b, c), all (..., 3) (broadcast).

    Ericson, Real-Time Collision Detection 5.1.5: the Voronoi region of p (vertex,
    edge or face) picks the closest feature; np.select keeps the order of the
    early returns there.
    """
    p, a, b, c = np.broadcast_arrays(*(np.asarray(x, np.float64) for x in (p, a, b, c)))
    ab, ac = b - a, c - a
    dot = lambda u, v: np.sum(u * v, -1)  # noqa: E731
    ap, bp, cp = p - a, p - b, p - c
    d1, d2 = dot(ab, ap), dot(ac, ap)
    d3, d4 = dot(ab, bp), dot(ac, bp)
    d5, d6 = dot(ab, cp), dot(ac, cp)
    va = d3 * d6 - d5 * d4
    vb = d5 * d2 - d1 * d6
    vc = d1 * d4 - d3 * d2
    tiny = 1e-30
    safe = lambda x: np.where(np.abs(x) > tiny, x, tiny)  # noqa: E731
    v_ab = d1 / safe(d1 - d3)
    w_ac = d2 / safe(d2 - d6)
    w_bc = (d4 - d3) / safe((d4 - d3) + (d5 - d6))
    den = safe(va + vb + vc)
    v_in, w_in = vb / den, vc / den
    one, zero = np.ones_like(d1), np.zeros_like(d1)
    conds = [
        (d1 <= 0) & (d2 <= 0),
        (d3 >= 0) & (d4 <= d3),
        (vc <= 0) & (d1 >= 0) & (d3 <= 0),
        (d6 >= 0) & (d5 <= d6),
        (vb <= 0) & (d2 >= 0) & (d6 <= 0),
        (va <= 0) & (d4 - d3 >= 0) & (d5 - d6 >= 0),
    ]
    u = np.select(conds, [one, zero, 1 - v_ab, zero, 1 - w_ac, zero], 1 - v_in - w_in)
    v = np.select(conds, [zero, one, v_ab, zero, zero, 1 - w_bc], v_in)
    w = np.select(conds, [zero, zero, zero, one, w_ac, w_bc], w_in)
    return np.stack([u, v, w], axis=-1)


class Closest(NamedTuple):
    """Closest surface points of N query points on a triangle mesh."""

    triangle: np.ndarray  # (N,) triangle index
    barycentric: np.ndarray  # (N, 3) within that triangle
    point: np.ndarray  # (N, 3)
    distance: np.ndarray  # (N,)


def closest_points_on_mesh(points, vertices, triangles, candidates: int = 16) -> Closest:
    """The closest surface point of each of `points` (N, 3) on a triangle mesh.

    Exact point-triangle distances to the `candidates` triangles with the nearest
    centroids (a KD-tree): exact unless triangles are much larger than their spacing
    (not so for face meshes and scans). Memory is bounded on large scans.
    """
    points = np.asarray(points, np.float64)
    corners = np.asarray(vertices, np.float64)[np.asarray(triangles, np.int64)]  # (T, 3, 3)
    k = int(min(candidates, len(corners)))
    _, nearest = cKDTree(corners.mean(1)).query(points, k=k)
    nearest = nearest.reshape(len(points), k)
    triangle = np.empty(len(points), np.int64)
    barycentric = np.empty((len(points), 3))
    for start in range(0, len(points), 8192):
        part = slice(start, start + 8192)
        t = corners[nearest[part]]  # (n, k, 3, 3)
        bary = closest_on_triangles(points[part, None], t[..., 0, :], t[..., 1, :],
                                    t[..., 2, :])
        q = np.einsum("nkc,nkcd->nkd", bary, t)
        best = np.argmin(np.linalg.norm(q - points[part, None], axis=-1), -1)
        rows = np.arange(len(best))
        triangle[part], barycentric[part] = nearest[part][rows, best], bary[rows, best]
    point = np.einsum("nc,ncd->nd", barycentric, corners[triangle])
    return Closest(triangle, barycentric, point, np.linalg.norm(point - points, axis=-1))
