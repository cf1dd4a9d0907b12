"""The renderer: project -> rasterize -> interpolate -> shade, nothing else."""

from __future__ import annotations

import functools
from typing import Optional

import flax.struct
import jax
import jax.numpy as jnp

from mofa import facemodel
from mofa.facemodel import FaceModel
from mofa.render import camera as camera_lib
from mofa.render import rasterizer as raster
from mofa.render import sh


@flax.struct.dataclass
class RenderOutput:
    image: jax.Array  # (B, H, W, 3) linear RGB, background composited
    mask: jax.Array  # (B, H, W) 1.0 where the mesh covers the pixel centre
    depth: jax.Array  # (B, H, W) camera distance along the view axis, mm; 0 on background
    normals: jax.Array  # (B, H, W, 3) unit camera-space normals; 0 on background
    screen_vertices: jax.Array  # (B, V, 3) (x_pixel, y_pixel, depth)
    vertex_colors: jax.Array  # (B, V, 3) per-vertex shaded colour (for vertex-sampled losses)
    vertex_visibility: jax.Array  # (B, V) bool: in the image, front-facing, passes the z-test
    landmarks: Optional[jax.Array]  # (B, L, 2) pixel positions of the landmark vertices
    triangle_id: jax.Array  # (B, H, W) int32, -1 on background
    # (B, H, W) the interpolated per-vertex `vertex_weight` (e.g. a face model's skin
    # region) where the mesh covers the pixel, 0 elsewhere; equal to `mask` without one.
    region: Optional[jax.Array] = None


def vertex_visibility(screen_vertices, normals_camera, vertices_camera, depth_map, mask,
                      rel_tolerance: float = 0.005) -> jax.Array:
    """Visible vertices: inside the image, facing the camera, not behind the depth map."""
    _, height, width = depth_map.shape
    px = jnp.floor(screen_vertices[..., 0]).astype(jnp.int32)
    py = jnp.floor(screen_vertices[..., 1]).astype(jnp.int32)
    in_image = (px >= 0) & (px < width) & (py >= 0) & (py < height)
    px, py = jnp.clip(px, 0, width - 1), jnp.clip(py, 0, height - 1)
    at = jax.vmap(lambda img, y, x: img[y, x])
    surface_depth, covered = at(depth_map, py, px), at(mask, py, px) > 0
    depth = screen_vertices[..., 2]
    facing = facemodel.dot_last(normals_camera, vertices_camera) < 0.0
    return in_image & covered & facing & (depth <= surface_depth * (1.0 + rel_tolerance))


# Evaluated without a derivative, a batch is rendered a part at a time (`lax.map`), so
# each part's per-pixel arrays stay in the CPU's caches: parts of at most PART_PIXELS
# pixels (a power of two of images, at most MAX_PART). Measured (ms an image, whole batch
# -> default parts): 64 x 128 px 2.74 -> 1.63 (8 images), 16 x 224 px 6.96 -> 3.48 (2),
# 64 x 64 px 1.83 -> 1.39 (16); README, "Stop 54: rendering in parts". Differentiated,
# the whole batch at once: in parts of 8 the gradient ran 4-20% slower.
PART_PIXELS = 2 ** 17
MAX_PART = 16


def part_size(height: int, width: int) -> int:
    """Images per part of an evaluated render at this image size."""
    part = 1
    while part * 2 <= MAX_PART and part * 2 * height * width <= PART_PIXELS:
        part *= 2
    return part


def render_mesh(vertices_camera: jax.Array, albedo: jax.Array, triangles: jax.Array,
                camera: camera_lib.Camera, illumination: jax.Array,
                background: Optional[jax.Array] = None,
                landmark_indices: Optional[jax.Array] = None,
                slots_per_pixel: float = 2.0,
                vertex_weight: Optional[jax.Array] = None) -> RenderOutput:
    """Renders a batch of camera-space meshes (B, V, 3) with per-vertex albedo (B, V, 3).

    illumination: (B, 9, 3) SH radiance; background: (B, H, W, 3), (3,) or None (black);
    vertex_weight: (V,) or (B, V) weights interpolated into `RenderOutput.region`.
    """
    if vertices_camera.ndim != 3 or vertices_camera.shape[-1] != 3:
        raise ValueError(f"vertices have shape {tuple(vertices_camera.shape)}, expected (B, V, 3)")
    if albedo.shape != vertices_camera.shape:
        raise ValueError(f"albedo has shape {tuple(albedo.shape)}, expected "
                         f"{tuple(vertices_camera.shape)} like the vertices")
    batch = vertices_camera.shape[0]
    if illumination.shape != (batch, sh.NUM_SH, 3):
        raise ValueError(f"illumination has shape {tuple(illumination.shape)}, "
                         f"expected ({batch}, 9, 3)")
    return _render_in_parts(vertices_camera, albedo, triangles, camera, illumination,
                            background, landmark_indices, vertex_weight, slots_per_pixel)


