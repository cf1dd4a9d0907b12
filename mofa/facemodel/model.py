"""The `FaceModel` pytree shared by every face-model source, and its pure functions.

Conventions (every loader converts to these):
  * units are millimetres; model space is right-handed with x to the subject's
    left (the viewer's right in a frontal view), y up and z out of the face
    towards the viewer;
  * codes are *standardized*: a coefficient of 1 is one prior standard
    deviation, so every code has the prior N(0, I). The geometry is
    `mean + sum_k (code_k * std_k) * basis_k`;
  * albedo is linear RGB in [0, 1];
  * landmarks are 68 vertex indices in the Multi-PIE / iBUG order.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Optional

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

NUM_LANDMARKS = 68

# Arrays stored in a converted `.npz` file, in the order of the dataclass.
_ARRAY_FIELDS = (
    "mean_shape",
    "identity_basis",
    "identity_std",
    "expression_basis",
    "expression_std",
    "albedo_mean",
    "albedo_basis",
    "albedo_std",
    "triangles",
    "landmark_indices",
    "face_mask",
    "uv_coords",
    "uv_triangles",
)
_STATIC_FIELDS = ("name", "license", "units", "expression_names", "expression_bounds")


@flax.struct.dataclass
class FaceModel:
    """A linear 3D morphable face model (shape, expression and albedo spaces)."""

    mean_shape: jax.Array  # (V, 3) float32, mm
    identity_basis: jax.Array  # (Ki, V, 3) unit-norm directions
    identity_std: jax.Array  # (Ki,) decreasing, mm
    expression_basis: jax.Array  # (Ke, V, 3)
    expression_std: jax.Array  # (Ke,)
    albedo_mean: jax.Array  # (V, 3) linear RGB in [0, 1]
    albedo_basis: jax.Array  # (Ka, V, 3)
    albedo_std: jax.Array  # (Ka,)
    triangles: jax.Array  # (T, 3) int32, counter-clockwise seen from outside
    landmark_indices: jax.Array  # (68,) int32 vertex indices, Multi-PIE order
    face_mask: jax.Array  # (V,) float32 in [0, 1]: 1 on skin of the face region
    uv_coords: Optional[jax.Array] = None  # (U, 2) in [0, 1], v up
    uv_triangles: Optional[jax.Array] = None  # (T, 3) int32 indices into uv_coords
    name: str = flax.struct.field(pytree_node=False, default="unnamed")
    license: str = flax.struct.field(pytree_node=False, default="unknown")
    units: str = flax.struct.field(pytree_node=False, default="mm")
    expression_names: tuple = flax.struct.field(pytree_node=False, default=())
    # (low, high) of every expression code where the expressions are blendshapes (ICT's
    # ARKit set: (0, 1), the code is the weight); () for PCA-like spaces with a N(0, 1)
    # prior. Fitting projects onto the box, the encoder's head maps into it, sampling
    # draws sparse weights inside it, and the prior is sparse (`losses.statistical_prior`).
    expression_bounds: tuple = flax.struct.field(pytree_node=False, default=())

    @property
    def blendshapes(self) -> bool:
        return bool(self.expression_bounds)

    @property
    def num_vertices(self) -> int:
        return self.mean_shape.shape[0]

    @property
    def num_triangles(self) -> int:
        return self.triangles.shape[0]

    @property
    def num_identity(self) -> int:
        return self.identity_std.shape[0]

    @property
    def num_expression(self) -> int:
        return self.expression_std.shape[0]

    @property
    def num_albedo(self) -> int:
        return self.albedo_std.shape[0]

    def validate(self, source: str = "") -> "FaceModel":
        """Checks shapes and index ranges; raises ValueError naming the field."""
        where = f" in {source}" if source else ""
        v = self.mean_shape.shape[0]

        def expect(field, shape):
            actual = tuple(getattr(self, field).shape)
            ok = len(actual) == len(shape) and all(
                e is None or e == a for e, a in zip(shape, actual))
            if not ok:
                shown = tuple("*" if e is None else e for e in shape)
                raise ValueError(
                    f"FaceModel field '{field}'{where} has shape {actual}, expected {shown}")

        expect("mean_shape", (None, 3))
        expect("identity_basis", (self.identity_std.shape[0], v, 3))
        expect("identity_std", (None,))
        expect("expression_basis", (self.expression_std.shape[0], v, 3))
        expect("expression_std", (None,))
        expect("albedo_mean", (v, 3))
        expect("albedo_basis", (self.albedo_std.shape[0], v, 3))
        expect("albedo_std", (None,))
        expect("triangles", (None, 3))
        expect("landmark_indices", (NUM_LANDMARKS,))
        expect("face_mask", (v,))
        tri = np.asarray(self.triangles)
        if tri.size and (tri.min() < 0 or tri.max() >= v):
            raise ValueError(f"FaceModel field 'triangles'{where} indexes outside [0, {v})")
        lmk = np.asarray(self.landmark_indices)
        if lmk.min() < 0 or lmk.max() >= v:
            raise ValueError(f"FaceModel field 'landmark_indices'{where} indexes outside [0, {v})")
        if (self.uv_coords is None) != (self.uv_triangles is None):
            raise ValueError(f"FaceModel{where}: uv_coords and uv_triangles must be given together")
        if self.uv_coords is not None:
            expect("uv_coords", (None, 2))
            expect("uv_triangles", (self.triangles.shape[0], 3))
        if self.expression_names and len(self.expression_names) != self.num_expression:
            raise ValueError(
                f"FaceModel{where}: {len(self.expression_names)} expression_names for "
                f"{self.num_expression} expression components")
        if self.expression_bounds and (len(self.expression_bounds) != 2
                                       or not self.expression_bounds[0] < self.expression_bounds[1]):
            raise ValueError(f"FaceModel{where}: expression_bounds must be (low, high) with "
                             f"low < high, got {self.expression_bounds}")
        return self


def _check_code(name: str, code: jax.Array, size: int) -> None:
    if code.ndim < 1 or code.shape[-1] != size:
        raise ValueError(f"{name} code has shape {tuple(code.shape)}, expected (..., {size})")


def _flat_combination(basis: jax.Array, weights: jax.Array) -> jax.Array:
    flat = weights @ basis.reshape(basis.shape[0], -1)
    return flat.reshape(weights.shape[:-1] + basis.shape[1:])


# Batch sizes whose weights' gradient contracts with a transposed copy of the basis
# (`_transposed_tangent`): measured on CPU (3 bases of 44-100 x 12k vertices, gradient
# of a loss), 2.1x faster at batch 2-8, 1.2x at 16-48, even at 64; at batch 1 the
# copy costs more than the product it speeds up (larger batches were not measured).
TRANSPOSED_TANGENT_BATCHES = range(2, 65)


@jax.custom_jvp
def _transposed_tangent(basis: jax.Array, weights: jax.Array) -> jax.Array:
    return _flat_combination(basis, weights)


def _transposed_tangent_jvp(primals, tangents):
    # The tangent contracts the weights' tangent with a (3V, K) copy of the basis, so
    # its transpose -- the weights' gradient -- reads the basis along K contiguously;
    # the product with the (K, 3V) basis itself ran 1.5-2x slower on XLA's CPU backend.
    # The barrier keeps XLA from folding the copy back into the product's dimensions.
    basis, weights = primals
    basis_dot, weights_dot = tangents
    out = _flat_combination(basis, weights)
    tangent = jnp.zeros_like(out)
    if type(weights_dot) is not jax.custom_derivatives.SymbolicZero:
        by_column = jax.lax.optimization_barrier(basis.reshape(basis.shape[0], -1).T)
        tangent = jax.lax.dot_general(weights_dot, by_column,
                                      (((weights_dot.ndim - 1,), (1,)), ((), ())))
        tangent = tangent.reshape(out.shape)
    if type(basis_dot) is not jax.custom_derivatives.SymbolicZero:
        tangent = tangent + _flat_combination(basis_dot, weights)
    return out, tangent


_transposed_tangent.defjvp(_transposed_tangent_jvp, symbolic_zeros=True)


def linear_combination(basis: jax.Array, weights: jax.Array) -> jax.Array:
    """sum_k weights[..., k] basis[k] for a (K, V, 3) basis, as one (..., K) @ (K, 3V)
    matmul: the einsum over "kvc" ran 1.5x slower forward and backward on CPU."""
    if int(np.prod(weights.shape[:-1])) in TRANSPOSED_TANGENT_BATCHES:
        return _transposed_tangent(basis, weights)
    return _flat_combination(basis, weights)


def shape(model: FaceModel, identity: jax.Array, expression: jax.Array) -> jax.Array:
    """Vertex positions (..., V, 3) in mm from standardized identity/expression codes."""
    _check_code("identity", identity, model.num_identity)
    _check_code("expression", expression, model.num_expression)
    return (model.mean_shape
            + linear_combination(model.identity_basis, identity * model.identity_std)
            + linear_combination(model.expression_basis, expression * model.expression_std))


def albedo(model: FaceModel, reflectance: jax.Array) -> jax.Array:
    """Per-vertex linear RGB albedo (..., V, 3) from a standardized reflectance code."""
    _check_code("reflectance", reflectance, model.num_albedo)
    return model.albedo_mean + linear_combination(model.albedo_basis,
                                                  reflectance * model.albedo_std)


def components(x: jax.Array) -> tuple:
    """The three components (...) of vectors (..., 3), as one split: the gradient of a
    split concatenates, where that of three slices pads each to (..., 3) and adds them
    (1.6x the vertex normals' gradient time on CPU)."""
    if x.shape[-1:] != (3,):
        raise ValueError(f"expected vectors of 3, got shape {x.shape}")
    return tuple(part.reshape(x.shape[:-1]) for part in jnp.split(x, 3, axis=-1))


def dot_last(a: jax.Array, b: jax.Array) -> jax.Array:
    """sum(a * b, -1) over a last axis of 3, from its components: XLA's CPU reduction over
    a size-3 axis ran 10-50x slower than the three products."""
    if a.shape[-1:] != (3,) or b.shape[-1:] != (3,):
        raise ValueError(f"dot_last takes vectors of 3, got shapes {a.shape} and {b.shape}")
    (ax, ay, az), (bx, by, bz) = components(a), components(b)
    return ax * bx + ay * by + az * bz


def safe_normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
    """x / |x| (last axis of 3) with finite values and gradients at x = 0 (rsqrt, not norm).

    Per component: broadcasting the scale over the last axis would make its gradient a
    sum over that size-3 axis, slow on XLA's CPU backend."""
    scale = jax.lax.rsqrt(dot_last(x, x) + eps)
    return jnp.stack([part * scale for part in components(x)], axis=-1)


def _cross(a: jax.Array, b: jax.Array) -> jax.Array:
    """a x b over the last axis, from its components: jnp.cross moves the axis first and
    back, two transposes that cost more than the products on CPU."""
    (ax, ay, az), (bx, by, bz) = components(a), components(b)
    return jnp.stack([ay * bz - az * by, az * bx - ax * bz, ax * by - ay * bx], -1)


def vertex_normals(vertices: jax.Array, triangles: jax.Array) -> jax.Array:
    """Area-weighted unit vertex normals (..., V, 3) of a counter-clockwise mesh."""
    if vertices.shape[-1] != 3:
        raise ValueError(f"vertices have shape {tuple(vertices.shape)}, expected (..., V, 3)")
    # The batch goes last, so each gather and scatter row carries every mesh of the
    # batch: 2x faster forward and backward on CPU than one scatter per mesh.
    batch_shape = vertices.shape[:-2]
    by_vertex = jnp.moveaxis(vertices.reshape((-1,) + vertices.shape[-2:]), 0, 1)  # (V, N, 3)
    corners = by_vertex[triangles]  # (T, 3, N, 3)
    face_normals = _cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0])
    summed = jnp.zeros_like(by_vertex)
    for corner in range(3):
        summed = summed.at[triangles[:, corner]].add(face_normals)
    summed = jnp.moveaxis(summed, 1, 0).reshape(batch_shape + vertices.shape[-2:])
    return safe_normalize(summed)


