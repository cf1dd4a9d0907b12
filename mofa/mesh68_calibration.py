"""Where annotators put the 68 points on MediaPipe's face mesh, measured on photos.

A vertex of MediaPipe's mesh is not an annotated landmark: annotators put the jaw
points on the visible outline of the cheek and chin (the far side's on the occluding
contour of a turned head) and the brows and nose where the 68-point convention
(Multi-PIE, iBUG 300-W) says, and the mesh's nearest vertices sit elsewhere, up to a
fifth of the eye-corner distance on the jaw. `fit` measures, for every point, the
combination of offsets from its vertex (`faces.MESH_TO_68`) to the nearest
`neighbours` vertices that reproduces a teacher's points, with a first-order change
with `faces.head_turn`, by ridge-regularised least squares in inter-ocular units.

The teacher is dlib's 68-point predictor (trained on iBUG 300-W annotations, so it
places points by the annotators' convention), run on the same photos, each also
mirrored and turned in the image plane by +-12 deg. The table `mesh68_table.py` was
written by

    python -m mofa.mesh68_calibration --photos ../shared/data/faces-dev \\
        --out mofa/data/mesh68_table.py

(needs `mofa[dlib]`). The table holds our measured weights only, no part of dlib's
model; README ("Stop 52") gives the NME against hand annotations, which the
calibration never sees. `--teacher annotations` measures it from photos with their
own iBUG 68-point annotations instead (`NAME.pts` / `NAME.ljson` beside each photo).
"""

from __future__ import annotations

import argparse
import glob
import os
import textwrap
import types
from typing import Iterable, Optional

import numpy as np

from mofa.data import faces as faces_lib

NEIGHBOURS = 16
RIDGE = 0.01
ROTATIONS_DEGREES = (0.0, -12.0, 12.0)


# Multi-PIE 68-point order mirrored (image left <-> right): the annotation of a mirrored
# photo, for teachers that are annotations rather than a detector run on the mirror.
MIRROR_68 = (tuple(range(16, -1, -1)) + tuple(range(26, 16, -1)) + (27, 28, 29, 30)
             + (35, 34, 33, 32, 31) + (45, 44, 43, 42, 47, 46) + (39, 38, 37, 36, 41, 40)
             + (54, 53, 52, 51, 50, 49, 48, 59, 58, 57, 56, 55) + (64, 63, 62, 61, 60, 67, 66, 65))


def rotated(image: np.ndarray, degrees: float, points: Optional[np.ndarray] = None):
    """The image turned counter-clockwise by `degrees` about its centre onto a canvas
    that holds all of it (PIL's `rotate(expand=True)`), and (x, y) points moved with it."""
    from PIL import Image

    turned = np.asarray(Image.fromarray(image).rotate(degrees, resample=Image.BILINEAR,
                                                      expand=True))
    if points is None:
        return turned, None
    angle = np.radians(degrees)
    centre = np.array([image.shape[1], image.shape[0]]) / 2.0
    new_centre = np.array([turned.shape[1], turned.shape[0]]) / 2.0
    x, y = (np.asarray(points, np.float64) - centre).T
    moved = np.stack([x * np.cos(angle) + y * np.sin(angle),
                      -x * np.sin(angle) + y * np.cos(angle)], -1)
    return turned, moved + new_centre


def _annotation(path: str) -> Optional[np.ndarray]:
    from mofa import scan_eval

    stem = os.path.splitext(path)[0]
    for suffix in (".pts", ".ljson"):
        if os.path.exists(stem + suffix):
            points = scan_eval.read_image_landmarks(stem + suffix)
            if points.shape != (68, 2):
                raise ValueError(f"{stem + suffix}: {len(points)} points, expected 68")
            return points
    return None


