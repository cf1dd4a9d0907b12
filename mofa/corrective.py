"""The multi-level face model: a learned corrective space on top of the 3DMM.

Tewari et al. 2018 ("Self-supervised multi-level face model learning for
monocular reconstruction at over 250 Hz"): besides the 3DMM code the encoder
emits corrective shape and albedo coefficients; per-vertex corrective bases,
learned jointly with the encoder from images alone, add to the model's shape
(mm, model space, before pose) and albedo. The bases live in the encoder's
params under "corrective" (`CorrectiveSpace`, zero at init, so the first
renders are exactly the 3DMM's); a zero-initialized linear map can not move
off zero bases, so the coefficient head starts small but non-zero instead.

Regularizers, on the per-image corrections (B, V, 3):
  * smoothness: squared uniform graph Laplacian over the mesh edges;
  * magnitude: mean squared correction (mm^2 for shape);
  * symmetry: distance to the left/right mirror of the correction (the mirror
    partner of each vertex found by KD-tree on the mirrored mean shape);
  * identity consistency: spread of identity + corrective-shape codes among
    images of the same person (`batch["person_id"]`).
"""

from __future__ import annotations

from typing import Optional

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from mofa import facemodel, render
from mofa.render import camera as camera_lib

# One unit of a basis parameter times one unit of coefficient moves a vertex by
# this much: Adam moves every parameter by about the learning rate per step, so
# the scale sets how fast the correction can grow.
SHAPE_SCALE_MM = 10.0
ALBEDO_SCALE = 0.1


class CorrectiveSpace(nn.Module):
    """The learned corrective bases: {"shape": (Ks, V, 3), "albedo": (Ka, V, 3)}, zero at init."""

    shape_dim: int
    albedo_dim: int
    num_vertices: int

    @nn.compact
    def __call__(self) -> dict:
        zeros = nn.initializers.zeros_init()
        return {"shape": self.param("shape", zeros, (self.shape_dim, self.num_vertices, 3)),
                "albedo": self.param("albedo", zeros, (self.albedo_dim, self.num_vertices, 3))}


def corrections(space: dict, coefficients: dict) -> tuple[jax.Array, jax.Array]:
    """Per-image shape (mm) and albedo corrections (B, V, 3) from coefficients (B, K)."""
    shape = SHAPE_SCALE_MM * facemodel.linear_combination(space["shape"], coefficients["shape"])
    albedo = ALBEDO_SCALE * facemodel.linear_combination(space["albedo"], coefficients["albedo"])
    return shape, albedo


def apply(model: facemodel.FaceModel, code, space: Optional[dict],
          coefficients: Optional[dict]) -> tuple[jax.Array, jax.Array]:
    """Camera-space vertices and albedo (B, V, 3) of the 3DMM code plus its corrections."""
    vertices_camera, albedo = render.face_geometry(model, code)
    if space is None:
        return vertices_camera, albedo
    shape_delta, albedo_delta = corrections(space, coefficients)
    # The correction lives in model space: rotate it with the face (no translation).
    rotation = camera_lib.euler_to_matrix(code.rotation)
    shape_delta = jnp.einsum("...ij,...vj->...vi", rotation, shape_delta)
    return vertices_camera + shape_delta, albedo + albedo_delta


def render_corrected(model: facemodel.FaceModel, code, camera: render.Camera,
                     space: Optional[dict], coefficients: Optional[dict],
                     background=None) -> render.RenderOutput:
    """`render.render_face` of the corrected face (the plain one when `space` is None)."""
    if space is None:
        return render.render_face(model, code, camera, background=background)
    code.validate(model)
    vertices_camera, albedo = apply(model, code, space, coefficients)
    return render.render_mesh(vertices_camera, albedo, model.triangles, camera,
                              code.illumination, background=background,
                              landmark_indices=model.landmark_indices,
                              vertex_weight=model.face_mask)


# --- mesh operators -----------------------------------------------------------


@flax.struct.dataclass
class MeshOperators:
    """Index arrays the regularizers need (built on the host, replicated like the model)."""

    edges: jax.Array  # (E, 2) int32, each undirected mesh edge once
    degree: jax.Array  # (V,) float32 number of neighbours
    mirror: Optional[jax.Array] = None  # (V,) int32 each vertex's left/right mirror partner