def sample_codes(model: FaceModel, key: jax.Array, batch_shape=(), scale: float = 1.0):
    """Draws (identity, expression, reflectance) codes from the N(0, I) prior."""
    k_id, k_ex, k_al = jax.random.split(key, 3)
    batch_shape = tuple(batch_shape)
    return (
        scale * jax.random.normal(k_id, batch_shape + (model.num_identity,)),
        scale * jax.random.normal(k_ex, batch_shape + (model.num_expression,)),
        scale * jax.random.normal(k_al, batch_shape + (model.num_albedo,)),
    )


# ---------------------------------------------------------------------------
# Converted-file cache: every loader writes one `.npz` so a second load is fast.


def save_npz(model: FaceModel, path: str) -> None:
    """Writes the model to a single compressed-free `.npz` (atomically)."""
    arrays = {}
    for field in _ARRAY_FIELDS:
        value = getattr(model, field)
        if value is not None:
            arrays[field] = np.asarray(value)
    meta = {f: getattr(model, f) for f in _STATIC_FIELDS}
    meta["expression_names"] = list(meta["expression_names"])
    meta["expression_bounds"] = list(meta["expression_bounds"])
    arrays["__meta__"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}.npz"
    np.savez(tmp, **arrays)
    os.replace(tmp, path)