def collect(paths: Iterable[str], detector: faces_lib.MediaPipeDetector,
            teacher: Optional[faces_lib.DlibDetector] = None,
            rotations: Iterable[float] = ROTATIONS_DEGREES, mirror: bool = True):
    """(meshes (n, 478, 3), teacher points (n, 68, 2)) of the faces in the photos, each
    photo also mirrored and turned by `rotations`.

    teacher: dlib's predictor (`faces.DlibDetector`), run on every face; or None: the
    photos' own annotations (`NAME.pts` / `NAME.ljson` beside each photo, one face, iBUG
    68 points; a photo without one is left out), given to the mesh face they fit.
    A face the teacher misses is left out; an unreadable photo raises
    `faces.ImageError` naming the file."""
    meshes, targets = [], []
    for path in paths:
        photo = faces_lib.load_rgb8(str(path))
        annotated = None if teacher is not None else _annotation(str(path))
        if teacher is None and annotated is None:
            continue
        for flipped in ((False, True) if mirror else (False,)):
            image, points = photo, annotated
            if flipped:
                image = np.ascontiguousarray(photo[:, ::-1])
                if points is not None:
                    points = points[list(MIRROR_68)] * [-1.0, 1.0] + [photo.shape[1], 0.0]
            for degrees in rotations:
                shown, truth = rotated(image, degrees, points) if degrees else (image, points)
                for mesh in detector.meshes(shown):
                    # The teacher's crop needs only the face's place: the vertices will do.
                    anchors = faces_lib.crop_points(mesh)
                    if teacher is not None:
                        found = teacher.refine(shown, anchors)
                    elif (np.linalg.norm(anchors - truth, axis=-1).mean()
                          < 0.3 * faces_lib.landmark_extent(truth)):
                        found = truth
                    else:
                        found = None
                    if found is not None:
                        meshes.append(mesh)
                        targets.append(found)
    if not meshes:
        raise ValueError("no face both found and taught in the given photos")
    return np.stack(meshes), np.stack(targets).astype(np.float64)


def _normalised(meshes: np.ndarray) -> np.ndarray:
    """Meshes centred and scaled to unit outer-eye-corner distance (3D)."""
    eyes = faces_lib.MESH_EYE_CORNERS
    scale = np.linalg.norm(meshes[:, eyes[0], :2] - meshes[:, eyes[1], :2], axis=-1)
    centred = meshes - meshes.mean(1, keepdims=True)
    return centred / np.maximum(scale, 1e-9)[:, None, None]


def fit(meshes: np.ndarray, targets: np.ndarray, neighbours: int = NEIGHBOURS,
        ridge: float = RIDGE) -> types.SimpleNamespace:
    """The table (`NEIGHBOURS`, `WEIGHTS`, `TURN_WEIGHTS`, each (68, neighbours)) that maps
    meshes (n, 468+, 3) to targets (n, 68, 2) best, residuals in the targets' outer
    eye-corner distance; neighbours are nearest on the meshes' mean normalised shape."""
    if meshes.ndim != 3 or meshes.shape[-1] != 3 or meshes.shape[1] < 468:
        raise ValueError(f"meshes of shape {meshes.shape}, expected (n, 468+, 3)")
    if targets.shape != (len(meshes), 68, 2):
        raise ValueError(f"targets of shape {targets.shape}, expected ({len(meshes)}, 68, 2)")
    shape = _normalised(meshes).mean(0)[:468]
    unit = np.linalg.norm(targets[:, 36] - targets[:, 45], axis=-1)[:, None]  # (n, 1)
    turn = faces_lib.head_turn(meshes)[:, None, None]
    points = meshes[..., :2]
    table = types.SimpleNamespace(NEIGHBOURS=[], WEIGHTS=[], TURN_WEIGHTS=[])
    for k, anchor in enumerate(faces_lib.MESH_TO_68):
        distance = np.linalg.norm(shape - shape[anchor], axis=-1)
        near = [int(j) for j in np.argsort(distance) if j != anchor][:neighbours]
        offsets = (points[:, near] - points[:, [anchor]]) / unit[:, :, None]  # (n, K, 2)
        design = np.concatenate([offsets, offsets * turn], 1)  # (n, 2K, 2)
        design = design.transpose(0, 2, 1).reshape(-1, 2 * neighbours)
        residual = ((targets[:, k] - points[:, anchor]) / unit).reshape(-1)
        gram = design.T @ design + ridge * len(meshes) * np.eye(2 * neighbours)
        weights = np.linalg.solve(gram, design.T @ residual)
        table.NEIGHBOURS.append(near)
        table.WEIGHTS.append(weights[:neighbours].tolist())
        table.TURN_WEIGHTS.append(weights[neighbours:].tolist())
    return table


