"""Refined depth, normal maps and meshes for `mofa reconstruct`."""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np

from mofa.render import Camera
from mofa.detail.geometry import backproject, normals_from_depth
from mofa.detail.model import apply_fine
from mofa.detail.training import load_detail


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