def load_npz(path: str) -> FaceModel:
    """Reads a file written by `save_npz`."""
    try:
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(bytes(data["__meta__"]).decode())
            kwargs = {}
            for field in _ARRAY_FIELDS:
                if field in data:
                    arr = data[field]
                    if arr.dtype.kind == "f":
                        arr = arr.astype(np.float32)
                    elif arr.dtype.kind in "iu":
                        arr = arr.astype(np.int32)
                    kwargs[field] = jnp.asarray(arr)
    except (OSError, ValueError, KeyError) as err:
        raise ValueError(f"{path} is not a mofa face-model .npz file: {err}") from err
    meta["expression_names"] = tuple(meta.get("expression_names", ()))
    meta["expression_bounds"] = tuple(meta.get("expression_bounds", ()))
    return FaceModel(**kwargs, **meta).validate(path)


def from_numpy(**fields) -> FaceModel:
    """Builds a validated FaceModel from numpy arrays (float32/int32 on device)."""
    kwargs = {}
    for name, value in fields.items():
        if name in _ARRAY_FIELDS and value is not None:
            arr = np.asarray(value)
            arr = arr.astype(np.int32) if arr.dtype.kind in "iu" else arr.astype(np.float32)
            kwargs[name] = jnp.asarray(arr)
        else:
            kwargs[name] = value
    for name in ("expression_names", "expression_bounds"):
        if name in kwargs:
            kwargs[name] = tuple(kwargs[name])
    return FaceModel(**kwargs).validate(kwargs.get("name", ""))


