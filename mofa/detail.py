"""Coarse-to-fine face detail (Richardson et al. 2017, "Learning detailed face reconstruction
from a single image").

CoarseNet is the existing encoder + face model: its code renders to a depth map and
an albedo map in image space. FineNet, a small fully convolutional U-Net, refines
that depth with a per-pixel residual (mm). It trains in two phases:

  1. supervised, on synthetic faces with wrinkle-like detail added to the rendered
     depth (`detailed_batch`): masked L1 depth + normal angular loss;
  2. unsupervised shape-from-shading: the image against the albedo (re-rendered
     from the coarse code under ambient light) shaded under the coarse code's SH
     light with FineNet's normals, plus fidelity to the coarse depth and a
     Laplacian smoothness term on the residual.

Normals come from depth by `normals_from_depth` (differentiable), so training,
shading and evaluation all see the same geometry. `refine` and `detail_mesh`
turn a coarse render into a refined depth map, normal map and mesh.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import math
import os
from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from mofa import facemodel, inference, losses, train
from mofa.code import DEFAULT_FOV_DEGREES, FIELDS, FaceCode
from mofa.data import synthetic
from mofa.facemodel import FaceModel
from mofa.render import Camera, render_face, sh

# Landmark indices (iBUG 68) locating the detail regions.
_BROWS = np.arange(17, 27)
_LEFT_EYE_OUTER, _RIGHT_EYE_OUTER = 36, 45
_EYES = np.arange(36, 48)
# Brows, eyes and lips: not skin.
_NON_SKIN = np.concatenate([np.arange(17, 27), np.arange(36, 68)])
# Mean of the groove profile (1 - |sin t|)^4 over a period, subtracted to centre it.
_GROOVE_MEAN = float(np.mean((1.0 - np.abs(np.sin(np.linspace(0.0, np.pi, 4096, endpoint=False))))
                             ** 4))


# --- geometry -------------------------------------------------------------------


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


# --- synthetic detail -----------------------------------------------------------


def _pixel_grid(shape: tuple) -> tuple[jax.Array, jax.Array]:
    """Pixel-centre coordinates (x, y), each (B, H, W), of images of `shape` (B, H, W)."""
    _, height, width = shape
    py, px = jnp.meshgrid(jnp.arange(height, dtype=jnp.float32) + 0.5,
                          jnp.arange(width, dtype=jnp.float32) + 0.5, indexing="ij")
    return jnp.broadcast_to(px, shape), jnp.broadcast_to(py, shape)


def _eye_span(landmarks: jax.Array) -> jax.Array:
    """Distance of the outer eye corners (B,) px: the face's size in the image."""
    left, right = landmarks[:, _LEFT_EYE_OUTER], landmarks[:, _RIGHT_EYE_OUTER]
    return jnp.maximum(jnp.linalg.norm(right - left, axis=-1), 1.0)


def skin_weight(landmarks: jax.Array, mask: jax.Array) -> jax.Array:
    """The face mask (B, H, W) without soft discs around the brow, eye and lip landmarks.

    A fitted 3DMM albedo rarely matches brows, eyes and lips in a photo, and shape
    from shading would turn the mismatch into geometry.
    """
    px, py = _pixel_grid(mask.shape)
    points = landmarks[:, _NON_SKIN]  # (B, P, 2)
    # At least 1.5 px: a smaller disc misses the pixel a landmark falls in (its centre
    # can be 0.7 px away) at low resolution.
    sigma = jnp.maximum(0.08 * _eye_span(landmarks), 1.5)
    d2 = ((px[:, None] - points[..., 0, None, None]) ** 2
          + (py[:, None] - points[..., 1, None, None]) ** 2)
    near = jnp.max(jnp.exp(-0.5 * d2 / sigma[:, None, None, None] ** 2), axis=1)
    return mask * (1.0 - near)


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


