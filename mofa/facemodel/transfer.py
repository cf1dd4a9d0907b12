"""Geometric correspondence between face meshes, shared by the ICT, BFM and FLAME loaders.

Models that lack a space (ICT has no albedo, BFM/FLAME have no iBUG-68 table)
borrow it from a *source* model (by default the built-in one) by geometric
correspondence: the source mean shape is similarity-aligned to the target
(Umeyama on 68 landmarks when the target has them, else a trimmed similarity
ICP started at the nose tip), then every target vertex takes the barycentric
interpolation of the closest point on the source surface.

Also here: small mesh helpers every loader needs (outward orientation, a
smooth face mask falling off towards the mesh border, component
standardization).
"""

from __future__ import annotations

import logging

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree

from mofa import geometry

log = logging.getLogger(__name__)

# Linear-RGB skin tone used when no albedo source is available.
_FALLBACK_SKIN = np.array([0.55, 0.36, 0.27])


# ---------------------------------------------------------------------------
# Correspondence through closest points


def interpolate(values, triangles, tri_index, bary):
    """Barycentric interpolation of per-vertex `values` (..., Vs, C) at (tri_index, bary)."""
    values = np.asarray(values)
    corners = np.asarray(triangles)[tri_index]  # (N, 3)
    out = 0.0
    for c in range(3):
        out = out + bary[:, c, None] * values[..., corners[:, c], :]
    return out


# ---------------------------------------------------------------------------
# Component and mesh helpers


def standardize(fields, sort: bool = True, eps: float = 1e-12):
    """Unit-norm bases and stds from displacement fields (K, V, C) at one std.

    With sort=True the components are ordered by decreasing std (PCA spaces);
    keep sort=False where components are named (expressions).
    """
    fields = np.asarray(fields, np.float64)
    std = np.sqrt((fields ** 2).sum(axis=tuple(range(1, fields.ndim))))
    basis = fields / np.maximum(std, eps)[:, None, None]
    if sort:
        order = np.argsort(-std, kind="stable")
        basis, std = basis[order], std[order]
    return basis.astype(np.float32), std.astype(np.float32)


def vector_area(vertices, triangles) -> np.ndarray:
    """Sum of triangle normals (twice the vector area); points out of a CCW face surface."""
    c = np.asarray(vertices, np.float64)[np.asarray(triangles)]
    return np.cross(c[:, 1] - c[:, 0], c[:, 2] - c[:, 0]).sum(0)


def orient_outwards(vertices, triangles) -> np.ndarray:
    """Triangles reordered, if needed, so normals point out of the face (+z at the nose).

    Every model here looks at +z with the nose tip as its most forward point, so
    the triangles around the most forward vertex must have normals towards +z
    exactly when the winding is counter-clockwise seen from outside. This works
    for open face masks and closed heads alike (a whole-mesh vector area would
    vanish for the latter). Used to check each source's winding, not trust it.
    """
    v = np.asarray(vertices, np.float64)
    triangles = np.asarray(triangles)
    tip = v[np.argmax(v[:, 2])]
    radius = 0.05 * np.linalg.norm(np.ptp(v, axis=0))
    near = (np.linalg.norm(v - tip, axis=1) < radius)[triangles].any(1)
    if vector_area(v, triangles[near])[2] < 0:
        return triangles[:, [0, 2, 1]].copy()
    return triangles


