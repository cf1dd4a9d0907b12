"""Which model vertex a 2D detector's landmark is, measured on renders of the model.

A 68-point detector's landmark is a semantic point ("the jaw below the mouth
corner", "the top of the brow arc"); a model's `landmark_indices` are one
author's reading of the same semantics. Where the two disagree by a few
millimetres, a fit bends identity and expression to reconcile them and the
shape gets worse than the mean face. `calibrate` renders random near-frontal
faces of the model, runs the detector on them, and for every landmark picks the
vertex near the model's own whose projection tracks the detections best
(least mean squared distance over the faces, in inter-ocular units), and the
residual spread of each landmark. The fit then uses those vertices, and weights
each landmark by its inverse residual variance (`LandmarkTable.weights`), so the
detector's loose jaw and brow points count less than its eye corners.

Near-frontal views (|yaw| <= 12 deg) keep the jaw points off the occluding
contour, which `fitting.contour_candidates` handles on turned faces. The
detector is less precise on turned faces, so the noise level the fit weights
landmarks by is measured again over the pose range reconstruction sees
(`pose_noise`, `POSE_RANGE`), and so is its lean toward the average face
(`shrinkage`), which the fit models (`fitting.as_detected`). Tables for
the shipped models and the MediaPipe detector are in `landmark_tables.py`,
written by `python -m mofa.landmark_calibration` (see `main`).
"""

from __future__ import annotations

import dataclasses
from typing import Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from mofa import render
from mofa.code import DEFAULT_FOV_DEGREES, random_code
from mofa.facemodel import NUM_LANDMARKS, FaceModel
from mofa.render import camera as camera_lib

EYE_CORNERS = (36, 45)  # outer eye corners: the inter-ocular unit
# Outer-eye-corner distance / crop size in the reconstruction crop framing
# (`faces.face_crop`), measured: 0.36 on frontal faces, 0.33 over yaw +-45 deg.
IOD_PER_CROP = 0.36
# (max |yaw|, max |pitch|) in degrees of the faces reconstruction is measured on
# (benchmarks/ict_benchmark.py) and `pose_noise` is measured over.
POSE_RANGE = (45.0, 20.0)
# The jaw landmarks slide along the silhouette in a fit (`fitting.contour_candidates`),
# so their fixed-vertex residuals on turned faces overstate what the fit sees.
_JAW = 17


@dataclasses.dataclass(frozen=True)
class LandmarkTable:
    """A detector's 68 landmarks as model vertices, with their residual spread."""

    vertices: tuple  # (68,) vertex indices
    sigma: tuple  # (68,) RMS detector-to-vertex distance, inter-ocular units
    num_vertices: int  # of the model the table was measured on (checked on use)
    # How many of the 136 coordinates' errors are independent: the participation
    # ratio of the whitened residuals' covariance. A detector's errors are strongly
    # correlated (a whole jaw line or brow shifts together), so 136 squared residuals
    # carry the evidence of only this many independent ones.
    independent: float = 136.0
    # The detector's noise over `POSE_RANGE` relative to `sigma` (measured near-frontal),
    # on the same vertices: scales the noise level the fit weights landmarks by.
    pose_noise: float = 1.0
    # How far the detections sit from the face toward the same face with the mean
    # identity / the neutral expression, over `POSE_RANGE` (`shrinkage`): a learned
    # detector's landmarks lean toward the average face.
    identity_shrink: float = 0.0
    expression_shrink: float = 0.0

    def weights(self) -> np.ndarray:
        """(68,) inverse-variance landmark weights, mean 1 (the overall landmark weight
        stays the fit's calibrated one; only the share between landmarks changes)."""
        w = 1.0 / np.square(np.asarray(self.sigma, np.float64))
        return (w / w.mean()).astype(np.float32)

    def crop_sigma(self) -> float:
        """The detector noise per coordinate in crop units that the inverse-variance
        weights (mean 1) amount to: 1 / sqrt(mean(1 / sigma^2)), per axis (/ sqrt 2),
        at the level of `POSE_RANGE` (`pose_noise`)."""
        s = np.asarray(self.sigma, np.float64)
        return float(self.pose_noise * IOD_PER_CROP / np.sqrt(np.mean(1.0 / s**2))
                     / np.sqrt(2.0))

    def independent_fraction(self) -> float:
        return float(self.independent) / (2.0 * NUM_LANDMARKS)

    def applies_to(self, model: FaceModel) -> bool:
        return model.num_vertices == self.num_vertices