def mesh_operators(model: facemodel.FaceModel, symmetric: bool = True,
                   max_mirror_distance_mm: float = 1.0) -> MeshOperators:
    """Edges, degrees and (`symmetric`) the mirror map of `model`, whose mean shape
    must then be left/right symmetric."""
    from scipy.spatial import cKDTree

    triangles = np.asarray(model.triangles)
    pairs = np.concatenate([triangles[:, [0, 1]], triangles[:, [1, 2]], triangles[:, [2, 0]]])
    edges = np.unique(np.sort(pairs, axis=1), axis=0)
    degree = np.bincount(edges.ravel(), minlength=model.num_vertices).astype(np.float32)
    operators = MeshOperators(edges=jnp.asarray(edges, jnp.int32),
                              degree=jnp.asarray(np.maximum(degree, 1.0)))
    if not symmetric:
        return operators
    mean = np.asarray(model.mean_shape)
    distance, mirror = cKDTree(mean).query(mean * np.array([-1.0, 1.0, 1.0]))
    if distance.max() > max_mirror_distance_mm:
        raise ValueError(
            f"face model '{model.name}' is not left/right symmetric: a mirrored vertex is "
            f"{distance.max():.2f} mm from the nearest vertex (max {max_mirror_distance_mm} mm); "
            "set the symmetry weights to 0 for this model")
    return operators.replace(mirror=jnp.asarray(mirror, jnp.int32))


# --- regularizers -------------------------------------------------------------


def mesh_laplacian(field: jax.Array, ops: MeshOperators) -> jax.Array:
    """Uniform graph Laplacian x_i - mean of the neighbours x_j, of a field (..., V, C)."""
    i, j = ops.edges[:, 0], ops.edges[:, 1]
    summed = jnp.zeros_like(field).at[..., i, :].add(field[..., j, :])
    summed = summed.at[..., j, :].add(field[..., i, :])
    return field - summed / ops.degree[:, None]


def smoothness(field: jax.Array, ops: MeshOperators) -> jax.Array:
    """Mean squared Laplacian (..., V, C) -> batch mean of the per-vertex mean."""
    return jnp.mean(jnp.sum(mesh_laplacian(field, ops) ** 2, -1))


def magnitude(field: jax.Array) -> jax.Array:
    """Mean squared per-vertex correction."""
    return jnp.mean(jnp.sum(field**2, -1))


def symmetry(field: jax.Array, ops: MeshOperators, mirror_sign: jax.Array) -> jax.Array:
    """Mean squared distance of a field (..., V, C) to its mirror image.

    mirror_sign (C,): how a value changes under the mirror, (-1, 1, 1) for a
    displacement (x flips), (1, 1, 1) for albedo.
    """
    mirrored = field[..., ops.mirror, :] * mirror_sign
    return jnp.mean(jnp.sum((field - mirrored) ** 2, -1))


SHAPE_MIRROR = np.array([-1.0, 1.0, 1.0], np.float32)  # numpy: importing must not start a backend
ALBEDO_MIRROR = np.ones(3, np.float32)


def identity_consistency(codes: jax.Array, person_id: jax.Array) -> jax.Array:
    """Mean squared distance between the codes (B, K) of different images of one person.

    It is twice the within-person variance; 0 when no two images share a person.
    """
    same = (person_id[:, None] == person_id[None, :]) & ~jnp.eye(codes.shape[0], dtype=bool)
    squared = jnp.sum((codes[:, None] - codes[None, :]) ** 2, -1)
    return jnp.sum(jnp.where(same, squared, 0.0)) / jnp.maximum(jnp.sum(same), 1)


def regularizers(space: dict, coefficients: dict, ops: MeshOperators) -> dict:
    """The corrective loss terms of a batch (named like their `config.loss` weights)."""
    shape, albedo = corrections(space, coefficients)
    terms = {
        "corrective_shape_smoothness": smoothness(shape, ops),
        "corrective_albedo_smoothness": smoothness(albedo, ops),
        "corrective_shape_magnitude": magnitude(shape),
        "corrective_albedo_magnitude": magnitude(albedo),
    }
    if ops.mirror is not None:
        terms["corrective_shape_symmetry"] = symmetry(shape, ops, SHAPE_MIRROR)
        terms["corrective_albedo_symmetry"] = symmetry(albedo, ops, ALBEDO_MIRROR)
    return terms