def _blob(px, py, centre, sigma):
    """Gaussian weight (B, H, W) around per-face centres (B, 2) with widths (B,)."""
    d2 = (px - centre[:, 0, None, None]) ** 2 + (py - centre[:, 1, None, None]) ** 2
    return jnp.exp(-0.5 * d2 / (sigma[:, None, None] ** 2))


def _ridges(key, px, py, scale, num: int, base_angle, angle_spread):
    """Sum of `num` oriented groove patterns (B, H, W), spacing ~0.2-0.4 `scale` px."""
    batch = px.shape[0]
    k_angle, k_wave, k_phase = jax.random.split(key, 3)
    angle = base_angle[:, None] + angle_spread * jax.random.uniform(
        k_angle, (batch, num), minval=-1.0, maxval=1.0)
    wavelength = scale[:, None] * jax.random.uniform(k_wave, (batch, num), minval=0.2,
                                                     maxval=0.4)
    phase = jax.random.uniform(k_phase, (batch, num), maxval=2.0 * math.pi)
    k = 2.0 * math.pi / wavelength
    arg = (k * jnp.cos(angle))[..., None, None] * px[:, None] + (
        k * jnp.sin(angle))[..., None, None] * py[:, None] + phase[..., None, None]
    # Narrow grooves between flat skin, like creases (zero mean), each 1 deep.
    groove = (1.0 - jnp.abs(jnp.sin(0.5 * arg))) ** 4
    return -jnp.sum(groove - _GROOVE_MEAN, axis=1)


def wrinkle_field(key: jax.Array, landmarks: jax.Array, mask: jax.Array
                  ) -> tuple[jax.Array, jax.Array]:
    """Wrinkle-like depth offsets (B, H, W) mm on the forehead and around the eyes.

    Forehead: near-horizontal ridges above the brows; eyes: crow's-feet ridges at the
    outer corners and fine lines below the eyes. Amplitude 0.3-1.5 mm per face.
    Returns (detail, region weight), both 0 off the mask.
    """
    batch = mask.shape[0]
    px, py = _pixel_grid(mask.shape)
    k_amp, k_fore, k_eye_l, k_eye_r, k_under = jax.random.split(key, 5)
    left, right = landmarks[:, _LEFT_EYE_OUTER], landmarks[:, _RIGHT_EYE_OUTER]
    eye_span = _eye_span(landmarks)
    roll = jnp.arctan2(right[:, 1] - left[:, 1], right[:, 0] - left[:, 0])
    brows = jnp.mean(landmarks[:, _BROWS], axis=1)
    eyes = jnp.mean(landmarks[:, _EYES], axis=1)
    up = jnp.stack([jnp.sin(roll), -jnp.cos(roll)], -1)  # image-space "up" of the face
    forehead = brows + 0.45 * eye_span[:, None] * up
    under_eyes = eyes - 0.25 * eye_span[:, None] * up
    half_pi = jnp.full((batch,), 0.5 * math.pi)
    # Horizontal ridges: the wave vector points along the face's up axis.
    w_fore = _blob(px, py, forehead, 0.4 * eye_span)
    d_fore = _ridges(k_fore, px, py, eye_span, 3, roll + half_pi, 0.15)
    w_left = _blob(px, py, left, 0.18 * eye_span)
    w_right = _blob(px, py, right, 0.18 * eye_span)
    d_left = _ridges(k_eye_l, px, py, 0.7 * eye_span, 3, roll, 0.5)
    d_right = _ridges(k_eye_r, px, py, 0.7 * eye_span, 3, roll, 0.5)
    w_under = _blob(px, py, under_eyes, 0.2 * eye_span) * 0.6
    d_under = _ridges(k_under, px, py, 0.6 * eye_span, 2, roll + half_pi, 0.3)
    detail = w_fore * d_fore + w_left * d_left + w_right * d_right + w_under * d_under
    weight = jnp.clip(w_fore + w_left + w_right + w_under, 0.0, 1.0) * mask
    amplitude = jax.random.uniform(k_amp, (batch, 1, 1), minval=0.3, maxval=1.5)
    return amplitude * detail * mask, weight