class Detections(NamedTuple):
    """A detector's landmarks on renders of known faces (`detect_on_renders`), per face
    the detector found; vertices are the face model's, positions in pixels."""

    detections: np.ndarray  # (N, 68, 2)
    projected: np.ndarray  # (N, V, 2) the rendered face's vertices
    visible: np.ndarray  # (N, V) bool
    # (N, V, 2) how each vertex's projection moves when the face's identity is set to
    # the mean / its expression to neutral, pose kept (`shrinkage`).
    toward_mean_identity: np.ndarray
    toward_neutral: np.ndarray


def detect_on_renders(model: FaceModel, detector: Callable, faces: int = 160, seed: int = 0,
                      image_size: int = 224, render_model: Optional[FaceModel] = None,
                      batch: int = 16, max_yaw_degrees: float = 12.0,
                      max_pitch_degrees: float = 10.0) -> Detections:
    """Renders `faces` random faces (near-frontal by default) and detects them; vertices
    are those of `model` (the first V of `render_model`, e.g. a larger region of the
    same mesh, if given)."""
    from mofa import fitting, images
    from mofa.data import synthetic

    shown = render_model or model
    camera = render.Camera.from_fov(DEFAULT_FOV_DEGREES, image_size, image_size)
    draw = jax.jit(render.render_face)

    @jax.jit
    def moves(code):  # projections with the mean identity / neutral expression - as is
        project = lambda c: camera_lib.project(  # noqa: E731
            render.face_geometry(model, c)[0], camera)[..., :2]
        base = project(code)
        return (project(fitting.as_detected(model, code, identity_shrink=1.0)) - base,
                project(fitting.as_detected(model, code, expression_shrink=1.0)) - base)

    key = jax.random.key(seed)
    found_rows, detections = [], []
    for start in range(0, faces, batch):
        k_code, k_bg, k_dist = jax.random.split(jax.random.fold_in(key, start), 3)
        code = random_code(shown, k_code, (batch,), max_yaw_degrees=max_yaw_degrees,
                           max_pitch_degrees=max_pitch_degrees, max_roll_degrees=5.0,
                           expression_scale=0.5, shift_mm=15.0)
        distance = jax.random.uniform(k_dist, (batch,), minval=1300.0, maxval=1700.0)
        code = code.replace(translation=code.translation.at[:, 2].set(-distance))
        background = synthetic.random_backgrounds(k_bg, batch, image_size, image_size)
        out = draw(shown, code, camera, background=background)
        photos = images.to_uint8(images.linear_to_srgb(np.clip(np.asarray(out.image), 0, 1)))
        n = model.num_vertices
        mean_identity, neutral = jax.device_get(moves(code))
        for i in range(batch):
            found = detector(photos[i])
            if len(found) != 1:
                continue
            detections.append(np.asarray(found[0], np.float32)[:, :2])
            found_rows.append((np.asarray(out.screen_vertices[i, :n, :2]),
                               np.asarray(out.vertex_visibility[i, :n]) > 0.5,
                               mean_identity[i], neutral[i]))
    if not detections:
        raise ValueError("the detector found no face on any render")
    return Detections(np.stack(detections), *(np.stack(column) for column in zip(*found_rows)))


def calibrate(model: FaceModel, detections: np.ndarray, projected: np.ndarray,
              visible: np.ndarray, radius_mm: float = 20.0,
              min_visible: float = 0.9) -> LandmarkTable:
    """The best vertex of each landmark near the model's own, and its spread.

    detections (N, 68, 2), projected (N, V, 2), visible (N, V): `detect_on_renders`.
    Candidates: vertices within `radius_mm` of the model's landmark vertex on the
    mean face, visible in at least `min_visible` of the faces. Distances are in
    units of each face's inter-ocular distance (detected outer eye corners); the
    worst 5% of faces per landmark are trimmed (detector failures).
    """
    if detections.shape[1:] != (NUM_LANDMARKS, 2) or len(projected) != len(detections):
        raise ValueError(f"detections have shape {detections.shape}, projected "
                         f"{projected.shape}: expected (N, 68, 2) and (N, V, 2)")
    mean = np.asarray(model.mean_shape)
    own = np.asarray(model.landmark_indices)
    iod = np.linalg.norm(detections[:, EYE_CORNERS[0]] - detections[:, EYE_CORNERS[1]], axis=-1)
    seen = visible.mean(0) >= min_visible
    vertices, sigma, residuals = [], [], []
    for l in range(NUM_LANDMARKS):
        near = np.nonzero((np.linalg.norm(mean - mean[own[l]], axis=-1) <= radius_mm) & seen)[0]
        if not len(near):
            near = np.asarray([own[l]])
        squared = np.sum((projected[:, near] - detections[:, l, None]) ** 2, -1) / iod[:, None] ** 2
        keep = np.sort(squared, axis=0)[: max(1, int(np.ceil(0.95 * len(squared))))]
        cost = keep.mean(0)
        best = int(np.argmin(cost))
        vertices.append(int(near[best]))
        sigma.append(float(np.sqrt(cost[best])))
        residuals.append((projected[:, near[best]] - detections[:, l]) / iod[:, None])
    whitened = (np.stack(residuals, 1) / (np.asarray(sigma)[None, :, None] / np.sqrt(2.0)))
    covariance = np.cov(whitened.reshape(len(whitened), -1).T)
    # Participation ratio tr(C)^2 / tr(C^2), with tr(C^2) corrected for the sample
    # size n (E tr(S^2) = (1 + 1/n) tr(C^2) + tr(C)^2 / n): uncorrected, 160 faces of
    # independent noise would read as ~73 independent coordinates, not 136.
    n, trace = len(whitened), np.trace(covariance)
    squared = max((np.sum(covariance**2) - trace**2 / n) / (1.0 + 1.0 / n), trace**2 / 136.0)
    independent = float(trace**2 / squared)
    return LandmarkTable(tuple(vertices), tuple(sigma), model.num_vertices,
                         round(independent, 2))


