"""Rasterization in two stages, as nvdiffrast and tf_mesh_renderer split it.

1. `rasterize` (visibility): the triangle id covering each pixel centre after a
   z-test, -1 on the background. Integer output, computed outside autodiff.
   Exact, with cost linear in covered pixels: every triangle's pixel bounding
   box is laid out in a sequence of candidate slots (prefix sum of box areas),
   processed in fixed-size chunks; each slot finds its triangle by a running
   max, tests its pixel against the triangle's edges and scatter-mins its
   depth into a z-buffer; the winning triangle id is scattered among the
   slots that tie the minimum.
   Scatters map to CPU and GPU well; on TPU they work but are slower.
2. `barycentrics` / `interpolate` (differentiable): gather the three corners
   of each pixel's triangle, recompute perspective-correct barycentrics from
   the current vertex positions and interpolate any per-vertex attribute. All
   gradients w.r.t. positions flow through the barycentrics (MoFA's scheme);
   silhouette edges carry no gradient.

Shapes: screen vertices (B, V, 3) as (x_pixel, y_pixel, depth) from
`camera.project`; triangles (T, 3) int32 shared across the batch.
"""

from __future__ import annotations

import functools

import flax.struct
import jax
import jax.numpy as jnp

from mofa.facemodel.model import components

_AREA_EPS = 1e-9


@flax.struct.dataclass
class Fragments:
    triangle_id: jax.Array  # (B, H, W) int32, -1 where no triangle covers the pixel centre


def _check_inputs(screen_vertices: jax.Array, triangles: jax.Array) -> None:
    if screen_vertices.ndim != 3 or screen_vertices.shape[-1] != 3:
        raise ValueError(f"screen_vertices have shape {tuple(screen_vertices.shape)}, "
                         "expected (B, V, 3) as (x_pixel, y_pixel, depth)")
    if triangles.ndim != 2 or triangles.shape[-1] != 3:
        raise ValueError(f"triangles have shape {tuple(triangles.shape)}, expected (T, 3)")
    if not jnp.issubdtype(triangles.dtype, jnp.integer):
        raise ValueError(f"triangles must be integer, got {triangles.dtype}")


def _edge(ax, ay, bx, by, px, py):
    """Twice the signed area of (a, b, p); negative for front faces (y points down)."""
    return (bx - ax) * (py - ay) - (by - ay) * (px - ax)


def _cumulative(op, values):
    """Inclusive prefix `op` (add or maximum) of a 1-D array. An associative scan: on CPU,
    lax.cumsum / lax.cummax lower to a windowed reduction that ran 3.5x slower."""
    return jax.lax.associative_scan(op, values)


