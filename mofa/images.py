"""Image helpers: colour transfer functions, grids and PNG output."""

from __future__ import annotations

import io
import os
import zlib

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image


def linear_to_srgb(linear: np.ndarray) -> np.ndarray:
    """IEC 61966-2-1 transfer function, input clipped to [0, 1]."""
    x = np.clip(np.asarray(linear, np.float32), 0.0, 1.0)
    return np.where(x <= 0.0031308, 12.92 * x, 1.055 * np.power(x, 1.0 / 2.4) - 0.055)


def srgb_to_linear(srgb):
    """The inverse transfer function, input clipped to [0, 1]: numpy in, numpy out; a JAX
    array (also traced, inside jit) in, a JAX array out."""
    xp = jnp if isinstance(srgb, jax.Array) else np
    x = xp.clip(xp.asarray(srgb, xp.float32), 0.0, 1.0)
    return xp.where(x <= 0.04045, x / 12.92, xp.power((x + 0.055) / 1.055, 2.4))


def bilinear_sample(image, points):
    """One image (H, W, C) sampled at pixel positions (..., 2) (pixel centres at +0.5),
    clamped to its border: numpy in, numpy out (photos of every size, no compile); a JAX
    array in (also traced), a JAX array out."""
    xp = jnp if isinstance(image, jax.Array) or isinstance(points, jax.Array) else np
    height, width = image.shape[:2]
    x = xp.clip(points[..., 0] - 0.5, 0.0, width - 1.0)
    y = xp.clip(points[..., 1] - 0.5, 0.0, height - 1.0)
    # The corners as floats first: the fractions keep the points' precision (numpy
    # promotes float32 minus int32 to float64: 1.3x a texture's photo sample).
    x0, y0 = xp.clip(xp.floor(x), 0, width - 2), xp.clip(xp.floor(y), 0, height - 2)
    fx, fy = (x - x0)[..., None], (y - y0)[..., None]
    x0, y0 = x0.astype(xp.int32), y0.astype(xp.int32)
    if xp is np:  # one flat index per point: numpy's take, not 2D fancy indexing (4x)
        flat = image.reshape(height * width, -1)
        at = lambda index: np.take(flat, index, axis=0)  # noqa: E731
        index = y0 * width + x0
        top = at(index) * (1 - fx) + at(index + 1) * fx
        bottom = at(index + width) * (1 - fx) + at(index + width + 1) * fx
        return (top * (1 - fy) + bottom * fy).reshape(points.shape[:-1] + image.shape[2:])
    top = image[y0, x0] * (1 - fx) + image[y0, x0 + 1] * fx
    bottom = image[y0 + 1, x0] * (1 - fx) + image[y0 + 1, x0 + 1] * fx
    return top * (1 - fy) + bottom * fy


def to_uint8(srgb: np.ndarray) -> np.ndarray:
    return (np.clip(srgb, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def grid(images: np.ndarray, columns: int | None = None, pad: int = 2,
         pad_value: float = 1.0) -> np.ndarray:
    """(N, H, W, C) -> one (rows*H, columns*W, C) image with `pad` pixels between tiles."""
    images = np.asarray(images)
    if images.ndim != 4:
        raise ValueError(f"images have shape {images.shape}, expected (N, H, W, C)")
    n, h, w, c = images.shape
    columns = columns or int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / columns))
    out = np.full((rows * (h + pad) + pad, columns * (w + pad) + pad, c), pad_value, images.dtype)
    for i in range(n):
        r, col = divmod(i, columns)
        y, x = pad + r * (h + pad), pad + col * (w + pad)
        out[y:y + h, x:x + w] = images[i]
    return out


# zlib level 1: a third of the time of PIL's default 6 (a 224 px overlay 1.7 against
# 4.9 ms, a 551 x 413 photo 12 against 43 ms), files 15-25% larger. Reconstruction
# writes several PNGs a face. zlib's run-length strategy (Z_RLE): on a face's images
# 1.1-1.9x faster still and their files 4-21% smaller (a 256 px texture 4.2 against
# 6.4 ms, 33 against 42 kB; a 551 x 413 photo 16.4 against 18.5 ms, 1% larger).
PNG_COMPRESS_LEVEL = 1
PNG_COMPRESS_TYPE = zlib.Z_RLE


def save_png(target, image: np.ndarray) -> None:
    """Writes a PNG to `target` (a path, its folder created, or a binary file object):
    floats as sRGB in [0, 1] (8-bit), uint8 and uint16 arrays as they are."""
    pixels = np.asarray(image)
    if pixels.dtype.kind == "f":
        pixels = to_uint8(pixels)
    if isinstance(target, (str, os.PathLike)):
        os.makedirs(os.path.dirname(os.path.abspath(target)), exist_ok=True)
    Image.fromarray(pixels).save(target, format="PNG", compress_level=PNG_COMPRESS_LEVEL,
                                  compress_type=PNG_COMPRESS_TYPE)


# A photo's overlay: photos are JPEGs, and a 3913 x 1901 one encoded in 25 ms at quality
# 90 (760 kB) against 540 ms as a PNG even at zlib level 1 (5.3 MB).
JPEG_QUALITY = 90


def jpeg_bytes(image: np.ndarray) -> bytes:
    """An 8-bit RGB image (floats as sRGB in [0, 1], or uint8) as a JPEG file's bytes."""
    pixels = np.asarray(image)
    if pixels.dtype.kind == "f":
        pixels = to_uint8(pixels)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue()


def png_bytes(image: np.ndarray) -> bytes:
    """The PNG file `save_png` writes, as bytes: for a file written to several places or
    embedded (the texture in a glTF)."""
    buffer = io.BytesIO()
    save_png(buffer, image)
    return buffer.getvalue()
