"""Renders a `mofa reconstruct` mesh.glb as a 3D tool sees it (README figure).

python docs/glb_figure.py RECON/FACE/mesh.glb docs/glb_face.png

Reads the file back (`export.read_glb`: base mesh, morph targets, default weights,
vertex colours) and renders it with mofa's renderer in three views: neutral
(weights 0), the file's default weights (the fitted expression), and the same
turned 35 degrees.
"""

import sys

import jax.numpy as jnp
import numpy as np

from mofa import export, images, render
from mofa.render import sh


def main(path, out, size=320):
    rig = export.read_glb(path)
    base, targets, weights, colors = rig["positions"], rig["targets"], rig["weights"], rig["colors"]
    triangles, names = rig["triangles"], rig["names"]
    camera = render.Camera.from_fov(12.6, size, size)
    light = sh.directional_light(jnp.array([0.3, 0.4, 1.0]), ambient=0.7, strength=0.5)[None]
    tiles = []
    for w, yaw in ((np.zeros_like(weights), 0.0), (weights, 0.0), (weights, 35.0)):
        vertices = (base + np.einsum("k,kvc->vc", w, targets)) * 1000.0  # metres -> mm
        vertices = vertices - vertices.mean(0)
        c, s = np.cos(np.radians(yaw)), np.sin(np.radians(yaw))
        vertices = vertices @ np.array([[c, 0, -s], [0, 1, 0], [s, 0, c]], np.float32)
        vertices = vertices + [0.0, 0.0, -1100.0]
        out_ = render.render_mesh(jnp.asarray(vertices[None], jnp.float32),
                                  jnp.asarray(colors[None]), jnp.asarray(triangles, jnp.int32),
                                  camera, light, background=jnp.full((3,), 0.9))
        tiles.append(images.linear_to_srgb(np.asarray(out_.image[0])))
    images.save_png(out, images.grid(np.stack(tiles), columns=3))
    top = sorted(zip(weights, names), reverse=True)[:4]
    print("strongest weights:", ", ".join(f"{n} {v:.2f}" for v, n in top))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
