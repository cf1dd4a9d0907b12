"""Reconstruction metrics against synthetic ground truth.

  * per-vertex error after similarity alignment (mm): mean / median over the
    face region of the Euclidean distance between the reconstructed and true
    neutral-pose meshes, after the best scale + rotation + translation (Umeyama);
  * separately, what an image can show: the identity shape error (neutral
    expression, after similarity alignment), the expression deformation error
    (mm), the albedo RMSE over the face region, and per-component R^2 over the
    test set of the first 10 identity components and of jaw open, smile, blink
    and brow raise;
  * landmark NME: mean 2D landmark error over the outer inter-ocular distance;
  * photometric error: mean per-pixel colour distance inside the face region;
  * pose error (degrees of the relative rotation) and illumination error
    (RMS irradiance difference over the normals of the front hemisphere);
  * on faces of another face model (other topology), the surface error (mm)
    replaces the per-vertex error: NoW's scan-to-mesh distance (`mofa.scan_eval`).
"""

from __future__ import annotations

import functools
import json
import math

import jax
import jax.numpy as jnp
import numpy as np

from mofa import facemodel, geometry, losses, render
from mofa.code import FaceCode
from mofa.render import camera as camera_lib
from mofa.render import sh

RIGHT_EYE_OUTER, LEFT_EYE_OUTER = 36, 45
# Expression components whose recovery evaluation reports (R^2), where a model has them.
R2_EXPRESSIONS = ("jawOpen", "mouthSmile_L", "mouthSmile_R", "eyeBlink_L", "eyeBlink_R",
                  "browInnerUp_L", "browInnerUp_R", "browOuterUp_L", "browOuterUp_R")
R2_IDENTITY_COMPONENTS = 10