def _rasterize_one(screen_vertices, triangles, height, width, chunk, cull_backfaces, min_depth):
    # Per corner k, the (T,) coordinates of every triangle's k-th vertex, in one gather:
    # the per-triangle work below is then elementwise over T (reductions over a size-3
    # axis ran 10x slower on CPU).
    x, y, z = (list(axis) for axis in screen_vertices.T[:, triangles.T])  # 3 x 3 x (T,)
    area = _edge(x[0], y[0], x[1], y[1], x[2], y[2])
    usable = functools.reduce(jnp.logical_and, [c > min_depth for c in z]
                              + [jnp.isfinite(c) for c in x + y + z])
    usable &= (area < -_AREA_EPS) if cull_backfaces else (jnp.abs(area) > _AREA_EPS)

    # Pixel-centre bounding boxes, clipped to the image.
    x_min, x_max = functools.reduce(jnp.minimum, x), functools.reduce(jnp.maximum, x)
    y_min, y_max = functools.reduce(jnp.minimum, y), functools.reduce(jnp.maximum, y)
    x_lo = jnp.clip(jnp.ceil(x_min - 0.5), 0, width).astype(jnp.int32)
    x_hi = jnp.clip(jnp.floor(x_max - 0.5), -1, width - 1).astype(jnp.int32)
    y_lo = jnp.clip(jnp.ceil(y_min - 0.5), 0, height).astype(jnp.int32)
    y_hi = jnp.clip(jnp.floor(y_max - 0.5), -1, height - 1).astype(jnp.int32)
    box_w = jnp.maximum(x_hi - x_lo + 1, 0)
    counts = jnp.where(usable, box_w * jnp.maximum(y_hi - y_lo + 1, 0), 0)
    ends = _cumulative(jnp.add, counts)
    starts = ends - counts
    total = ends[-1]
    triangle_index = jnp.arange(triangles.shape[0], dtype=jnp.int32)
    inv_area = 1.0 / jnp.where(jnp.abs(area) > _AREA_EPS, area, 1.0)
    # What each slot needs of its triangle, gathered once per slot: box placement (ints)
    # and corners, orientation and 1 / area (floats).
    boxes = jnp.stack([starts, box_w, x_lo, y_lo], -1)
    shapes = jnp.stack(x + y + z + [jnp.where(area < 0, -1.0, 1.0), inv_area], -1)

    def one_chunk(carry):
        offset, zbuffer, ids = carry
        slot = offset + jnp.arange(chunk, dtype=jnp.int32)
        # Each slot's triangle: mark every box's first slot in this chunk with its
        # index (and slot 0 with the box running into the chunk), then a running max
        # fills the boxes — cheaper than a binary search per slot.
        first = jnp.where((counts > 0) & (starts >= offset), starts - offset, chunk)
        tri = jnp.zeros((chunk,), jnp.int32).at[first].max(triangle_index, mode="drop")
        tri = tri.at[0].max(jnp.searchsorted(ends, offset, side="right").astype(jnp.int32))
        tri = jnp.minimum(_cumulative(jnp.maximum, tri), triangles.shape[0] - 1)
        box = boxes[tri].T
        local = slot - box[0]
        w = jnp.maximum(box[1], 1)
        # local >= 0 and w >= 1: truncating division, without floor division's sign fix-ups.
        px = box[2] + jax.lax.rem(local, w)
        py = box[3] + jax.lax.div(local, w)
        cx, cy = px.astype(jnp.float32) + 0.5, py.astype(jnp.float32) + 0.5

        shape = shapes[tri].T
        tx, ty, tz, sign, slot_inv_area = shape[0:3], shape[3:6], shape[6:9], shape[9], shape[10]
        e0 = _edge(tx[1], ty[1], tx[2], ty[2], cx, cy)
        e1 = _edge(tx[2], ty[2], tx[0], ty[0], cx, cy)
        e2 = _edge(tx[0], ty[0], tx[1], ty[1], cx, cy)
        inside = (e0 * sign >= 0) & (e1 * sign >= 0) & (e2 * sign >= 0) & (slot < total)
        # Inverse depth is affine in screen space, so this is the exact perspective depth.
        inv_depth = (e0 / tz[0] + e1 / tz[1] + e2 / tz[2]) * slot_inv_area
        inside &= inv_depth > 0
        depth = jnp.where(inside, 1.0 / jnp.where(inside, inv_depth, 1.0), jnp.inf)

        pixel = jnp.where(inside, py * width + px, 0)
        nearer = zbuffer.at[pixel].min(depth)
        wins = inside & (depth <= nearer[pixel])
        chunk_ids = jnp.full_like(ids, -1).at[pixel].max(jnp.where(wins, tri, -1))
        # Ties keep the larger id, as within one chunk, so the result is chunk-independent.
        ids = jnp.where(nearer < zbuffer, chunk_ids, jnp.maximum(ids, chunk_ids))
        return offset + chunk, nearer, ids

    _, _, ids = jax.lax.while_loop(
        lambda carry: carry[0] < total, one_chunk,
        (jnp.int32(0), jnp.full((height * width,), jnp.inf, jnp.float32),
         jnp.full((height * width,), -1, jnp.int32)))
    return ids.reshape(height, width)


@functools.partial(jax.jit, static_argnames=("height", "width", "slots_per_pixel",
                                             "cull_backfaces"))
def rasterize(screen_vertices: jax.Array, triangles: jax.Array, *, height: int, width: int,
              slots_per_pixel: float = 2.0, cull_backfaces: bool = True,
              min_depth: float = 1e-3) -> Fragments:
    """Visibility pass: per-pixel triangle id (B, H, W) after a z-test. Always exact.

    Candidates are processed in chunks of H * W * `slots_per_pixel` slots; a
    face filling the image needs about 1.2-2.2 slots per pixel, so one or two
    passes. The value trades memory against passes, never correctness.
    """
    _check_inputs(screen_vertices, triangles)
    chunk = max(int(height * width * slots_per_pixel), 1)
    screen_vertices = jax.lax.stop_gradient(screen_vertices.astype(jnp.float32))
    triangles = triangles.astype(jnp.int32)
    # lax.map (one image at a time) beats vmap here: the scatters stay per image
    # and each image runs only the passes it needs.
    ids = jax.lax.map(
        lambda sv: _rasterize_one(sv, triangles, height, width, chunk, cull_backfaces,
                                  min_depth), screen_vertices)
    return Fragments(triangle_id=ids)


def _safe_divide(num, den, eps=_AREA_EPS):
    return num / jnp.where(jnp.abs(den) > eps, den, jnp.where(den < 0, -eps, eps))


def _flat_corner_rows(triangles, triangle_id, num_vertices: int) -> list:
    """Per corner k, the row (B, H, W) of each pixel's k-th vertex in the batch's vertices
    as one (B * V, ...) table: a flat index needs no (batch, vertex) pairs."""
    tri = jnp.maximum(triangle_id, 0)
    offset = (jnp.arange(triangle_id.shape[0], dtype=tri.dtype) * num_vertices)[:, None, None]
    return [triangles[:, k][tri] + offset for k in range(3)]


