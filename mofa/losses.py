"""Training losses of the model-based face autoencoder.

All take batched arrays and return a scalar averaged over the batch:
  * `photometric_dense`: robust l2,1 (per-pixel colour distance, averaged over
    the rendered face region, optionally weighted by a skin mask);
  * `photometric_vertex`: MoFA's vertex-sampled term: the input image sampled
    bilinearly at each visible projected vertex against that vertex's shaded
    colour (gradients reach positions through the image gradient);
  * `landmark_alignment`: squared 2D distance of the 68 projected landmark
    vertices to detected ones, in units of the image size;
  * `statistical_prior`: squared norms of the standardized codes, per field;
  * `model_space`: InverseFaceNet's loss for supervised synthetic data — the
    distance of decoded posed geometry (mm) and albedo, not of raw parameters;
  * `parameter_space`: the plain parameter loss it is compared against.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from mofa import facemodel
from mofa.code import FaceCode
from mofa.render import camera as camera_lib

_EPS = 1e-8


def _robust_norm(x: jax.Array) -> jax.Array:
    """|x|_2 over the last axis with a finite gradient at 0."""
    return jnp.sqrt(jnp.sum(x * x, axis=-1) + _EPS)


def _weighted_mean(values: jax.Array, weights: jax.Array) -> jax.Array:
    """Per-example weighted mean over all but the batch axis, then the batch mean."""
    axes = tuple(range(1, values.ndim))
    per_example = jnp.sum(values * weights, axis=axes) / jnp.maximum(
        jnp.sum(weights, axis=axes), 1.0)
    return jnp.mean(per_example)


def photometric_dense(rendered: jax.Array, target: jax.Array, mask: jax.Array,
                      skin_mask: jax.Array | None = None) -> jax.Array:
    """Robust l2,1 distance (B, H, W, 3) over the rendered region `mask` (B, H, W)."""
    if rendered.shape != target.shape:
        raise ValueError(f"rendered image {tuple(rendered.shape)} and target "
                         f"{tuple(target.shape)} differ in shape")
    weights = mask if skin_mask is None else mask * skin_mask
    return _weighted_mean(_robust_norm(rendered - target), weights)


def bilinear_sample(image: jax.Array, points: jax.Array) -> jax.Array:
    """Samples (B, H, W, C) at pixel positions (B, N, 2) (pixel centres at +0.5), clamped."""
    _, height, width, _ = image.shape
    x = jnp.clip(points[..., 0] - 0.5, 0.0, width - 1.0)
    y = jnp.clip(points[..., 1] - 0.5, 0.0, height - 1.0)
    x0 = jnp.clip(jnp.floor(x), 0, width - 2).astype(jnp.int32)
    y0 = jnp.clip(jnp.floor(y), 0, height - 2).astype(jnp.int32)
    fx, fy = (x - x0)[..., None], (y - y0)[..., None]
    at = jax.vmap(lambda img, yy, xx: img[yy, xx])
    top = at(image, y0, x0) * (1 - fx) + at(image, y0, x0 + 1) * fx
    bottom = at(image, y0 + 1, x0) * (1 - fx) + at(image, y0 + 1, x0 + 1) * fx
    return top * (1 - fy) + bottom * fy


def photometric_vertex(target: jax.Array, screen_vertices: jax.Array, vertex_colors: jax.Array,
                       visibility: jax.Array, vertex_weight: jax.Array | None = None
                       ) -> jax.Array:
    """MoFA's vertex-sampled photometric l2,1 over visible vertices (B, V)."""
    sampled = bilinear_sample(target, screen_vertices[..., :2])
    weights = visibility.astype(target.dtype)
    if vertex_weight is not None:
        weights = weights * vertex_weight
    return _weighted_mean(_robust_norm(sampled - vertex_colors), weights)


def landmark_alignment(predicted: jax.Array, target: jax.Array, weight: jax.Array,
                       image_size: float) -> jax.Array:
    """Mean squared landmark distance (B, L, 2) in units of the image size."""
    squared = jnp.sum((predicted - target) ** 2, axis=-1) / (image_size**2)
    return _weighted_mean(squared, weight)


def statistical_prior(code: FaceCode) -> dict:
    """Squared norms of the standardized (N(0, I) prior) codes, batch means, by field."""
    return {f"prior_{field}": jnp.mean(jnp.sum(getattr(code, field) ** 2, -1))
            for field in ("identity", "expression", "reflectance")}


def _posed_vertices(model: facemodel.FaceModel, code: FaceCode) -> jax.Array:
    vertices = facemodel.shape(model, code.identity, code.expression)
    rotation = camera_lib.euler_to_matrix(code.rotation)
    return camera_lib.rigid_transform(vertices, rotation, code.translation)


def model_space(model: facemodel.FaceModel, predicted: FaceCode, target: FaceCode,
                geometry: float = 1.0, albedo: float = 100.0, illumination: float = 1.0
                ) -> dict:
    """InverseFaceNet model-space loss: decoded-space distances, not parameter distances.

    geometry: mean squared distance (mm^2 / 100, i.e. cm^2) of posed camera-space
    vertices; albedo: mean squared per-vertex albedo difference; illumination:
    squared SH difference. Returns the weighted terms and their sum in "total".
    """
    geo = jnp.mean(jnp.sum((_posed_vertices(model, predicted)
                            - _posed_vertices(model, target)) ** 2, -1)) / 100.0
    alb = jnp.mean((facemodel.albedo(model, predicted.reflectance)
                    - facemodel.albedo(model, target.reflectance)) ** 2)
    light = jnp.mean(jnp.sum((predicted.illumination - target.illumination) ** 2, (-2, -1)))
    terms = {"geometry": geometry * geo, "albedo": albedo * alb, "illumination": illumination * light}
    terms["total"] = sum(terms.values())
    return terms


def parameter_space(predicted: FaceCode, target: FaceCode) -> jax.Array:
    """Plain squared distance of raw code parameters (rotation in rad, translation in cm)."""
    scaled = lambda c: c.replace(translation=c.translation / 10.0)  # noqa: E731
    diff = jax.tree.map(lambda a, b: jnp.sum((a - b) ** 2, axis=tuple(range(1, a.ndim))),
                        scaled(predicted), scaled(target))
    return jnp.mean(sum(jax.tree.leaves(diff)))