def albedo_render(model: FaceModel, code: FaceCode, camera: Camera):
    """The code rendered under ambient light 1: its image is the per-pixel albedo.

    Depth, mask and landmarks do not depend on the light, so this one render gives
    everything the detail pipeline needs (rasterizing is the costly part).
    """
    ambient = sh.ambient_light(1.0, code.batch_shape)
    return render_face(model, code.replace(illumination=ambient), camera)


def shade(albedo: jax.Array, normals: jax.Array, illumination: jax.Array) -> jax.Array:
    """albedo * E(n) / pi per pixel, illumination (B, 9, 3)."""
    return sh.shade_lambertian(albedo, normals, illumination[:, None, None])


def camera_for(image_size: int) -> Camera:
    return Camera.from_fov(DEFAULT_FOV_DEGREES, image_size, image_size)


@functools.partial(jax.jit, static_argnames=("batch_size", "image_size"))
def detailed_batch(model: FaceModel, key: jax.Array, batch_size: int, image_size: int) -> dict:
    """Synthetic faces with wrinkle detail and their ground truth.

    The detail is added to the rendered depth; the image is shaded (under the code's
    light) from the detailed depth's normals with the rendered per-pixel albedo, so
    it shows the detail. Keys: image (linear RGB), depth (detailed, mm), coarse_depth (the code's
    render), mask, albedo, detail, detail_weight, landmarks, code (FaceCode).
    """
    camera = camera_for(image_size)
    k_inputs, k_detail = jax.random.split(key)
    code, background = synthetic.random_inputs(model, k_inputs, batch_size, image_size)
    out = albedo_render(model, code, camera)
    albedo = out.image
    detail, weight = wrinkle_field(k_detail, out.landmarks, out.mask)
    depth = out.depth + detail
    normals = normals_from_depth(depth, camera, out.mask)
    shaded = shade(albedo, normals, code.illumination)
    image = jnp.clip(jnp.where(out.mask[..., None] > 0, shaded, background), 0.0, 1.0)
    return {"image": image, "depth": depth, "coarse_depth": out.depth, "mask": out.mask,
            "albedo": albedo, "detail": detail, "detail_weight": weight,
            "landmarks": out.landmarks, "code": code}


@jax.jit
def coarse_inputs(model: FaceModel, code: FaceCode, camera: Camera) -> dict:
    """What FineNet and the SfS loss need from a coarse code: depth, mask, albedo, light."""
    out = albedo_render(model, code, camera)
    return {"coarse_depth": out.depth, "mask": out.mask, "albedo": out.image,
            "illumination": code.illumination, "landmarks": out.landmarks}


# --- FineNet --------------------------------------------------------------------

NUM_FEATURES = 11


def _conv_block(x, features: int):
    for _ in range(2):
        x = nn.gelu(nn.Conv(features, (3, 3))(x))
    return x


class FineNet(nn.Module):
    """A small U-Net: (image, coarse depth, coarse normals, mask) -> depth residual (mm).

    The last layer is zero-initialised, so an untrained FineNet returns the coarse
    depth exactly. Needs image sides divisible by 2 ** `depth`.
    """

    width: int = 16
    depth: int = 2

    @nn.compact
    def __call__(self, features: jax.Array, mask: jax.Array) -> jax.Array:
        step = 2 ** self.depth
        if features.shape[1] % step or features.shape[2] % step:
            raise ValueError(f"FineNet of depth {self.depth} needs image sides divisible by "
                             f"{step}, got {features.shape[1]}x{features.shape[2]}")
        x, skips = features, []
        for level in range(self.depth):
            x = _conv_block(x, self.width * 2 ** level)
            skips.append(x)
            x = nn.max_pool(x, (2, 2), strides=(2, 2))
        x = _conv_block(x, self.width * 2 ** self.depth)
        for level in reversed(range(self.depth)):
            b, h, w, c = x.shape
            x = jax.image.resize(x, (b, 2 * h, 2 * w, c), "bilinear")
            x = _conv_block(jnp.concatenate([x, skips[level]], -1), self.width * 2 ** level)
        residual = nn.Conv(1, (3, 3), kernel_init=nn.initializers.zeros,
                           bias_init=nn.initializers.zeros)(x)[..., 0]
        return residual * mask


