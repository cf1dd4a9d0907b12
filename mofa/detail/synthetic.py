"""Synthetic detail for the supervised phase: wrinkle-like depth detail on rendered faces,
the skin weight, albedo renders and the coarse inputs of FineNet."""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from mofa.code import DEFAULT_FOV_DEGREES, FaceCode
from mofa.data import synthetic
from mofa.facemodel import FaceModel
from mofa.render import Camera, render_face, sh
from mofa.detail.geometry import normals_from_depth


# Landmark indices (iBUG 68) locating the detail regions.
_BROWS = np.arange(17, 27)


_LEFT_EYE_OUTER, _RIGHT_EYE_OUTER = 36, 45


_EYES = np.arange(36, 48)


# Brows, eyes and lips: not skin.
_NON_SKIN = np.concatenate([np.arange(17, 27), np.arange(36, 68)])


# Mean of the groove profile (1 - |sin t|)^4 over a period, subtracted to centre it.
_GROOVE_MEAN = float(np.mean((1.0 - np.abs(np.sin(np.linspace(0.0, np.pi, 4096, endpoint=False))))
                             ** 4))


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