def barycentrics(screen_vertices: jax.Array, triangles: jax.Array,
                 triangle_id: jax.Array) -> jax.Array:
    """Perspective-correct barycentrics (B, H, W, 3) of each pixel centre, differentiable.

    Zero on background pixels. Gradients w.r.t. `screen_vertices` are exact for
    the fixed visibility given by `triangle_id`.
    """
    _check_inputs(screen_vertices, triangles)
    batch, num_vertices, _ = screen_vertices.shape
    _, height, width = triangle_id.shape
    covered = triangle_id >= 0
    # One gather of the corners, corner-major (3, B, H, W, 3) from the batch's vertices
    # as one table: split along the corner axis, the gradient concatenates contiguous
    # blocks (pixel-major corners made it interleave them: the costliest op of a
    # profiled coarse fit step).
    corner_rows = jnp.stack(_flat_corner_rows(triangles, triangle_id, num_vertices))
    corners = screen_vertices.reshape(batch * num_vertices, 3)[corner_rows]
    cx = jnp.arange(width, dtype=jnp.float32)[None, None, :] + 0.5
    cy = jnp.arange(height, dtype=jnp.float32)[None, :, None] + 0.5
    # Per corner and coordinate as splits and explicit sums: slices' gradients pad and
    # a sum over a size-3 axis is slow on XLA's CPU backend.
    (x0, y0, z0), (x1, y1, z1), (x2, y2, z2) = (
        components(corner[0]) for corner in jnp.split(corners, 3, axis=0))
    # Screen-space weights divided by depth, renormalized: perspective-correct.
    weights = [_edge(x1, y1, x2, y2, cx, cy) / jnp.maximum(z0, 1e-6),
               _edge(x2, y2, x0, y0, cx, cy) / jnp.maximum(z1, 1e-6),
               _edge(x0, y0, x1, y1, cx, cy) / jnp.maximum(z2, 1e-6)]
    total = weights[0] + weights[1] + weights[2]
    return jnp.stack([jnp.where(covered, _safe_divide(weight, total), 0.0)
                      for weight in weights], -1)


def interpolate(attributes: jax.Array, triangles: jax.Array, triangle_id: jax.Array,
                bary: jax.Array) -> jax.Array:
    """Per-vertex attributes (B, V, C) -> per-pixel (B, H, W, C), zero on background."""
    if attributes.ndim != 3:
        raise ValueError(f"attributes have shape {tuple(attributes.shape)}, expected (B, V, C)")
    if bary.shape != triangle_id.shape + (3,):
        raise ValueError(f"barycentrics have shape {tuple(bary.shape)}, expected "
                         f"{tuple(triangle_id.shape) + (3,)}")
    return _interpolate(attributes, bary, triangles, triangle_id)


def _corner_values(attributes, triangles, triangle_id):
    """Each pixel's three corners' attributes (B, H, W, 3, C), one gather per image."""
    corner_ids = triangles[jnp.maximum(triangle_id, 0)]  # (B, H, W, 3)
    return jax.vmap(lambda a, ids: a[ids])(attributes, corner_ids)


@jax.custom_jvp
def _interpolate(attributes, bary, triangles, triangle_id):
    # Evaluated alone (no derivative taken): a gather per corner from the batch's
    # vertices as one flat table, weighted and summed elementwise. The contraction of
    # (B, H, W, 3, C) corner values below ran 1.5-4x slower forward on XLA's CPU backend
    # (4x at batch 64, 128 px), but it and its transpose make the faster gradient.
    batch, num_vertices, channels = attributes.shape
    table = attributes.reshape(batch * num_vertices, channels)
    rows = _flat_corner_rows(triangles, triangle_id, num_vertices)
    return sum(bary[..., k:k + 1] * table[rows[k]] for k in range(3))


def _interpolate_jvp(primals, tangents):
    # Differentiated: the batched gather and contraction, whose transposes (a scatter per
    # image, a contraction) ran 1.1-3x faster than those of the per-corner form. The
    # integer topology and ids have no tangent; a symbolic zero adds no term.
    attributes, bary, triangles, triangle_id = primals
    attributes_dot, bary_dot = tangents[:2]
    values = _corner_values(attributes, triangles, triangle_id)
    contract = functools.partial(jnp.einsum, "bhwk,bhwkc->bhwc")
    out = contract(bary, values)
    tangent = jnp.zeros_like(out)
    if not isinstance(bary_dot, jax.custom_derivatives.SymbolicZero):
        tangent = tangent + contract(bary_dot, values)
    if not isinstance(attributes_dot, jax.custom_derivatives.SymbolicZero):
        tangent = tangent + contract(bary, _corner_values(attributes_dot, triangles,
                                                          triangle_id))
    return out, tangent


_interpolate.defjvp(_interpolate_jvp, symbolic_zeros=True)