def smoothstep(lo, hi, x):
    t = np.clip((np.asarray(x, np.float64) - lo) / (hi - lo), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def boundary_loops(triangles, num_vertices: int):
    """Vertex index arrays of each boundary loop (edges used by one triangle only)."""
    tri = np.asarray(triangles, np.int64)
    edges = np.sort(np.concatenate([tri[:, [0, 1]], tri[:, [1, 2]], tri[:, [2, 0]]]), axis=1)
    uniq, counts = np.unique(edges, axis=0, return_counts=True)
    border = uniq[counts == 1]
    if len(border) == 0:
        return []
    graph = coo_matrix((np.ones(len(border)), (border[:, 0], border[:, 1])),
                       shape=(num_vertices, num_vertices))
    _, labels = connected_components(graph, directed=False)
    on_border = np.unique(border)
    return [on_border[labels[on_border] == lab] for lab in np.unique(labels[on_border])]


def border_falloff_mask(vertices, triangles, width: float = 12.0) -> np.ndarray:
    """1 inside the face, falling smoothly to 0 at the mesh's outer border.

    The outer border is the boundary loop with the largest extent; inner holes
    (eyes, mouth) keep mask 1 around them, they are face skin.
    """
    vertices = np.asarray(vertices, np.float64)
    loops = boundary_loops(triangles, len(vertices))
    if not loops:
        return np.ones(len(vertices), np.float32)
    outer = max(loops, key=lambda idx: np.ptp(vertices[idx], axis=0).sum())
    dist, _ = cKDTree(vertices[outer]).query(vertices)
    return smoothstep(0.0, width, dist).astype(np.float32)


def srgb_to_linear(c):
    c = np.asarray(c, np.float64)
    return np.where(c <= 0.04045, c / 12.92, ((np.maximum(c, 0.04045) + 0.055) / 1.055) ** 2.4)


def srgb_to_linear_slope(c):
    """d linear / d sRGB at c: linearizes an sRGB-space PCA basis around its mean."""
    c = np.asarray(c, np.float64)
    return np.where(c <= 0.04045, 1.0 / 12.92,
                    2.4 / 1.055 * ((np.maximum(c, 0.04045) + 0.055) / 1.055) ** 1.4)


# ---------------------------------------------------------------------------
# The source model


def default_source():
    """The built-in model as correspondence source, or None where it cannot be loaded.

    Tests replace this function to use a synthetic source.
    """
    try:
        from mofa.facemodel import builtin
        return builtin.load()
    except Exception as err:  # the built-in model is optional for these loaders
        log.warning("built-in face model unavailable as correspondence source (%s)", err)
        return None


def _source_arrays(source):
    mean = np.asarray(source.mean_shape, np.float64)
    tri = np.asarray(source.triangles, np.int64)
    lmk = np.asarray(source.landmark_indices, np.int64)
    return mean, tri, lmk


def fallback_albedo(num_vertices: int):
    """A uniform skin tone with one brightness component, when no source exists."""
    mean = np.tile(_FALLBACK_SKIN, (num_vertices, 1))
    basis, std = standardize(0.15 * mean[None])
    return mean.astype(np.float32), basis, std


def transfer_albedo(target_vertices, target_landmarks_xyz, source_model):
    """Albedo space of `source_model` carried onto the target vertices.

    The source mean shape is similarity-aligned to the target through the 68
    landmarks (Umeyama), every target vertex takes the barycentric
    interpolation at its closest point on the aligned source surface, and each
    transferred component is re-standardized (interpolation changes norms).
    Returns (albedo_mean (V, 3), albedo_basis (K, V, 3), albedo_std (K,)), sorted
    by decreasing std.
    """
    src_mean, src_tri, src_lmk = _source_arrays(source_model)
    transform = geometry.similarity_transform(src_mean[src_lmk], target_landmarks_xyz)
    aligned = geometry.apply_similarity(src_mean, *transform)
    tri_index, bary, _, _ = geometry.closest_points_on_mesh(target_vertices, aligned, src_tri,
                                                          candidates=24)
    mean = interpolate(np.asarray(source_model.albedo_mean, np.float64), src_tri, tri_index, bary)
    fields = (np.asarray(source_model.albedo_std, np.float64)[:, None, None]
              * np.asarray(source_model.albedo_basis, np.float64))
    basis, std = standardize(interpolate(fields, src_tri, tri_index, bary))
    return np.clip(mean, 0.0, 1.0).astype(np.float32), basis, std


def _nose_tip(vertices):
    """The most forward vertex near the vertical midline (y up, z forward)."""
    v = np.asarray(vertices, np.float64)
    width = np.ptp(v[:, 0])
    central = np.abs(v[:, 0] - np.median(v[:, 0])) < 0.08 * width
    central &= np.abs(v[:, 1] - np.median(v[:, 1])) < 0.35 * np.ptp(v[:, 1])
    pool = np.flatnonzero(central) if central.any() else np.arange(len(v))
    return v[pool[np.argmax(v[pool, 2])]]


def _inliers(dist, keep):
    """Pairs on overlapping surface: a distance below 3 medians (and 2 mm) is kept.

    A fixed quantile would also drop the most informative pairs (the nose while
    still misaligned); the `keep` quantile only applies when the median-based
    rule would keep less.
    """
    limit = max(3.0 * float(np.median(dist)), 2.0)
    sel = dist <= limit
    return sel if sel.mean() >= min(keep, 0.5) else dist <= np.quantile(dist, keep)


def align_by_icp(source_vertices, source_triangles, target_vertices, target_triangles,
                 source_weights=None, iterations: int = 30, keep: float = 0.7,
                 max_points: int = 4000, scale: bool = True):
    """Similarity transform taking the source mesh onto the target mesh.

    Both are in model convention (mm, y up, z forward), so the start aligns the
    nose tips with identity rotation and scale. Each step is symmetric: source
    points (where source_weights > 0.5, e.g. the face) pair with their closest
    target surface points and target vertices with their closest source surface
    points, which cancels the bias of two different piecewise-linear samplings;
    dropping far pairs (`_inliers`) tolerates the meshes covering different parts
    of the head.
    """
    src_v = np.asarray(source_vertices, np.float64)
    src_t = np.asarray(source_triangles, np.int64)
    tgt_v = np.asarray(target_vertices, np.float64)
    tgt_t = np.asarray(target_triangles, np.int64)
    rng = np.random.default_rng(0)

    def subsample(n):
        return np.sort(rng.choice(n, max_points, replace=False)) if n > max_points else \
            np.arange(n)

    pool = np.flatnonzero(np.asarray(source_weights) > 0.5) if source_weights is not None \
        else np.arange(len(src_v))
    if len(pool) < 100:
        pool = np.arange(len(src_v))
    src_pts = src_v[pool[subsample(len(pool))]]
    tgt_pts = tgt_v[subsample(len(tgt_v))]
    transform = (1.0, np.eye(3), _nose_tip(tgt_v) - _nose_tip(src_v[pool]))
    for _ in range(iterations):
        # Source points -> target surface.
        tri, bary, _, d1 = geometry.closest_points_on_mesh(
            geometry.apply_similarity(src_pts, *transform), tgt_v, tgt_t, candidates=8)
        on_target = interpolate(tgt_v, tgt_t, tri, bary)
        # Target points -> source surface (found in the moved frame, used in the source frame).
        tri, bary, _, d2 = geometry.closest_points_on_mesh(
            tgt_pts, geometry.apply_similarity(src_v, *transform), src_t, candidates=8)
        on_source = interpolate(src_v, src_t, tri, bary)
        a = np.concatenate([src_pts, on_source])
        b = np.concatenate([on_target, tgt_pts])
        sel = np.concatenate([_inliers(d1, keep), _inliers(d2, keep)])
        transform = geometry.similarity_transform(a[sel], b[sel], with_scale=scale)
    return transform


def transfer_landmarks(target_vertices, target_triangles, source_model):
    """68 target vertex indices near the source model's landmarks (an approximation).

    The source face region is aligned to the target by rigid ICP (no landmark
    correspondences exist yet), then each aligned source landmark
    takes the nearest target vertex. Expect errors of a few millimetres where
    the two models disagree on anatomy; pass an explicit landmark file where
    the exact table matters.
    """
    src_mean, src_tri, src_lmk = _source_arrays(source_model)
    # Rigid: both models are in mm and mean faces differ little in size, while a
    # free scale shrinks towards the overlap when the meshes cover different areas.
    transform = align_by_icp(src_mean, src_tri, target_vertices, target_triangles,
                             source_weights=np.asarray(source_model.face_mask), scale=False)
    moved = geometry.apply_similarity(src_mean[src_lmk], *transform)
    _, idx = cKDTree(np.asarray(target_vertices, np.float64)).query(moved)
    return idx.astype(np.int32), transform


def transfer_vertex_field(target_vertices, transform, source_model, values):
    """Per-vertex source `values` (Vs, C) at the target vertices, and their distance (mm)."""
    src_mean, src_tri, _ = _source_arrays(source_model)
    aligned = geometry.apply_similarity(src_mean, *transform)
    tri_index, bary, _, dist = geometry.closest_points_on_mesh(target_vertices, aligned,
                                                             src_tri, candidates=24)
    return interpolate(np.asarray(values, np.float64), src_tri, tri_index, bary), dist


def albedo_from_source(target_vertices, target_landmarks_xyz, source_model=None):
    """transfer_albedo from `source_model` (default: the built-in model).

    Returns (mean, basis, std, transferred); without any source the albedo is a
    uniform skin tone (`fallback_albedo`) and transferred is False, so callers
    can skip caching a model that a later load would improve.
    """
    source = source_model if source_model is not None else default_source()
    if source is None:
        log.warning("no albedo source: using a uniform skin tone with one brightness component")
        return (*fallback_albedo(len(target_vertices)), False)
    return (*transfer_albedo(target_vertices, target_landmarks_xyz, source), True)