def residual_level(table: LandmarkTable, detections: np.ndarray, projected: np.ndarray
                   ) -> float:
    """RMS of the non-jaw residuals of `table`'s vertices, in units of their own sigma
    (so 1 where the detections are as precise as the table says); the 5% worst faces
    per landmark are left out, as in `calibrate`."""
    iod = np.linalg.norm(detections[:, EYE_CORNERS[0]] - detections[:, EYE_CORNERS[1]], axis=-1)
    vertices = np.asarray(table.vertices)[_JAW:]
    squared = (np.sum((projected[:, vertices] - detections[:, _JAW:]) ** 2, -1)
               / iod[:, None] ** 2)
    keep = np.sort(squared, axis=0)[: max(1, int(np.ceil(0.95 * len(squared))))]
    return float(np.sqrt(np.mean(keep.mean(0) / np.square(np.asarray(table.sigma)[_JAW:]))))


def pose_noise(table: LandmarkTable, frontal: tuple, posed: tuple) -> float:
    """How much noisier the detector is over `POSE_RANGE` than near-frontal, on `table`'s
    vertices: the ratio of `residual_level` on `posed` to that on `frontal` renders,
    each (detections, projected vertices) from `detect_on_renders`."""
    return residual_level(table, *posed) / residual_level(table, *frontal)


def shrinkage(table: LandmarkTable, found: Detections) -> tuple:
    """(identity_shrink, expression_shrink): the least-squares fractions by which the
    detections sit from the rendered face toward the same face with the mean identity
    and with the neutral expression, on `table`'s non-jaw vertices (the jaw slides in a
    fit), in inter-ocular units. Each landmark's mean residual is removed first (a
    constant offset is the table's vertex choice, not shrinkage), and the 5% of faces
    with the largest residuals are left out (detector failures)."""
    vertices = np.asarray(table.vertices)[_JAW:]
    iod = np.linalg.norm(found.detections[:, EYE_CORNERS[0]]
                         - found.detections[:, EYE_CORNERS[1]], axis=-1)[:, None, None]
    residual = (found.detections[:, _JAW:] - found.projected[:, vertices]) / iod
    keep = np.mean(residual**2, (1, 2))
    keep = keep <= np.quantile(keep, 0.95)
    centred = lambda x: x[keep] - x[keep].mean(0)  # noqa: E731
    moves = [centred(m[:, vertices] / iod) for m in (found.toward_mean_identity,
                                                     found.toward_neutral)]
    design = np.stack([m.ravel() for m in moves], 1)
    coefficients, *_ = np.linalg.lstsq(design, centred(residual).ravel(), rcond=None)
    return float(coefficients[0]), float(coefficients[1])


def table_for(model: FaceModel, detector: str = "mediapipe") -> Optional[LandmarkTable]:
    """The shipped table of a model (by name) for a detector (`faces.DETECTORS`), if it
    matches the model."""
    from mofa import landmark_tables

    if detector not in landmark_tables.BY_DETECTOR:
        raise ValueError(f"unknown detector {detector!r}: expected one of "
                         f"{', '.join(landmark_tables.BY_DETECTOR)}")
    entry = landmark_tables.BY_DETECTOR[detector].get(model.name)
    if entry is None:
        return None
    table = LandmarkTable(tuple(entry["vertices"]), tuple(entry["sigma"]), entry["num_vertices"],
                          entry["independent"], entry.get("pose_noise", 1.0),
                          entry.get("identity_shrink", 0.0), entry.get("expression_shrink", 0.0))
    return table if table.applies_to(model) else None


