"""Second-order spherical-harmonic lighting of Lambertian surfaces.

Illumination is given as the SH coefficients L_lm (9 x RGB) of the incident
radiance around the surface (distant light, camera space). Ramamoorthi and
Hanrahan (2001) show the irradiance is E(n) = sum_lm A_l L_lm Y_lm(n) with
A_0 = pi, A_1 = 2 pi / 3, A_2 = pi / 4, and a Lambertian surface of albedo rho
reflects radiance rho E(n) / pi. So uniform radiance 1 (L_00 = 1 / Y_00)
renders every surface at exactly its albedo: that is `ambient_light()`.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from mofa.facemodel.model import components

NUM_SH = 9

# Real SH basis constants, bands 0..2, in the order
# Y00, Y1-1 (y), Y10 (z), Y11 (x), Y2-2 (xy), Y2-1 (yz), Y20 (3z^2-1), Y21 (xz), Y22 (x^2-y^2).
Y00 = 0.5 * math.sqrt(1.0 / math.pi)
Y1 = math.sqrt(3.0 / (4.0 * math.pi))
Y2 = 0.5 * math.sqrt(15.0 / math.pi)
Y20 = 0.25 * math.sqrt(5.0 / math.pi)
Y22 = 0.25 * math.sqrt(15.0 / math.pi)

# Ramamoorthi-Hanrahan convolution constants A_l per coefficient.
BAND_FACTORS = np.array([math.pi] + [2.0 * math.pi / 3.0] * 3 + [math.pi / 4.0] * 5, np.float32)


def _basis_terms(normals: jax.Array) -> list:
    """The nine real SH basis values of unit directions (..., 3), each (...)."""
    if normals.shape[-1:] != (3,):
        raise ValueError(f"normals have shape {tuple(normals.shape)}, expected (..., 3)")
    x, y, z = components(normals)
    return [jnp.full_like(x, Y00),
            Y1 * y, Y1 * z, Y1 * x,
            Y2 * x * y, Y2 * y * z, Y20 * (3.0 * z * z - 1.0), Y2 * x * z, Y22 * (x * x - y * y)]


def sh_basis(normals: jax.Array) -> jax.Array:
    """(..., 3) unit directions -> (..., 9) real SH basis values."""
    return jnp.stack(_basis_terms(normals), axis=-1)


def _check_sh(sh_coeffs: jax.Array) -> None:
    if sh_coeffs.shape[-2:] != (NUM_SH, 3):
        raise ValueError(f"SH coefficients have shape {tuple(sh_coeffs.shape)}, expected (..., 9, 3)")


def irradiance(normals: jax.Array, sh_coeffs: jax.Array) -> jax.Array:
    """Irradiance E(n) (..., 3) at unit normals (..., 3) under radiance SH (..., 9, 3).

    `sh_coeffs` broadcasts against `normals` leading dims with one extra
    (e.g. normals (B, H, W, 3) and coefficients (B, 1, 1, 9, 3)).
    """
    _check_sh(sh_coeffs)
    # Per channel, a sum of nine products of basis and coefficient: one elementwise
    # loop, forward and backward. Stacking the basis and contracting it over k (and its
    # gradient's sums over the 3 channels) ran 3-5x slower on CPU.
    terms = [factor * term for factor, term in zip(BAND_FACTORS, _basis_terms(normals))]
    channels = []
    for c in range(3):
        total = terms[0] * sh_coeffs[..., 0, c]
        for k in range(1, NUM_SH):
            total = total + terms[k] * sh_coeffs[..., k, c]
        channels.append(total)
    return jnp.stack(channels, axis=-1)


def shade_lambertian(albedo: jax.Array, normals: jax.Array, sh_coeffs: jax.Array) -> jax.Array:
    """Reflected radiance albedo * E(n) / pi of a Lambertian surface."""
    return albedo * irradiance(normals, sh_coeffs) / math.pi


def ambient_light(intensity: float = 1.0, batch_shape=()) -> jax.Array:
    """SH coefficients of uniform radiance `intensity` (renders albedo * intensity)."""
    coeffs = jnp.zeros(tuple(batch_shape) + (NUM_SH, 3), jnp.float32)
    return coeffs.at[..., 0, :].set(intensity / Y00)


def directional_light(direction, ambient: float = 0.6, strength: float = 0.6,
                      batch_shape=()) -> jax.Array:
    """SH9 of uniform `ambient` radiance plus `strength` * max(cos, 0) around `direction`."""
    d = jnp.asarray(direction, jnp.float32)
    d = d / jnp.linalg.norm(d)
    # Radiance max(d.w, 0) has SH coefficients A_l Y_lm(d) (Funk-Hecke).
    lobe = sh_basis(d) * BAND_FACTORS
    coeffs = ambient_light(ambient)[..., :, 0] + strength * lobe
    return jnp.broadcast_to(coeffs[:, None], tuple(batch_shape) + (NUM_SH, 3))