def fine_features(image: jax.Array, coarse_depth: jax.Array, mask: jax.Array,
                  camera: Camera) -> jax.Array:
    """FineNet's input (B, H, W, NUM_FEATURES): image, its high-pass, normalized coarse depth,
    coarse normals, mask."""
    mean = jnp.sum(coarse_depth * mask, (1, 2), keepdims=True) / jnp.maximum(
        jnp.sum(mask, (1, 2), keepdims=True), 1.0)
    # Relative depth in cm: scale- and distance-free, O(1) over a face.
    relative = (coarse_depth - mean) * mask / 10.0
    normals = normals_from_depth(coarse_depth, camera, mask)
    # The detail shows as faint (~0.2%) high-frequency shading: hand it over amplified.
    high_pass = 50.0 * shading_ratio(image, mask)
    return jnp.concatenate([image, high_pass, relative[..., None], normals, mask[..., None]], -1)


def apply_fine(apply_fn, params, image, coarse_depth, mask, camera: Camera) -> jax.Array:
    """Refined depth (B, H, W): coarse + FineNet's residual (on the mask)."""
    residual = apply_fn({"params": params},
                        fine_features(image, coarse_depth, mask, camera), mask)
    return coarse_depth + residual


# --- losses ---------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class DetailWeights:
    """Static loss weights of both phases (unused terms have weight 0)."""

    depth: float = 1.0  # supervised: masked (Charbonnier) L1, mm
    normal: float = 100.0  # supervised: 1 - cos of the normal angle
    photometric: float = 0.0  # SfS: robust l2,1 of the re-shaded image
    fidelity: float = 0.0  # SfS: squared residual to the coarse depth, mm^2
    smoothness: float = 0.0  # SfS: squared Laplacian of the residual, mm^2
    # SfS: robust l2,1 of the high-frequency shading (`shading_ratio`) on the skin
    # (`skin_weight`): blind to smooth albedo and light errors, for photos.
    shading_detail: float = 0.0

    @classmethod
    def from_config(cls, config: ml_collections.ConfigDict) -> "DetailWeights":
        return losses.weights_from_config(cls, config)


_CHARBONNIER = 0.05  # mm


