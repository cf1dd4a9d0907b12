"""Pure-JAX differentiable renderer: camera, SH shading, rasterizer, composition."""

from mofa.render.camera import (Camera, axis_angle_to_matrix, euler_to_matrix, project,
                                rigid_transform, rotation_6d_to_matrix)
from mofa.render.rasterizer import Fragments, barycentrics, interpolate, rasterize
from mofa.render.render import (RenderOutput, face_geometry, render_face, render_mesh,
                                vertex_visibility)
from mofa.render.sh import ambient_light, irradiance, sh_basis, shade_lambertian

__all__ = [
    "Camera", "Fragments", "RenderOutput", "ambient_light", "axis_angle_to_matrix",
    "barycentrics", "euler_to_matrix", "face_geometry", "interpolate", "irradiance", "project",
    "rasterize", "render_face", "render_mesh", "rigid_transform", "rotation_6d_to_matrix",
    "sh_basis", "shade_lambertian", "vertex_visibility",
]