def replace(model: FaceModel, **changes) -> FaceModel:
    return dataclasses.replace(model, **changes)


def decimate(model: FaceModel, cell_mm: float) -> FaceModel:
    """The model on a subset of its own vertices, for rendering where the full mesh puts
    several triangles in a pixel (a fit's low-resolution steps).

    Vertex clustering on the mean face: the vertices in each `cell_mm` cube become the
    one nearest their centroid, triangles are remapped to the kept vertices and those
    that collapse are dropped. Every kept vertex is an original one, so the bases,
    albedo and face mask are the original rows and any code means the same face; only
    the surface between the kept vertices is coarser. Landmarks move to their
    cluster's vertex; UVs are dropped. Runs in numpy, outside jit.
    """
    if not cell_mm > 0:
        raise ValueError(f"decimate: cell_mm must be > 0, got {cell_mm}")
    mean = np.asarray(model.mean_shape, np.float64)
    cells = np.floor(mean / cell_mm).astype(np.int64)
    _, cluster = np.unique(cells, axis=0, return_inverse=True)
    cluster = cluster.reshape(-1)
    count = np.bincount(cluster)
    centroid = np.zeros((len(count), 3))
    np.add.at(centroid, cluster, mean)
    centroid /= count[:, None]
    # Per cluster, its vertex nearest the centroid: sort by (cluster, distance).
    order = np.lexsort((np.sum((mean - centroid[cluster]) ** 2, -1), cluster))
    first = np.ones(len(order), bool)
    first[1:] = cluster[order][1:] != cluster[order][:-1]
    keep = order[first]  # keep[c] is cluster c's vertex
    triangles = cluster[np.asarray(model.triangles)]
    distinct = ((triangles[:, 0] != triangles[:, 1]) & (triangles[:, 1] != triangles[:, 2])
                & (triangles[:, 0] != triangles[:, 2]))
    triangles = triangles[distinct]
    _, unique = np.unique(np.sort(triangles, 1), axis=0, return_index=True)
    triangles = triangles[np.sort(unique)]
    return vertex_subset(model, keep, triangles, cluster[np.asarray(model.landmark_indices)])


def vertex_subset(model: FaceModel, keep, triangles, landmark_indices) -> FaceModel:
    """The model on its vertices `keep` (V',): every per-vertex field's own rows, with
    `triangles` (T', 3) and `landmark_indices` (68,) indexing the kept vertices. UVs
    are dropped."""
    rows = jnp.asarray(keep)
    return dataclasses.replace(
        model, mean_shape=model.mean_shape[rows], identity_basis=model.identity_basis[:, rows],
        expression_basis=model.expression_basis[:, rows], albedo_mean=model.albedo_mean[rows],
        albedo_basis=model.albedo_basis[:, rows], face_mask=model.face_mask[rows],
        triangles=jnp.asarray(triangles, jnp.int32),
        landmark_indices=jnp.asarray(landmark_indices, jnp.int32),
        uv_coords=None, uv_triangles=None).validate("vertex_subset")


# ---------------------------------------------------------------------------
# Similarity transforms in displacement spaces: the part of a shape change that
# an image cannot tell from head pose and camera distance.

