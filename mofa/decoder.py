"""The analytic decoder: a face model and a camera (and, with the multi-level model, the
corrective level's mesh operators) that turn a `FaceCode` into rendered outputs."""

from __future__ import annotations

from typing import Optional

import flax.struct

from mofa import corrective, facemodel
from mofa.code import FaceCode
from mofa.render import Camera, RenderOutput


@flax.struct.dataclass
class Decoder:
    """The decoder's arrays (a replicated pytree): face model, camera and, with the
    corrective level, its mesh operators."""

    face_model: facemodel.FaceModel
    camera: Camera
    mesh: Optional[corrective.MeshOperators] = None

    def render(self, code: FaceCode, space: Optional[dict] = None,
               coefficients: Optional[dict] = None, background=None) -> RenderOutput:
        """The rendered face of `code` (corrected by `space` and `coefficients` when the
        corrective level is on), composited over `background`."""
        return corrective.render_corrected(self.face_model, code, self.camera, space,
                                           coefficients, background=background)