def r_squared(predicted: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Coefficient of determination per column (N, K) -> (K,): 1 - SSE / SST."""
    residual = np.sum((predicted - truth) ** 2, 0)
    total = np.sum((truth - truth.mean(0)) ** 2, 0)
    return 1.0 - residual / np.maximum(total, 1e-12)


def component_r_squared(model: facemodel.FaceModel, predicted: dict, truth: dict) -> dict:
    """R^2 of the first identity components and of the named expressions over a test set.

    predicted / truth: {"identity": (N, Ki), "expression": (N, Ke)} codes of N faces.
    """
    count = min(R2_IDENTITY_COMPONENTS, predicted["identity"].shape[1])
    identity = r_squared(predicted["identity"][:, :count], truth["identity"][:, :count])
    results = {f"r2/identity_{i}": float(v) for i, v in enumerate(identity)}
    results[f"r2/identity_first{count}_mean"] = float(np.mean(identity))
    names = list(model.expression_names or ())
    for name in R2_EXPRESSIONS:
        if name in names:
            k = names.index(name)
            results[f"r2/{name}"] = float(r_squared(predicted["expression"][:, k:k + 1],
                                                    truth["expression"][:, k:k + 1])[0])
    return results


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
                          landmarks: jax.Array, rendered: render.RenderOutput,
                          shape_offset: jax.Array | None = None,
                          vertex_errors: bool = True) -> dict:
    """Per-example metrics (B,) of predicted codes against ground truth.

    shape_offset: (B, V, 3) mm added to the predicted shape (the corrective level's);
    vertex_errors=False leaves out the per-vertex error, for targets of another
    face model (whose identity / expression codes are not `model`'s).
    """
    results = {}
    if vertex_errors:
        region = model.face_mask > 0.5
        weight = region.astype(jnp.float32)

        def region_mean(distance):
            return jnp.sum(distance * weight, -1) / jnp.sum(weight)

        pred_shape = facemodel.shape(model, predicted.identity, predicted.expression)
        if shape_offset is not None:
            pred_shape = pred_shape + shape_offset
        true_shape = facemodel.shape(model, target.identity, target.expression)
        aligned = geometry.similarity_align(pred_shape, true_shape, weight)
        distance = jnp.linalg.norm(aligned - true_shape, axis=-1)
        in_region = jnp.where(region, distance, jnp.nan)
        results["vertex_error_mm_mean"] = jnp.nanmean(in_region, -1)
        results["vertex_error_mm_median"] = jnp.nanmedian(in_region, -1)
        # What an image can show, separately: the neutral identity shape after
        # similarity alignment (size and distance are confounded), and the expression
        # deformation (the expression bases carry no similarity motion).
        zeros = jnp.zeros_like(target.expression)
        pred_neutral = facemodel.shape(model, predicted.identity, zeros)
        if shape_offset is not None:
            pred_neutral = pred_neutral + shape_offset
        true_neutral = facemodel.shape(model, target.identity, zeros)
        aligned = geometry.similarity_align(pred_neutral, true_neutral, weight)
        results["identity_shape_error_mm"] = region_mean(
            jnp.linalg.norm(aligned - true_neutral, axis=-1))
        deformation = lambda code: facemodel.shape(  # noqa: E731
            model, jnp.zeros_like(code.identity), code.expression) - model.mean_shape
        results["expression_error_mm"] = region_mean(
            jnp.linalg.norm(deformation(predicted) - deformation(target), axis=-1))
        albedo_diff = (facemodel.albedo(model, predicted.reflectance)
                       - facemodel.albedo(model, target.reflectance))
        results["albedo_rmse"] = jnp.sqrt(region_mean(jnp.mean(albedo_diff**2, -1)))
    interocular = jnp.linalg.norm(landmarks[:, RIGHT_EYE_OUTER] - landmarks[:, LEFT_EYE_OUTER],
                                  axis=-1)
    landmark_error = jnp.mean(jnp.linalg.norm(rendered.landmarks - landmarks, axis=-1), -1)
    photometric = jnp.sum(jnp.linalg.norm(rendered.image - image, axis=-1) * rendered.mask,
                          (1, 2)) / jnp.maximum(jnp.sum(rendered.mask, (1, 2)), 1.0)
    return {
        **results,
        "landmark_nme": landmark_error / jnp.maximum(interocular, 1e-6),
        "landmark_error_px": landmark_error,
        "photometric_error": photometric,
        "pose_error_deg": rotation_error_degrees(predicted.rotation, target.rotation),
        "translation_error_mm": jnp.linalg.norm(predicted.translation - target.translation,
                                               axis=-1),
        "illumination_rmse": illumination_error(predicted.illumination, target.illumination),
    }


def surface_errors(model: facemodel.FaceModel, predicted: FaceCode,
                   target_model: facemodel.FaceModel, target: FaceCode,
                   shape_offset: jax.Array | None = None) -> dict:
    """Per-example shape errors (B,) across face models of different topology (host, mm).

    The predicted neutral-pose mesh is aligned to the true one by a similarity
    from their 68 landmarks refined by rigid ICP, then the distance of every true
    face-region vertex within NoW's crop (`scan_eval.CROP_RADIUS_MM` of the nose
    tip) to the predicted surface (the NoW scan-to-mesh distance). The crop
    matters: 39% of ICT's face-region vertices lie beyond 95 mm (ears, neck, the
    sides of the head, which the builtin face mesh does not model), and without it
    they made most of the mean (README, "Multi-level model").
    Also the translation error, as the distance of the posed 68-landmark centroids.
    """
    from mofa import scan_eval

    predicted_shape = facemodel.shape(model, predicted.identity, predicted.expression)
    if shape_offset is not None:  # the corrective level's shape correction (mm)
        predicted_shape = predicted_shape + shape_offset
    predicted_shape = np.asarray(predicted_shape)
    true_shape = np.asarray(facemodel.shape(target_model, target.identity, target.expression))
    region = np.asarray(target_model.face_mask) > 0.5
    triangles = np.asarray(model.triangles)
    errors = [scan_eval.scan_to_mesh_errors(
        truth[region], truth[np.asarray(target_model.landmark_indices)], prediction, triangles,
        prediction[np.asarray(model.landmark_indices)])
        for prediction, truth in zip(predicted_shape, true_shape)]
    # The models' origins differ, so translations are compared as the camera-space
    # centroids of the posed 68 landmarks.
    def landmark_centroid(face_model, code, shape):
        points = shape[:, np.asarray(face_model.landmark_indices)]
        rotation = np.asarray(camera_lib.euler_to_matrix(code.rotation))
        return (np.einsum("bij,bnj->bni", rotation, points).mean(1)
                + np.asarray(code.translation))

    centroid_error = np.linalg.norm(landmark_centroid(model, predicted, predicted_shape)
                                    - landmark_centroid(target_model, target, true_shape), axis=-1)
    return {"surface_error_mm_mean": np.array([e["mean_mm"] for e in errors]),
            "surface_error_mm_median": np.array([e["median_mm"] for e in errors]),
            "translation_error_mm": centroid_error}


# One jitted program per shape for every evaluation (the model an argument, not a constant).
_reconstruction_errors = jax.jit(reconstruction_errors, static_argnames=("vertex_errors",))


def evaluate_predictions(config, predict, decoder, num_batches: int | None = None, *,
                         num_faces: int | None = None, face_model: str | None = None,
                         yaw_split_degrees: float | None = None) -> dict:
    """Averages `reconstruction_errors` over the synthetic test split of `config`.

    predict(batch) -> (FaceCode, RenderOutput, shape offset (B, V, 3) mm or None): a
    method's reconstruction of a batch (a trained encoder: `train.predictor`); decoder:
    its face model and camera.

    num_faces: evaluate that many test faces (default: `num_batches` batches);
    face_model: SPEC of another face model whose synthetic faces to evaluate on
    (default: `config.data.face_model`, the one trained on; the shape error is then
    `surface_errors`, the other metrics are the same). With the corrective level the
    predicted shape includes its correction. yaw_split_degrees: also average every
    metric over the faces whose true |yaw| is at most / above it ("NAME/yaw<=S",
    "NAME/yaw>S"), e.g. inside / outside the training prior's pose range.
    """
    from mofa.data import sources

    face_model = face_model or config.data.get("face_model") or None
    data_model = decoder.face_model
    cross_model = face_model is not None and face_model != config.face_model
    if cross_model:
        config = config.copy_and_resolve_references()
        config.face_model = config.data.face_model = face_model
        if config.data.source not in ("synthetic", "synthetic_tfds"):
            config.data.source = "synthetic"  # photos have no ground truth to compare with
        data_model = facemodel.load(face_model)
    source = sources.make_source(config, data_model, split="test")
    batch_size = config.eval_batch_size
    if num_faces is not None:
        batch_size = min(batch_size, num_faces)
        num_batches = -(-num_faces // batch_size)
    num_batches = num_batches or config.get("eval_batches", 4)
    errors = functools.partial(_reconstruction_errors, decoder.face_model, decoder.camera,
                               vertex_errors=not cross_model)
    totals: dict = {}
    codes: dict = {"predicted": {}, "truth": {}}
    for i in range(num_batches):
        batch = jax.tree.map(jnp.asarray, source.batch(i, batch_size))
        code, out, offset = predict(batch)
        if "code/rotation" in batch:
            target = FaceCode.from_batch(batch)
            values = errors(code, target, batch["image"], batch["landmarks"], out, offset)
            values["true_yaw_deg"] = jnp.degrees(jnp.abs(target.rotation[:, 1]))
            if cross_model:
                values.update(surface_errors(decoder.face_model, code, data_model, target,
                                             offset))
            else:  # codes of one model: per-component R^2 over the whole test set
                for field in ("identity", "expression"):
                    codes["predicted"].setdefault(field, []).append(
                        np.asarray(getattr(code, field)))
                    codes["truth"].setdefault(field, []).append(np.asarray(getattr(target, field)))
        else:
            values = {"photometric_error": losses.photometric_dense(out.image, batch["image"],
                                                                    out.mask)[None]}
        for k, v in jax.device_get(values).items():
            totals.setdefault(k, []).append(np.asarray(v))
    results = {k: np.concatenate(v)[:num_faces] for k, v in totals.items()}
    yaw = results.pop("true_yaw_deg", None)
    summary = {k: float(np.mean(v)) for k, v in results.items()}
    if codes["truth"]:
        summary.update(component_r_squared(
            decoder.face_model,
            *({k: np.concatenate(v)[:num_faces] for k, v in side.items()}
              for side in (codes["predicted"], codes["truth"]))))
    if yaw_split_degrees is not None and yaw is not None:
        for name, keep in ((f"yaw<={yaw_split_degrees:g}", yaw <= yaw_split_degrees),
                           (f"yaw>{yaw_split_degrees:g}", yaw > yaw_split_degrees)):
            summary[f"num_faces/{name}"] = int(keep.sum())
            summary.update({f"{k}/{name}": float(np.mean(v[keep])) for k, v in results.items()
                            if keep.any()})
    return summary


def write_json(path: str, results: dict) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(results, f, indent=2, sort_keys=True)
