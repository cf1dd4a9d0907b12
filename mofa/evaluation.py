"""Reconstruction metrics against synthetic ground truth.

  * per-vertex error after similarity alignment (mm): mean / median over the
    face region of the Euclidean distance between the reconstructed and true
    neutral-pose meshes, after the best scale + rotation + translation (Umeyama);
  * landmark NME: mean 2D landmark error over the outer inter-ocular distance;
  * photometric error: mean per-pixel colour distance inside the face region;
  * pose error (degrees of the relative rotation) and illumination error
    (RMS irradiance difference over the normals of the front hemisphere).
"""

from __future__ import annotations

import functools
import json
import math

import jax
import jax.numpy as jnp
import numpy as np

from mofa import facemodel, losses, render
from mofa.code import FaceCode
from mofa.render import camera as camera_lib
from mofa.render import sh

RIGHT_EYE_OUTER, LEFT_EYE_OUTER = 36, 45


def similarity_align(source: jax.Array, target: jax.Array, weights: jax.Array | None = None
                     ) -> jax.Array:
    """Umeyama: the similarity transform of `source` (..., N, 3) closest to `target`."""
    w = jnp.ones(source.shape[:-1]) if weights is None else jnp.broadcast_to(
        weights, source.shape[:-1])
    w = w / jnp.sum(w, -1, keepdims=True)
    mu_s = jnp.sum(w[..., None] * source, -2, keepdims=True)
    mu_t = jnp.sum(w[..., None] * target, -2, keepdims=True)
    s, t = source - mu_s, target - mu_t
    cov = jnp.einsum("...n,...ni,...nj->...ij", w, t, s)
    u, d, vt = jnp.linalg.svd(cov)
    det = jnp.sign(jnp.linalg.det(u @ vt))
    fix = jnp.ones_like(d).at[..., -1].set(det)
    rotation = u @ (fix[..., :, None] * vt)
    variance = jnp.sum(w * jnp.sum(s * s, -1), -1)
    scale = jnp.sum(d * fix, -1) / jnp.maximum(variance, 1e-12)
    aligned = scale[..., None, None] * jnp.einsum("...ij,...nj->...ni", rotation, s)
    return aligned + mu_t


def rotation_error_degrees(euler_a: jax.Array, euler_b: jax.Array) -> jax.Array:
    ra, rb = camera_lib.euler_to_matrix(euler_a), camera_lib.euler_to_matrix(euler_b)
    cos = (jnp.trace(jnp.swapaxes(ra, -1, -2) @ rb, axis1=-2, axis2=-1) - 1.0) / 2.0
    return jnp.degrees(jnp.arccos(jnp.clip(cos, -1.0, 1.0)))


def _front_normals(n: int = 256) -> jax.Array:
    """Fibonacci-sphere directions with z >= 0 (the visible half of a face's normals)."""
    i = np.arange(n) + 0.5
    z = i / n
    phi = i * math.pi * (3.0 - math.sqrt(5.0))
    r = np.sqrt(1.0 - z * z)
    return jnp.asarray(np.stack([r * np.cos(phi), r * np.sin(phi), z], -1), jnp.float32)


def illumination_error(predicted: jax.Array, target: jax.Array) -> jax.Array:
    normals = _front_normals()
    ep = sh.irradiance(normals, predicted[..., None, :, :]) / math.pi
    et = sh.irradiance(normals, target[..., None, :, :]) / math.pi
    return jnp.sqrt(jnp.mean((ep - et) ** 2, axis=(-2, -1)))


def reconstruction_errors(model: facemodel.FaceModel, camera: render.Camera,
                          predicted: FaceCode, target: FaceCode, image: jax.Array,
                          landmarks: jax.Array, rendered: render.RenderOutput) -> dict:
    """Per-example metrics (B,) of predicted codes against ground truth."""
    region = model.face_mask > 0.5
    pred_shape = facemodel.shape(model, predicted.identity, predicted.expression)
    true_shape = facemodel.shape(model, target.identity, target.expression)
    aligned = similarity_align(pred_shape, true_shape, region.astype(jnp.float32))
    distance = jnp.linalg.norm(aligned - true_shape, axis=-1)
    in_region = jnp.where(region, distance, jnp.nan)
    interocular = jnp.linalg.norm(landmarks[:, RIGHT_EYE_OUTER] - landmarks[:, LEFT_EYE_OUTER],
                                  axis=-1)
    landmark_error = jnp.mean(jnp.linalg.norm(rendered.landmarks - landmarks, axis=-1), -1)
    photometric = jnp.sum(jnp.linalg.norm(rendered.image - image, axis=-1) * rendered.mask,
                          (1, 2)) / jnp.maximum(jnp.sum(rendered.mask, (1, 2)), 1.0)
    return {
        "vertex_error_mm_mean": jnp.nanmean(in_region, -1),
        "vertex_error_mm_median": jnp.nanmedian(in_region, -1),
        "landmark_nme": landmark_error / jnp.maximum(interocular, 1e-6),
        "landmark_error_px": landmark_error,
        "photometric_error": photometric,
        "pose_error_deg": rotation_error_degrees(predicted.rotation, target.rotation),
        "translation_error_mm": jnp.linalg.norm(predicted.translation - target.translation,
                                               axis=-1),
        "illumination_rmse": illumination_error(predicted.illumination, target.illumination),
    }


def evaluate_state(config, state, decoder, weights, num_batches: int | None = None) -> dict:
    """Averages `reconstruction_errors` over the synthetic test split of `config`."""
    from mofa.data import sources
    from mofa.train import batch_code, eval_step

    source = sources.make_source(config, decoder.face_model, split="test")
    num_batches = num_batches or config.get("eval_batches", 4)
    step = jax.jit(functools.partial(eval_step, weights=weights))
    errors = jax.jit(functools.partial(reconstruction_errors, decoder.face_model, decoder.camera))
    totals: dict = {}
    for i in range(num_batches):
        batch = jax.tree.map(jnp.asarray, source.batch(i, config.eval_batch_size))
        _, code, out = step(state, batch, decoder)
        if "code/rotation" in batch:
            values = errors(code, batch_code(batch), batch["image"], batch["landmarks"], out)
        else:
            values = {"photometric_error": losses.photometric_dense(out.image, batch["image"],
                                                                    out.mask)[None]}
        for k, v in jax.device_get(values).items():
            totals.setdefault(k, []).append(np.asarray(v))
    return {k: float(np.mean(np.concatenate(v))) for k, v in totals.items()}


def write_json(path: str, results: dict) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(results, f, indent=2, sort_keys=True)