@functools.partial(jax.custom_jvp, nondiff_argnums=(8,))
def _render_in_parts(vertices_camera, albedo, triangles, camera, illumination, background,
                     landmark_indices, vertex_weight, slots_per_pixel):
    batch, part = vertices_camera.shape[0], part_size(camera.height, camera.width)
    if batch <= part:
        return _render_batch(vertices_camera, albedo, triangles, camera, illumination,
                             background, landmark_indices, vertex_weight, slots_per_pixel)

    # The batch's own arguments, split; the rest (topology, a shared background, weights
    # or camera) is shared by every part.
    own_focal = jnp.ndim(camera.focal) == 1 and jnp.shape(camera.focal)[0] == batch  # not ()
    own_point = (jnp.ndim(camera.principal_point) == 2
                 and jnp.shape(camera.principal_point)[0] == batch)  # (B, 2), not (2,)
    batched = (vertices_camera, albedo, illumination,
               background if background is not None and jnp.ndim(background) == 4 else None,
               vertex_weight if vertex_weight is not None and jnp.ndim(vertex_weight) == 2
               else None, camera.focal if own_focal else None,
               camera.principal_point if own_point else None)

    def render_part(piece):
        v, a, light, bg, weight, focal, point = piece
        cam = camera.replace(focal=camera.focal if focal is None else focal,
                             principal_point=camera.principal_point if point is None else point)
        return _render_batch(v, a, triangles, cam, light, background if bg is None else bg,
                             landmark_indices, vertex_weight if weight is None else weight,
                             slots_per_pixel)

    whole = batch // part * part
    parts = jax.tree.map(lambda x: x[:whole].reshape((-1, part) + x.shape[1:]), batched)
    out = jax.tree.map(lambda x: x.reshape((whole,) + x.shape[2:]),
                       jax.lax.map(render_part, parts))
    if whole == batch:
        return out
    rest = render_part(jax.tree.map(lambda x: x[whole:], batched))
    return jax.tree.map(lambda a, b: jnp.concatenate([a, b]), out, rest)


@_render_in_parts.defjvp
def _render_in_parts_jvp(slots_per_pixel, primals, tangents):
    return jax.jvp(lambda *args: _render_batch(*args, slots_per_pixel), primals, tangents)


def _render_batch(vertices_camera, albedo, triangles, camera, illumination, background,
                  landmark_indices, vertex_weight, slots_per_pixel) -> RenderOutput:
    height, width = camera.height, camera.width
    normals = facemodel.vertex_normals(vertices_camera, triangles)
    screen = camera_lib.project(vertices_camera, camera)
    fragments = raster.rasterize(screen, triangles, height=height, width=width,
                                 slots_per_pixel=slots_per_pixel)
    tri_id = fragments.triangle_id
    bary = raster.barycentrics(screen, triangles, tri_id)
    if vertex_weight is None:
        vertex_weight = jnp.ones(vertices_camera.shape[:2], vertices_camera.dtype)
    vertex_weight = jnp.broadcast_to(vertex_weight, vertices_camera.shape[:2])
    attributes = jnp.concatenate([albedo, normals, screen[..., 2:], vertex_weight[..., None]],
                                 axis=-1)
    pixels = raster.interpolate(attributes, triangles, tri_id, bary)
    mask = (tri_id >= 0).astype(vertices_camera.dtype)
    pixel_normals = facemodel.safe_normalize(pixels[..., 3:6]) * mask[..., None]
    shaded = sh.shade_lambertian(pixels[..., :3], pixel_normals, illumination[:, None, None])
    if background is None:
        background = jnp.zeros((3,), shaded.dtype)
    image = jnp.where(mask[..., None] > 0, shaded, background)
    depth = pixels[..., 6] * mask
    landmarks = None if landmark_indices is None else screen[:, landmark_indices, :2]
    vertex_colors = sh.shade_lambertian(albedo, normals, illumination[:, None])
    visibility = vertex_visibility(jax.lax.stop_gradient(screen), jax.lax.stop_gradient(normals),
                                   jax.lax.stop_gradient(vertices_camera),
                                   jax.lax.stop_gradient(depth), mask)
    return RenderOutput(image=image, mask=mask, depth=depth, normals=pixel_normals,
                        screen_vertices=screen, vertex_colors=vertex_colors,
                        vertex_visibility=visibility,
                        landmarks=landmarks, triangle_id=tri_id,
                        region=jax.lax.stop_gradient(pixels[..., 7]) * mask)


def face_geometry(model: FaceModel, code) -> tuple[jax.Array, jax.Array]:
    """Camera-space vertices and per-vertex albedo (B, V, 3) of a FaceCode."""
    vertices = facemodel.shape(model, code.identity, code.expression)
    rotation = camera_lib.euler_to_matrix(code.rotation)
    vertices_camera = camera_lib.rigid_transform(vertices, rotation, code.translation)
    return vertices_camera, facemodel.albedo(model, code.reflectance)


def render_face(model: FaceModel, code, camera: camera_lib.Camera,
                background: Optional[jax.Array] = None, slots_per_pixel: float = 2.0
                ) -> RenderOutput:
    """Renders a batch of FaceCodes (leading dim B) of `model` through `camera`."""
    if len(code.batch_shape) != 1:
        raise ValueError(f"FaceCode has batch shape {code.batch_shape}, expected (B,)")
    code.validate(model)
    vertices_camera, albedo = face_geometry(model, code)
    return render_mesh(vertices_camera, albedo, model.triangles, camera, code.illumination,
                       background=background, landmark_indices=model.landmark_indices,
                       slots_per_pixel=slots_per_pixel, vertex_weight=model.face_mask)
