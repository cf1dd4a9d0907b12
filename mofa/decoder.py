"""The analytic decoder: a face model and a camera (and, with the multi-level model, the
corrective level's mesh operators) that turn a `FaceCode` into rendered outputs."""

from __future__ import annotations

from typing import Any, Optional

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
    # The calibrated detector whose points the batches carry (photo sources): a
    # `fitting.DetectorLandmarks` (`landmark_calibration.detector_landmarks`); None
    # where they are the model's own landmark vertices (rendered faces).
    detector: Optional[Any] = None

    def render(self, code: FaceCode, space: Optional[dict] = None,
               coefficients: Optional[dict] = None, background=None) -> RenderOutput:
        """The rendered face of `code` (corrected by `space` and `coefficients` when the
        corrective level is on), composited over `background`."""
        return corrective.render_corrected(self.face_model, code, self.camera, space,
                                           coefficients, background=background)

    def scored_landmarks(self, code: FaceCode, out: RenderOutput, detected, weight):
        """(points (B, 68, 2), weights (B, 68)): the rendered faces' landmarks as the
        batch's landmarks `detected` define them, and their weights."""
        if self.detector is None:
            return out.landmarks, weight
        return (self.detector.points(self.camera, code, out.screen_vertices, detected),
                weight * self.detector.weights)