SIMILARITY_NAMES = ("translate_x", "translate_y", "translate_z",
                    "rotate_x", "rotate_y", "rotate_z", "scale")


def similarity_fields(points, weights) -> np.ndarray:
    """The 7 infinitesimal similarity transforms of `points` (V, 3) as fields (7, V, 3).

    In the order of SIMILARITY_NAMES: unit translations along x, y, z; rotations
    omega x (p - c) about the x, y, z axes through c; and the uniform scale p - c,
    where c is the centroid of `points` weighted by `weights` (V,). To first order
    every rigid motion plus uniform scaling of the mesh is a combination of them.
    (Numpy, float64: this is for building and analysing models, not for training.)
    """
    p = np.asarray(points, np.float64)
    w = np.asarray(weights, np.float64)
    if p.ndim != 2 or p.shape[1] != 3 or w.shape != p.shape[:1]:
        raise ValueError(f"points {p.shape} and weights {w.shape}: expected (V, 3) and (V,)")
    q = p - (w @ p) / w.sum()
    out = np.zeros((7,) + p.shape)
    for axis in range(3):
        out[axis, :, axis] = 1.0
        omega = np.zeros(3)
        omega[axis] = 1.0
        out[3 + axis] = np.cross(omega, q)
    out[6] = q
    return out


def _similarity_projection(fields, points, weights):
    """Weighted least-squares coefficients (K, 7) of `fields` (K, V, 3) on the 7
    similarity fields, and those fields (7, V, 3)."""
    sim = similarity_fields(points, weights)
    w = np.asarray(weights, np.float64)
    gram = np.einsum("avc,v,bvc->ab", sim, w, sim)
    rhs = np.einsum("kvc,v,avc->ka", fields, w, sim)
    return np.linalg.lstsq(gram, rhs.T, rcond=1e-10)[0].T, sim


def remove_similarity(fields, points, weights) -> np.ndarray:
    """`fields` (K, V, 3) or (V, 3) minus their similarity-transform part.

    Each field f is projected on the 7 fields of `similarity_fields(points, weights)`
    by weighted least squares, minimising sum_v weights_v |f_v - s_v|^2 over
    similarity fields s; that best-fitting s is then subtracted at every vertex
    (also where the weight is 0). The result is orthogonal to every similarity
    field in the inner product <f, g> = sum_v weights_v f_v . g_v, so it is the
    shape change that is left after the best rigid motion and uniform scaling of
    the weighted region.
    """
    f = np.asarray(fields, np.float64)
    single = f.ndim == 2
    f = f[None] if single else f
    coeffs, sim = _similarity_projection(f, points, weights)
    out = f - np.einsum("ka,avc->kvc", coeffs, sim)
    return out[0] if single else out


def _weighted_energy(fields, std, weights):
    """sum_k std_k^2 sum_v weights_v |fields_kv|^2 (the weighted variance of the space)."""
    f = np.asarray(fields, np.float64)
    s = np.ones(f.shape[0]) if std is None else np.asarray(std, np.float64)
    per = np.einsum("kvc,v,kvc->k", f, np.asarray(weights, np.float64), f)
    return per * s * s


def similarity_share(fields, std, points, weights) -> float:
    """Fraction of a linear space's weighted variance that is similarity transform.

    The space is the random field sum_k z_k std_k fields_k with z ~ N(0, I); its
    expected weighted squared norm sum_v weights_v |d_v|^2 splits into the part
    that `remove_similarity` removes and the part it keeps. Returns removed / total.
    `std` may be None for fields already scaled to one standard deviation.
    """
    f = np.asarray(fields, np.float64)
    total = _weighted_energy(f, std, weights).sum()
    kept = _weighted_energy(remove_similarity(f, points, weights), std, weights).sum()
    return float(1.0 - kept / total)


def nonrigid_rms(fields, std, points, weights) -> float:
    """RMS per-vertex displacement (mm) of a random sample after removing its similarity part.

    For d = sum_k z_k std_k fields_k with z ~ N(0, I), the square root of the expected
    weighted mean sum_v weights_v |R(d)_v|^2 / sum_v weights_v, where R is
    `remove_similarity` (linear, so this is exact, not sampled). With weights = a
    model's face_mask this is the spread of face shapes that an image can see.
    """
    f = remove_similarity(np.asarray(fields, np.float64), points, weights)
    energy = _weighted_energy(f, std, weights).sum()
    return float(np.sqrt(energy / np.sum(np.asarray(weights, np.float64))))