def detector_landmarks(model: FaceModel) -> Optional["fitting.DetectorLandmarks"]:
    """MediaPipe's calibrated landmarks on `model` (its shipped table, `table_for`, with
    the jaw sliding along `fitting.contour_candidates`) for scoring renders in training
    on photos, or None where the model has no table. Built once, outside jit."""
    from mofa import fitting

    table = table_for(model)
    if table is None:
        return None
    measured = model.replace(landmark_indices=jnp.asarray(table.vertices, jnp.int32))
    contour = fitting.contour_candidates(measured)
    return fitting.DetectorLandmarks(
        indices=jnp.asarray(np.concatenate([table.vertices, contour.reshape(-1)]), jnp.int32),
        weights=jnp.asarray(table.weights()),
        geometry=fitting.landmark_geometry(measured, contour),
        contour_shape=tuple(contour.shape), identity_shrink=float(table.identity_shrink),
        expression_shrink=float(table.expression_shrink))


def main(argv=None) -> None:
    """Measures a detector's table of a face model and prints it as a landmark_tables entry.

      python -m mofa.landmark_calibration --face-model builtin [--detector dlib]
      python -m mofa.landmark_calibration --face-model ict:PATH --render-region face_and_head
    """
    import argparse
    import json

    from mofa import facemodel
    from mofa.data import faces as faces_lib

    parser = argparse.ArgumentParser(description=main.__doc__.splitlines()[0])
    parser.add_argument("--face-model", default="builtin")
    parser.add_argument("--detector", default="mediapipe", choices=sorted(faces_lib.DETECTORS))
    parser.add_argument("--render-region", default=None,
                        help="ICT: render this larger region (e.g. face_and_head) of the mesh")
    parser.add_argument("--faces", type=int, default=160)
    parser.add_argument("--seed", type=int, default=101)
    parser.add_argument("--pose-range-only", action="store_true",
                        help="measure only the shipped table's pose_noise and shrinkage")
    args = parser.parse_args(argv)
    model = facemodel.load(args.face_model)
    shown = (facemodel.load(args.face_model, region=args.render_region) if args.render_region
             else None)
    shipped = table_for(model, args.detector)
    if args.pose_range_only and shipped is None:
        parser.error(f"--pose-range-only: no shipped {args.detector} table for {model.name}")
    # dlib: a face its HOG box misses is left out, not measured with MediaPipe's points.
    detector = faces_lib.make_detector(
        args.detector, max_faces=1, **({"fallback": False} if args.detector == "dlib" else {}))
    frontal = detect_on_renders(model, detector, args.faces, args.seed, render_model=shown)
    max_yaw, max_pitch = POSE_RANGE
    posed = detect_on_renders(model, detector, args.faces, args.seed + 1, render_model=shown,
                              max_yaw_degrees=max_yaw, max_pitch_degrees=max_pitch)
    table = shipped if args.pose_range_only else calibrate(
        model, frontal.detections, frontal.projected, frontal.visible)
    noise = round(pose_noise(table, frontal[:2], posed[:2]), 3)
    shrink = [round(x, 3) for x in shrinkage(table, posed)]
    pose_range = (f"over yaw +-{max_yaw:g}, pitch +-{max_pitch:g} ({len(posed.detections)} "
                  f"faces) the noise is {noise}x, the detections shrink identity by "
                  f"{shrink[0]} and expression by {shrink[1]}")
    if args.pose_range_only:
        print(f"{pose_range} ({len(frontal.detections)} near-frontal faces)")
        return
    before = calibrate(model, frontal.detections, frontal.projected, frontal.visible,
                       radius_mm=0.0)
    print(f"# {len(frontal.detections)} faces; median sigma (inter-ocular): model's own "
          f"vertices {np.median(before.sigma):.4f}, calibrated {np.median(table.sigma):.4f}; "
          f"independent coordinates {table.independent:.1f} of 136; {pose_range}"
          + (f"; {detector.misses} faces without a dlib box left out"
             if hasattr(detector, "misses") else ""))
    print(json.dumps({model.name: {"vertices": list(table.vertices),
                                   "sigma": [round(s, 4) for s in table.sigma],
                                   "num_vertices": table.num_vertices,
                                   "independent": table.independent,
                                   "pose_noise": noise, "identity_shrink": shrink[0],
                                   "expression_shrink": shrink[1]}}))


if __name__ == "__main__":
    main()