def nme(predicted: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """(n,) `scan_eval.landmark_nme` (the targets' outer eye-corner distance) per face."""
    from mofa import scan_eval

    return np.array([scan_eval.landmark_nme(p, t)["nme_interocular"]
                     for p, t in zip(predicted, targets)])


def write_table(table, path: str, header: str) -> None:
    def rows(values, fmt):
        return "".join(textwrap.fill(f"[{', '.join(fmt(v) for v in row)}],", 88,
                                     initial_indent="    ", subsequent_indent="     ") + "\n"
                       for row in values)

    with open(path, "w", encoding="utf-8") as f:
        f.write(f'"""{header}"""\n\n')
        f.write("# (68, K) MediaPipe mesh vertices near each point's own (`faces.MESH_TO_68`).\n")
        f.write(f"NEIGHBOURS = [\n{rows(table.NEIGHBOURS, str)}]\n")
        f.write("# (68, K) weights of the offsets to them on a frontal face ...\n")
        f.write(f"WEIGHTS = [\n{rows(table.WEIGHTS, lambda v: f'{v:.5f}')}]\n")
        f.write("# ... and their change per unit of `faces.head_turn`.\n")
        f.write(f"TURN_WEIGHTS = [\n{rows(table.TURN_WEIGHTS, lambda v: f'{v:.5f}')}]\n")


def main(argv: Optional[list] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", action="append", required=True,
                        help="a folder of face photos (repeatable)")
    parser.add_argument("--out", required=True, help="the table module to write")
    parser.add_argument("--teacher", default="dlib", choices=("dlib", "annotations"),
                        help="where the 68 points are: dlib's predictor (mofa[dlib]), or "
                             "each photo's NAME.pts / NAME.ljson (iBUG 68 points)")
    parser.add_argument("--neighbours", type=int, default=NEIGHBOURS)
    parser.add_argument("--ridge", type=float, default=RIDGE)
    args = parser.parse_args(argv)
    paths = sorted(p for folder in args.photos for p in glob.glob(os.path.join(folder, "*"))
                   if p.lower().endswith((".jpg", ".jpeg", ".png", ".bmp", ".ppm")))
    if not paths:
        parser.error(f"--photos: no photos in {', '.join(args.photos)}")
    if args.teacher == "dlib":
        teacher = faces_lib.DlibDetector(fallback=False)
        meshes, targets = collect(paths, teacher.finder, teacher)
    else:
        meshes, targets = collect(paths, faces_lib.MediaPipeDetector())
    table = fit(meshes, targets, args.neighbours, args.ridge)
    before = np.median(nme(faces_lib.crop_points(meshes), targets))
    after = np.median(nme(faces_lib.mesh_to_68(meshes, table), targets))
    summary = (f"{len(meshes)} faces (the photos mirrored and turned by "
               f"{', '.join(f'{r:g}' for r in ROTATIONS_DEGREES)} deg) from {len(paths)} photos; "
               f"median NME to the teacher's ({args.teacher}) points: the vertices {before:.4f}, "
               f"the table {after:.4f}")
    write_table(table, args.out, textwrap.fill(
        f"MediaPipe mesh -> 68 points (`faces.mesh_to_68`), measured by `python -m "
        f"mofa.mesh68_calibration --photos {' --photos '.join(args.photos)} --teacher "
        f"{args.teacher}` ({args.neighbours} neighbours, ridge {args.ridge:g}): {summary}.",
        88) + "\n")
    print(summary)


if __name__ == "__main__":
    main()
