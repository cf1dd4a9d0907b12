"""FineNet: a small U-Net that refines the coarse depth with a per-pixel residual (mm)."""

from __future__ import annotations


import flax.linen as nn
import jax
import jax.numpy as jnp

from mofa.render import Camera
from mofa.detail.geometry import normals_from_depth, shading_ratio


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