def _masked_mean(values, mask):
    return jnp.sum(values * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def normal_angle_cost(predicted: jax.Array, target: jax.Array, mask: jax.Array) -> jax.Array:
    """Masked mean of 1 - cos(angle) between unit normal maps (smooth at 0, unlike acos)."""
    return _masked_mean(1.0 - jnp.sum(predicted * target, -1), mask)


def detail_losses(params, apply_fn, batch: dict, camera: Camera, weights: DetailWeights):
    """(total, terms) of FineNet on a batch; supervised terms need batch['depth']."""
    mask = batch["mask"]
    refined = apply_fine(apply_fn, params, batch["image"], batch["coarse_depth"], mask, camera)
    normals = normals_from_depth(refined, camera, mask)
    residual = (refined - batch["coarse_depth"]) * mask
    terms = {}
    if weights.depth or weights.normal:
        # An estimated coarse face covers other pixels than the true one ("depth_mask": both).
        known = batch.get("depth_mask", mask)
        target_normals = normals_from_depth(batch["depth"], camera, known)
        # Charbonnier L1: most pixels carry no detail, and plain L1's kink exactly at
        # FineNet's zero-residual start makes every first step uphill.
        error = refined - batch["depth"]
        terms["depth"] = _masked_mean(jnp.sqrt(error**2 + _CHARBONNIER**2) - _CHARBONNIER,
                                      known)
        predicted = normals if known is mask else normals_from_depth(refined, camera, known)
        terms["normal"] = normal_angle_cost(predicted, target_normals, known)
    if weights.photometric or weights.fidelity or weights.smoothness or weights.shading_detail:
        shaded = shade(batch["albedo"], normals, batch["illumination"])
        terms["photometric"] = losses.photometric_dense(shaded, batch["image"], mask)
        skin = skin_weight(batch["landmarks"], mask)
        terms["shading_detail"] = losses.photometric_dense(
            shading_ratio(shaded, skin), shading_ratio(batch["image"], skin), skin)
        terms["fidelity"] = _masked_mean(residual ** 2, mask)
        terms["smoothness"] = _masked_mean(image_laplacian(residual) ** 2, mask)
    total = sum(getattr(weights, name) * value for name, value in terms.items())
    return total, terms


def train_step(state: train.TrainState, batch: dict, camera: Camera, weights: DetailWeights):
    """One optimizer step of FineNet; pure."""
    (total, terms), grads = jax.value_and_grad(detail_losses, has_aux=True)(
        state.params, state.apply_fn, batch, camera, weights)
    state = state.apply_gradients(grads=grads)
    return state, {"loss": total, "grad_norm": optax.tree.norm(grads),
                   **{f"loss/{k}": v for k, v in terms.items()}}


# --- evaluation -----------------------------------------------------------------


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
    result = {"depth_mae_mm": _masked_mean(error, mask),
              "shape_depth_mae_mm": _masked_mean(jnp.abs(signed - offset), mask),
              "normal_deg": _masked_mean(angle, mask)}
    if region is not None:
        weight = mask * region
        result["region_depth_mae_mm"] = _masked_mean(error, weight)
        result["region_normal_deg"] = _masked_mean(angle, weight)
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


# --- training -------------------------------------------------------------------


def create_state(config: ml_collections.ConfigDict, key: jax.Array) -> train.TrainState:
    net = FineNet(width=config.fine.width, depth=config.fine.depth)
    size = config.image_size
    variables = jax.jit(net.init)(key, jnp.zeros((1, size, size, NUM_FEATURES)),
                                  jnp.zeros((1, size, size)))
    return train.TrainState.create(apply_fn=net.apply, params=variables["params"],
                                   batch_stats={}, tx=train.make_optimizer(config))


def load_detail(workdir: str) -> tuple[ml_collections.ConfigDict, train.TrainState, int]:
    """(config, state, step) of the latest checkpoint of a `train_detail` workdir."""
    workdir = os.path.abspath(workdir)
    config_path = os.path.join(workdir, "config.json")
    if not os.path.exists(config_path):
        raise FileNotFoundError(f"{config_path} not found: {workdir} is not a detail workdir")
    with open(config_path, encoding="utf-8") as f:
        config = ml_collections.ConfigDict(json.load(f))
    if "fine" not in config:
        raise ValueError(f"{workdir} is a training workdir without a FineNet (config.fine)")
    state = create_state(config, jax.random.key(config.seed))
    manager = train.checkpoint_manager(workdir, config)
    if manager.latest_step() is None:
        raise FileNotFoundError(f"no checkpoint in {os.path.join(workdir, 'checkpoints')}")
    state, step = train.restore_latest(manager, state)
    manager.close()
    return config, state, step


class CoarseCodes:
    """Coarse codes of photos, estimated once per face and kept.

    `reconstructor` (`inference.Reconstructor`: the encoder's estimate and/or
    analysis-by-synthesis fitting) runs only on faces not seen before, keyed by the
    crop's content; the codes are saved to `path` (npz), so a resumed run or a later
    evaluation of the same photos does not fit them again. `settings` describes how
    the codes are estimated: a saved file with other settings is not reused.
    """

    def __init__(self, reconstructor, path: Optional[str] = None, settings: str = ""):
        self.reconstructor, self.path, self.settings = reconstructor, path, settings
        self.codes: dict[str, dict] = {}
        if path and os.path.exists(path):
            with np.load(path) as saved:
                if str(saved["settings"]) != settings:
                    logging.warning("%s holds coarse codes estimated with other settings "
                                    "(%s, now %s): estimating them again", path,
                                    saved["settings"], settings)
                    return
                for i, key in enumerate(saved["keys"]):
                    self.codes[str(key)] = {f: saved[f][i] for f in FIELDS}

    def __call__(self, batch: dict) -> FaceCode:
        """The codes (B,) of a batch-contract batch (image, landmarks, landmark_weight)."""
        keys = [hashlib.sha1(np.ascontiguousarray(image).tobytes()).hexdigest()
                for image in np.asarray(batch["image"])]
        first = {}
        for i, key in enumerate(keys):
            if key not in self.codes:
                first.setdefault(key, i)
        if first:
            crops = [{name: np.asarray(batch[name][i])
                      for name in ("image", "landmarks", "landmark_weight")}
                     for i in first.values()]
            fitted = self.reconstructor.codes(crops)
            for j, key in enumerate(first):
                self.codes[key] = {f: np.asarray(getattr(fitted, f))[j] for f in FIELDS}
            self._save()
        return FaceCode(**{f: jnp.asarray(np.stack([self.codes[k][f] for k in keys]))
                           for f in FIELDS})

    def _save(self) -> None:
        if not self.path:
            return
        keys = list(self.codes)
        temporary = self.path + ".tmp.npz"
        np.savez(temporary, keys=np.asarray(keys), settings=np.asarray(self.settings),
                 **{f: np.stack([self.codes[k][f] for k in keys]) for f in FIELDS})
        os.replace(temporary, self.path)  # atomic: a killed run leaves the old file whole




class _CoarseSource:
    """Batches for FineNet: image, coarse depth, mask, albedo, light (+ true detailed depth).

    data.source "synthetic_detail" renders `detailed_batch`; its coarse estimate is the
    true code (isolates FineNet) unless detail.coarse_workdir names a trained encoder.
    Photos (data.source "folder" or "tfds") get their coarse code from that encoder
    and/or detail.coarse_fit_steps of analysis-by-synthesis fitting (`mofa.fitting`),
    once per face (`CoarseCodes`, kept in workdir/coarse_codes.npz).
    """

    def __init__(self, config: ml_collections.ConfigDict, model: FaceModel, camera: Camera,
                 workdir: Optional[str] = None):

        self.config, self.model, self.camera = config, model, camera
        self.key = jax.random.key(config.seed + 1)
        self.encoder = None
        coarse_workdir = config.detail.get("coarse_workdir", "")
        fit_steps = config.detail.get("coarse_fit_steps", 0)
        if coarse_workdir:
            coarse_config, coarse_state, decoder, _ = train.load_trained(coarse_workdir)
            if coarse_config.image_size != config.image_size:
                raise ValueError(f"CoarseNet {coarse_workdir} works at {coarse_config.image_size}"
                                 f" px, the detail config at {config.image_size} px")
            self.encoder = train.code_encoder(coarse_state, decoder.face_model)
        self.photos = self.coarse_codes = None
        if self.encoder is not None or fit_steps > 0:
            reconstructor = inference.Reconstructor(
                model, camera, batch_size=config.batch_size, fit_steps=max(fit_steps, 0),
                encoder=self.encoder)
            settings = (f"face_model={config.face_model} image_size={config.image_size} "
                        f"encoder={coarse_workdir or None} fit_steps={max(fit_steps, 0)}")
            self.coarse_codes = CoarseCodes(
                reconstructor, os.path.join(workdir, "coarse_codes.npz") if workdir else None,
                settings)
        if config.data.source != "synthetic_detail":
            from mofa.data import sources
            self.photo_codes()  # fails early, naming the settings
            self.photos = sources.make_source(config, model, split="train")

    def photo_codes(self) -> CoarseCodes:
        """The coarse codes of photos; an error naming the settings where there are none."""
        if self.coarse_codes is None:
            raise ValueError("photos have no ground-truth code: set detail.coarse_workdir to a "
                             "trained MoFA workdir and/or detail.coarse_fit_steps > 0 to fit "
                             "each photo")
        return self.coarse_codes

    def batch(self, step: int, batch_size: int, rows: slice = slice(None)) -> dict:
        """Batch `step`, or its `rows` (photos: only those are read; synthetic faces: the
        whole batch is drawn, then sliced)."""
        key = jax.random.fold_in(self.key, step)
        if self.photos is not None:
            photos = self.photos.batch(step, batch_size, rows)
            image = jnp.asarray(photos["image"])
            return {"image": image,
                    **coarse_inputs(self.model, self.coarse_codes(photos), self.camera)}
        full = detailed_batch(self.model, key, batch_size, self.config.image_size)
        full = jax.tree.map(lambda x: x[rows], full)
        if self.encoder is None:  # the true code's render is already there
            return {**{k: full[k] for k in ("image", "depth", "coarse_depth", "mask", "albedo",
                                            "landmarks")},
                    "illumination": full["code"].illumination}
        coarse = coarse_inputs(self.model, self.encoder(full["image"]), self.camera)
        # The truth is known only where the true face is, too.
        return {"image": full["image"], "depth": full["depth"],
                "depth_mask": coarse["mask"] * full["mask"], **coarse}


def train_detail(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Trains FineNet per `config` (phase by its loss weights), checkpointing to `workdir`.

    Resumes from the workdir's last checkpoint; a fresh run starts from
    detail.init_workdir's FineNet if set (phase 2 after phase 1). Returns the
    coarse-vs-fine synthetic errors over config.eval_batches batches (also written to
    workdir/eval.json; none if 0).
    """
    from mofa import metric_log

    workdir = os.path.abspath(workdir)
    os.makedirs(workdir, exist_ok=True)
    is_lead = jax.process_index() == 0
    if is_lead:
        with open(os.path.join(workdir, "config.json"), "w", encoding="utf-8") as f:
            f.write(config.to_json_best_effort(indent=2))
    weights = DetailWeights.from_config(config.loss)
    model = facemodel.load(config.face_model)
    camera = camera_for(config.image_size)
    parallel = train.DataParallel.create(config.batch_size)
    state = jax.device_put(create_state(config, jax.random.key(config.seed)), parallel.replicated)
    checkpoints = train.checkpoint_manager(workdir, config)
    state, start_step = train.restore_latest(checkpoints, state)
    init_workdir = config.detail.get("init_workdir", "")
    if start_step == 0 and init_workdir:
        _, init_state, _ = load_detail(init_workdir)
        state = state.replace(params=jax.device_put(init_state.params, parallel.replicated))
    source = _CoarseSource(config, model, camera, workdir)
    if (weights.depth or weights.normal) and source.photos is not None:
        raise ValueError("supervised detail losses need data.source='synthetic_detail'")
    step_fn = jax.jit(functools.partial(train_step, weights=weights), donate_argnums=(0,),
                      out_shardings=(parallel.replicated, parallel.replicated))
    writer = metric_log.MetricWriter(workdir, enabled=is_lead)
    state = train.run_steps(config, state, lambda state, batch, step: step_fn(state, batch, camera),
                            source, parallel, checkpoints, writer, start_step, desc="FineNet")
    results = {}
    params = train.local_copy(state.params)  # each process evaluates alone
    if config.eval_batches:
        results.update(evaluate_synthetic(model, state.apply_fn, params, config.image_size,
                                          config.eval_batches, config.eval_batch_size,
                                          encoder=source.encoder))
    eval_photos = config.detail.get("eval_photos", "")
    if eval_photos:
        results.update(evaluate_photos(model, state.apply_fn, params, eval_photos,
                                       source.photo_codes(), config.image_size,
                                       config.eval_batch_size))
    if results and is_lead:
        writer.write_scalars(config.num_steps, {f"eval/{k}": v for k, v in results.items()})
        with open(os.path.join(workdir, "eval.json"), "w", encoding="utf-8") as f:
            json.dump(results, f, indent=1)
    writer.close()
    return results


# --- outputs --------------------------------------------------------------------


def refine(apply_fn, params, image, coarse_depth, mask, camera: Camera) -> dict:
    """Refined depth (B, H, W) mm and its normal map (B, H, W, 3) from a coarse render."""
    image, coarse_depth, mask = (jnp.asarray(x, jnp.float32) for x in (image, coarse_depth, mask))
    depth = apply_fine(apply_fn, params, image, coarse_depth, mask, camera)
    return {"depth": depth, "normals": normals_from_depth(depth, camera, mask)}


def detail_mesh(depth: np.ndarray, mask: np.ndarray, camera: Camera
                ) -> tuple[np.ndarray, np.ndarray]:
    """One depth map (H, W) -> camera-space (vertices (N, 3) mm, triangles (T, 3)).

    Each 2x2 pixel block fully inside the mask gives two triangles, wound
    counter-clockwise as seen from the camera; its pixels' back-projections are the
    vertices (masked pixels in no such block would be unreferenced, so are left out).
    """
    depth, inside = np.asarray(depth, np.float32), np.asarray(mask) > 0.5
    if depth.shape != (camera.height, camera.width) or inside.shape != depth.shape:
        raise ValueError(f"depth {depth.shape} and mask {inside.shape} must both be "
                         f"({camera.height}, {camera.width}) like the camera")
    full = inside[:-1, :-1] & inside[:-1, 1:] & inside[1:, :-1] & inside[1:, 1:]
    used = np.zeros_like(inside)
    for dy in (0, 1):
        for dx in (0, 1):
            used[dy:dy + full.shape[0], dx:dx + full.shape[1]] |= full
    index = np.full(depth.shape, -1, np.int64)
    index[used] = np.arange(int(used.sum()))
    a, b = index[:-1, :-1][full], index[:-1, 1:][full]  # top-left, top-right
    c, d = index[1:, :-1][full], index[1:, 1:][full]  # bottom-left, bottom-right
    # Image rows run down (-y): a -> c -> b is counter-clockwise seen from +z.
    triangles = np.concatenate([np.stack([a, c, b], -1), np.stack([b, c, d], -1)])
    points = np.asarray(backproject(jnp.asarray(depth)[None], camera))[0]
    return points[used], triangles


def load_refiner(workdir: str, camera: Camera):
    """`refine` of a trained FineNet workdir for one face: (image (H, W, 3) linear RGB,
    coarse depth (H, W), mask (H, W)) -> {"depth", "normals"} numpy arrays."""
    config, state, _ = load_detail(workdir)
    if (camera.height, camera.width) != (config.image_size, config.image_size):
        raise ValueError(f"FineNet {workdir} works at {config.image_size} px, the crops are "
                         f"{camera.width} px (match --image-size)")
    run = jax.jit(lambda image, depth, mask: refine(state.apply_fn, state.params, image,
                                                    depth, mask, camera))

    def refiner(image, depth, mask) -> dict:
        out = run(*(jnp.asarray(x, jnp.float32)[None] for x in (image, depth, mask)))
        return {k: np.asarray(v)[0] for k, v in out.items()}

    return refiner


def write_detail(folder: str, refined: dict, mask, camera: Camera) -> None:
    """detail_depth.png (16-bit), detail_normals.png (n * 0.5 + 0.5) and detail_mesh.obj
    (camera space, mm) of one refined face."""
    from mofa import export, images

    export.write_depth_png(os.path.join(folder, "detail_depth.png"), refined["depth"], mask)
    normals = (np.asarray(refined["normals"]) * 0.5 + 0.5) * (np.asarray(mask)[..., None] > 0.5)
    images.save_png(os.path.join(folder, "detail_normals.png"), normals)
    vertices, triangles = detail_mesh(refined["depth"], mask, camera)
    export.write_obj(os.path.join(folder, "detail_mesh.obj"), vertices, triangles)
