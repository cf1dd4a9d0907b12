"""Depth and normal errors of refined depth, on synthetic faces and on photos."""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from mofa import losses
from mofa.facemodel import FaceModel
from mofa.render import Camera
from mofa.detail.geometry import normals_from_depth, shading_ratio
from mofa.detail.synthetic import camera_for, coarse_inputs, detailed_batch, shade, skin_weight
from mofa.detail.model import apply_fine
from mofa.detail.losses import masked_mean
from mofa.detail.data import CoarseCodes


def angle_degrees(a: jax.Array, b: jax.Array) -> jax.Array:
    return jnp.degrees(jnp.arccos(jnp.clip(jnp.sum(a * b, -1), -1.0, 1.0)))


def depth_normal_errors(depth: jax.Array, truth: jax.Array, mask: jax.Array, camera: Camera,
                        region: Optional[jax.Array] = None) -> dict:
    """Mean |depth error| (mm) and normal angle (degrees) over the mask (and `region`).

    "shape_depth_mae_mm" first removes each face's mean depth offset: a monocular
    estimate's distance is uncertain by centimetres, which would hide its shape error.
    """
    angle = angle_degrees(normals_from_depth(depth, camera, mask),
                          normals_from_depth(truth, camera, mask))
    signed = depth - truth
    offset = jnp.sum(signed * mask, (1, 2), keepdims=True) / jnp.maximum(
        jnp.sum(mask, (1, 2), keepdims=True), 1.0)
    error = jnp.abs(signed)
    result = {"depth_mae_mm": masked_mean(error, mask),
              "shape_depth_mae_mm": masked_mean(jnp.abs(signed - offset), mask),
              "normal_deg": masked_mean(angle, mask)}
    if region is not None:
        weight = mask * region
        result["region_depth_mae_mm"] = masked_mean(error, weight)
        result["region_normal_deg"] = masked_mean(angle, weight)
    return result


def evaluate_synthetic(model: FaceModel, apply_fn, params, image_size: int, num_batches: int,
                       batch_size: int, seed: int = 2, encoder=None) -> dict:
    """Coarse vs fine (FineNet on it) errors against the detailed ground truth, averaged
    over `num_batches` held-out synthetic batches.

    The coarse depth is the true code's render (no detail: isolates FineNet) or, with
    `encoder` (CoarseNet: images -> FaceCode), the render of its estimate; the errors
    are then over the pixels both faces cover.
    """
    camera = camera_for(image_size)

    @jax.jit
    def errors(batch, coarse):
        mask = coarse["mask"] * batch["mask"]
        region = (batch["detail_weight"] > 0.2).astype(jnp.float32)
        fine = apply_fine(apply_fn, params, batch["image"], coarse["coarse_depth"],
                          coarse["mask"], camera)
        return {
            "coarse": depth_normal_errors(coarse["coarse_depth"], batch["depth"], mask, camera,
                                          region),
            "fine": depth_normal_errors(fine, batch["depth"], mask, camera, region),
        }

    key = jax.random.key(seed)
    totals = []
    for i in range(num_batches):
        batch = detailed_batch(model, jax.random.fold_in(key, i), batch_size, image_size)
        coarse = batch if encoder is None else coarse_inputs(model, encoder(batch["image"]),
                                                             camera)
        totals.append(errors(batch, coarse))
    mean = jax.tree.map(lambda *xs: float(np.mean(xs)), *totals)
    return {f"{stage}/{k}": v for stage, values in mean.items() for k, v in values.items()}


def evaluate_photos(model: FaceModel, apply_fn, params, path: str, coarse_codes: CoarseCodes,
                    image_size: int, batch_size: int) -> dict:
    """Shape-from-shading on the photos of folder `path`, which have no true depth.

    Per face: the photometric error (robust l2,1 over the coarse face) of the photo
    against the coarse code's albedo shaded under its SH light with the coarse depth's
    normals ("coarse/photo_photometric") and with FineNet's ("fine/..."), the same for
    the high-frequency shading on the skin ("*/photo_shading_detail", the
    `shading_detail` loss), and FineNet's mean |depth change| (mm); means over the
    faces, and their number.
    """
    from mofa.data.folder import FolderDataset

    camera = camera_for(image_size)
    dataset = FolderDataset(path, image_size, progress=False)
    per_face_photometric = jax.vmap(
        lambda r, t, m: losses.photometric_dense(r[None], t[None], m[None]))

    @jax.jit
    def errors(image, coarse):
        mask = coarse["mask"]
        fine = apply_fine(apply_fn, params, image, coarse["coarse_depth"], mask, camera)
        skin = skin_weight(coarse["landmarks"], mask)
        target_ratio = shading_ratio(image, skin)
        result = {}
        for stage, depth in (("coarse", coarse["coarse_depth"]), ("fine", fine)):
            normals = normals_from_depth(depth, camera, mask)
            shaded = shade(coarse["albedo"], normals, coarse["illumination"])
            result[f"{stage}/photo_photometric"] = per_face_photometric(shaded, image, mask)
            result[f"{stage}/photo_shading_detail"] = per_face_photometric(
                shading_ratio(shaded, skin), target_ratio, skin)
        change = jnp.sum(jnp.abs(fine - coarse["coarse_depth"]) * mask, (1, 2))
        result["fine/photo_depth_change_mm"] = change / jnp.maximum(jnp.sum(mask, (1, 2)), 1.0)
        return result

    parts = []
    for batch in dataset.batches(batch_size, shuffle=False, repeat=False, drop_remainder=False):
        coarse = coarse_inputs(model, coarse_codes(batch), camera)
        parts.append(errors(jnp.asarray(batch["image"]), coarse))
    per_face = jax.tree.map(lambda *xs: np.concatenate(xs), *parts)
    results = {k: float(np.mean(v)) for k, v in per_face.items()}
    results["photo_faces"] = len(per_face["fine/photo_depth_change_mm"])
    return results
