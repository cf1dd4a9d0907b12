"""Evaluation against ground-truth files: 3D scans (NoW protocol) and 2D landmark annotations.

Scans (`evaluate_scans`), following the NoW benchmark (Sanyal et al. 2019):
  1. the predicted mesh is similarity-aligned to the scan from corresponding
     landmarks (7 NoW points, or all 68);
  2. the scan is cropped to a sphere around its nose tip (100 mm);
  3. optionally, a rigid ICP refines the mesh's pose against the cropped scan;
  4. for each cropped scan point, the distance to the closest point on the
     predicted mesh surface (mm): median / mean / std per scan and overall.

Landmarks (`evaluate_landmarks`): 2D NME of the predicted 68 image landmarks
against `.pts` annotations (68 iBUG points, or 5 points: eye centres, nose tip,
mouth corners) or menpo's `.ljson`, normalized both by the inter-ocular distance
and by the annotation box size sqrt(w * h); beside it the same NME of the
detector's landmarks the fit started from, where `mofa reconstruct` wrote them.

Units: scans and predicted meshes in millimetres.
"""

from __future__ import annotations

import glob
import json
import os
import re

import numpy as np

from mofa import geometry

# The 7 NoW landmarks as 68-point (Multi-PIE) indices, in the order of their
# landmark files: eye corners (subject's right outer, right inner, left inner,
# left outer), nose tip, mouth corners (right, left).
NOW_LANDMARKS = (36, 39, 42, 45, 30, 48, 54)
NOSE_TIP_68, NOSE_TIP_7 = 30, 4
CROP_RADIUS_MM = 100.0
MESH_SUFFIXES = (".obj", ".ply")
LANDMARK_SUFFIXES = (".txt", ".npy", ".pp")


def rigid_icp(vertices: np.ndarray, faces: np.ndarray, target_points: np.ndarray,
              iterations: int = 10) -> np.ndarray:
    """The mesh rigidly moved (no scale) to fit `target_points` (point-to-surface ICP)."""
    # Work relative to the target's centre: float32 SVDs stay exact far from the origin.
    centre = target_points.mean(0)
    moved, target = vertices - centre, target_points - centre
    for _ in range(iterations):
        _, _, closest, distance = geometry.closest_points_on_mesh(target, moved, faces)
        keep = distance <= 3.0 * np.median(distance) + 1e-9  # ignore scan beyond the mesh
        transform = geometry.similarity_transform(closest[keep], target[keep],
                                                  with_scale=False)
        before = moved
        moved = geometry.apply_similarity(moved, *transform)
        if np.max(np.abs(moved - before)) < 1e-4:  # converged (mm)
            break
    return moved + centre


def scan_to_mesh_errors(scan_points: np.ndarray, scan_landmarks: np.ndarray,
                        mesh_vertices: np.ndarray, faces: np.ndarray,
                        mesh_landmarks: np.ndarray, crop_radius: float | None = CROP_RADIUS_MM,
                        refine: bool = True) -> dict:
    """NoW scan-to-mesh distances (mm) of one scan; see the module docstring.

    scan_landmarks / mesh_landmarks: corresponding (L, 3) points, L = 7 (NoW order)
    or 68; the nose tip centres the crop.
    """
    scan_points = np.asarray(scan_points, np.float64)
    scan_landmarks = np.asarray(scan_landmarks, np.float64)
    mesh_landmarks = np.asarray(mesh_landmarks, np.float64)
    if scan_landmarks.shape != mesh_landmarks.shape:
        raise ValueError(f"scan has {len(scan_landmarks)} landmarks, the mesh "
                         f"{len(mesh_landmarks)}: they must correspond")
    centre = scan_landmarks.mean(0)  # float32 alignment stays exact far from the origin
    transform = geometry.similarity_transform(mesh_landmarks - centre, scan_landmarks - centre)
    aligned = geometry.apply_similarity(np.asarray(mesh_vertices, np.float64) - centre,
                                        *transform) + centre
    if crop_radius:
        nose = scan_landmarks[NOSE_TIP_7 if len(scan_landmarks) == 7 else NOSE_TIP_68]
        scan_points = scan_points[np.linalg.norm(scan_points - nose, axis=-1) <= crop_radius]
        if not len(scan_points):
            raise ValueError(f"no scan point within {crop_radius} mm of the nose tip")
    if refine:
        aligned = rigid_icp(aligned, faces, scan_points)
    closest = geometry.closest_points_on_mesh(scan_points, aligned, faces)
    distance = closest.distance
    return {"median_mm": float(np.median(distance)), "mean_mm": float(np.mean(distance)),
            "std_mm": float(np.std(distance)), "num_points": int(len(distance)),
            "distances": distance, "aligned_vertices": aligned,
            "scan_points": scan_points, "closest": closest}


def fit_linear_model_to_scan(mean: np.ndarray, basis: np.ndarray, std: np.ndarray,
                             faces: np.ndarray, landmark_indices, scan_points: np.ndarray,
                             scan_landmarks: np.ndarray, ridge: float = 3.0,
                             iterations: int = 16, crop_radius: float = CROP_RADIUS_MM):
    """The code of a linear shape model (mean + code @ basis) closest to a scan under the
    NoW protocol (`scan_to_mesh_errors`), by non-rigid ICP.

    Each round aligns the current shape to the scan (landmarks, rigid ICP), takes every
    cropped scan point's closest surface point and its triangle's normal, and solves
    the point-to-plane least squares in the code, linearised at the aligned pose, with
    a ridge of `ridge` on the code in units of `std` (the model's prior). basis:
    (K, V, 3); landmark_indices: the model vertices of `scan_landmarks` (7 NoW or 68).
    Returns (code (K,), [scan_to_mesh_errors median at the start and after each round]).
    """
    mean, basis = np.asarray(mean, np.float64), np.asarray(basis, np.float64)
    std, faces = np.asarray(std, np.float64), np.asarray(faces, np.int64)
    landmark_indices = np.asarray(landmark_indices)
    prior = ridge * np.diag(1.0 / np.square(std))
    code, medians = np.zeros(len(basis)), []
    for round_ in range(iterations + 1):
        shape = mean + np.einsum("k,kvd->vd", code, basis)
        errors = scan_to_mesh_errors(scan_points, scan_landmarks, shape, faces,
                                     shape[landmark_indices], crop_radius)
        medians.append(errors["median_mm"])
        if round_ == iterations:
            break
        # The protocol's own closest points on the aligned shape, for the cropped scan.
        aligned, cropped, closest = (errors[k] for k in ("aligned_vertices", "scan_points",
                                                         "closest"))
        scale, rotation, _ = geometry.similarity_transform(shape, aligned)
        keep = closest.distance <= 3.0 * np.median(closest.distance) + 1e-9
        corners = aligned[faces[closest.triangle]]
        normal = np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0])
        normal /= np.maximum(np.linalg.norm(normal, axis=1, keepdims=True), 1e-12)
        residual = np.einsum("nd,nd->n", cropped - closest.point, normal)[keep]
        # d(closest point)/d(code): the basis interpolated at the point, posed.
        moved = np.einsum("nc,kncd->knd", closest.barycentric,
                          basis[:, faces[closest.triangle]])
        moved = scale * np.einsum("ij,knj->kni", rotation, moved)
        jacobian = np.einsum("knd,nd->nk", moved, normal)[keep]
        code = code + np.linalg.solve(jacobian.T @ jacobian + prior,
                                      jacobian.T @ residual - prior @ code)
    return code, medians


# --- files --------------------------------------------------------------------------


def _require(path: str) -> str:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no such file: {path}")
    return path


def read_mesh(path: str, need_faces: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(vertices (V, 3), faces (T, 3)) of an OBJ / PLY; a point cloud has no faces."""
    import trimesh

    _require(path)
    try:
        loaded = trimesh.load(path, process=False)
    except Exception as err:  # trimesh raises many types on malformed files
        raise ValueError(f"{path}: cannot read the mesh ({err})") from err
    if isinstance(loaded, trimesh.Scene):
        loaded = loaded.to_mesh() if loaded.geometry else None
    vertices = np.asarray(getattr(loaded, "vertices", np.zeros((0, 3))), np.float64)
    faces = np.asarray(getattr(loaded, "faces", np.zeros((0, 3))), np.int64).reshape(-1, 3)
    if not len(vertices) or (need_faces and not len(faces)):
        raise ValueError(f"{path}: no {'triangles' if len(vertices) else 'vertices'} in the file")
    return vertices, faces


def read_landmarks(path: str, dim: int) -> np.ndarray:
    """(L, dim) points of a landmark file: iBUG `.pts`, Meshlab `.pp`, `.npy`, or text."""
    _require(path)
    try:
        if path.endswith(".npy"):
            values = np.load(path)
        elif path.endswith(".pp"):  # Meshlab picked points, as NoW ships
            with open(path, encoding="utf-8") as f:
                points = re.findall(r"<point\b([^>]*)>", f.read())
            values = [[float(re.search(rf'\b{a}="([^"]+)"', p).group(1)) for a in "xyz"]
                      for p in points]
        else:
            with open(path, encoding="utf-8") as f:
                text = f.read()
            if "{" in text:  # iBUG .pts: header, then "{ x y ... }"
                header, _, body = text.partition("{")
                values = [float(v) for v in body.partition("}")[0].split()]
                declared = re.search(r"n_points\s*:\s*(\d+)", header)
                if declared and len(values) != int(declared.group(1)) * dim:
                    raise ValueError(f"n_points: {declared.group(1)} but {len(values) // dim} "
                                     "points listed")
            else:
                values = [float(v) for v in re.split(r"[\s,;]+", text.strip()) if v]
        values = np.asarray(values, np.float64)
    except (ValueError, AttributeError, OSError) as err:
        raise ValueError(f"{path}: cannot read landmarks ({err})") from err
    if values.size == 0 or values.size % dim:
        raise ValueError(f"{path}: {values.size} numbers are not a list of {dim}D points")
    return values.reshape(-1, dim)


def _find(folder: str, stem: str, suffixes: tuple) -> str | None:
    for suffix in suffixes:
        if os.path.isfile(os.path.join(folder, stem + suffix)):
            return os.path.join(folder, stem + suffix)
    return None


def prediction_faces(predictions: str, stem: str) -> list[str]:
    """The `mofa reconstruct` face folders `<stem>_face<k>` of one image, k ascending."""
    folders = glob.glob(os.path.join(glob.escape(predictions), glob.escape(stem) + "_face*"))
    folders = [f for f in folders if re.fullmatch(r"_face\d+", os.path.basename(f)[len(stem):])]
    return sorted(folders, key=lambda f: int(f.rpartition("_face")[2]))


def read_code_json(folder: str) -> dict:
    path = _require(os.path.join(folder, "code.json"))
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from err


def _landmarks_field(code: dict, keys: tuple, dim: int, path: str) -> np.ndarray | None:
    for key in keys:
        if key in code:
            values = np.asarray(code[key], np.float64)
            if values.shape != (68, dim):
                raise ValueError(f"{path}: '{key}' has shape {values.shape}, expected (68, {dim})")
            return values
    return None


def _mesh_landmarks(folder: str, vertices: np.ndarray, face_model: str) -> np.ndarray:
    """The predicted mesh's 68 3D landmarks: from code.json, else the model's vertex indices."""
    code_path = os.path.join(folder, "code.json")
    code = read_code_json(folder) if os.path.isfile(code_path) else {}
    points = _landmarks_field(code, ("landmarks_3d", "landmarks3d"), 3, code_path)
    if points is not None:
        return points
    from mofa import facemodel

    # code.json names the model (not its load SPEC, which may hold a path): checked only.
    model = facemodel.load(face_model)
    if len(vertices) != model.num_vertices:
        made_with = (f" (code.json: face model '{code['face_model']}')"
                     if "face_model" in code else "")
        raise ValueError(
            f"{folder}: the mesh has {len(vertices)} vertices{made_with}, face model "
            f"'{face_model}' has {model.num_vertices}: pass the --face-model SPEC the mesh was "
            "reconstructed with, to place its 68 landmarks")
    return vertices[np.asarray(model.landmark_indices)]


def evaluate_scans(predictions: str, scans: str, crop_radius: float = CROP_RADIUS_MM,
                   refine: bool = True, face_model: str = "builtin",
                   skip_missing: bool = False, point_stride: int = 1) -> dict:
    """NoW-style scan-to-mesh errors of every scan in `scans` (`<stem>.obj|.ply` +
    `<stem>.txt|.npy|.pp`) against the prediction `<stem>_face0/mesh.obj|.ply`.

    skip_missing: scans without a prediction (e.g. no face detected) are listed
    under "missing" instead of raising. point_stride: score every n-th scan point.
    """
    stems = sorted({os.path.splitext(f)[0] for f in os.listdir(scans)
                    if f.lower().endswith(MESH_SUFFIXES)})
    if not stems:
        raise FileNotFoundError(f"no .obj / .ply scans in {scans}")
    per_scan, distances, missing = {}, [], []
    for stem in stems:
        scan_path = _find(scans, stem, MESH_SUFFIXES)
        landmark_path = _find(scans, stem, LANDMARK_SUFFIXES)
        if landmark_path is None:
            raise FileNotFoundError(f"no landmark file for scan {scan_path}: expected "
                                    + " or ".join(os.path.join(scans, stem + s)
                                                  for s in LANDMARK_SUFFIXES))
        faces_found = prediction_faces(predictions, stem)
        folder = faces_found[0] if faces_found else os.path.join(predictions, f"{stem}_face0")
        mesh_path = _find(folder, "mesh", MESH_SUFFIXES)
        if mesh_path is None and skip_missing:
            missing.append(stem)
            continue
        if mesh_path is None:
            raise FileNotFoundError(f"no prediction for scan {scan_path}: expected "
                                    f"{os.path.join(folder, 'mesh.obj')}")
        scan_points, _ = read_mesh(scan_path, need_faces=False)
        scan_points = scan_points[::point_stride]
        scan_landmarks = read_landmarks(landmark_path, 3)
        if len(scan_landmarks) not in (7, 68):
            raise ValueError(f"{landmark_path}: {len(scan_landmarks)} landmarks, expected 7 "
                             "(NoW: eye corners, nose tip, mouth corners) or 68")
        vertices, faces = read_mesh(mesh_path)
        mesh_landmarks = _mesh_landmarks(folder, vertices, face_model)
        if len(scan_landmarks) == 7:
            mesh_landmarks = mesh_landmarks[list(NOW_LANDMARKS)]
        errors = scan_to_mesh_errors(scan_points, scan_landmarks, vertices, faces,
                                     mesh_landmarks, crop_radius, refine)
        distances.append(errors.pop("distances"))
        for key in ("aligned_vertices", "scan_points", "closest"):  # arrays, not a summary
            errors.pop(key)
        per_scan[stem] = {**errors, "prediction": mesh_path}
    everything = np.concatenate(distances)
    return {
        "protocol": f"similarity alignment from landmarks, crop {crop_radius} mm around the "
                    f"nose tip, rigid ICP refinement {'on' if refine else 'off'}, "
                    "scan-to-mesh-surface distance (mm)",
        "num_scans": len(per_scan),
        "missing": missing,
        "median_mm": float(np.median(everything)),
        "mean_mm": float(np.mean(everything)),
        "std_mm": float(np.std(everything)),
        "mean_of_scan_medians_mm": float(np.mean([s["median_mm"] for s in per_scan.values()])),
        "scans": per_scan,
    }


# --- 2D landmarks -------------------------------------------------------------------


def five_from_68(landmarks: np.ndarray) -> np.ndarray:
    """(..., 5, 2): eye centres (image left first), nose tip, mouth corners (image left first)."""
    return np.stack([landmarks[..., 36:42, :].mean(-2), landmarks[..., 42:48, :].mean(-2),
                     landmarks[..., 30, :], landmarks[..., 48, :], landmarks[..., 54, :]], -2)


# The 68 points' groups (0-based Multi-PIE / iBUG indices): where an error sits.
LANDMARK_GROUPS_68 = {"jaw": range(0, 17), "brows": range(17, 27), "nose": range(27, 36),
                      "eyes": range(36, 48), "mouth": range(48, 68)}


def landmark_nme(predicted: np.ndarray, annotated: np.ndarray) -> dict:
    """NMEs of (68 or 5, 2) annotated points against predicted 68 points.

    inter-ocular: outer eye corners (36, 45) for 68 points, eye centres for 5;
    box: sqrt(w * h) of the annotated points' bounding box. For 68 points also
    `nme_interocular_by_group`: each group's (`LANDMARK_GROUPS_68`) mean error, same unit.
    """
    predicted = np.asarray(predicted, np.float64)
    annotated = np.asarray(annotated, np.float64)
    if len(annotated) == 5:
        predicted, eyes = five_from_68(predicted), (0, 1)
    elif len(annotated) == 68:
        eyes = (36, 45)
    else:
        raise ValueError(f"{len(annotated)} annotated points, expected 68 or 5")
    distance = np.linalg.norm(predicted - annotated, axis=-1)
    error = np.mean(distance)
    interocular = max(np.linalg.norm(annotated[eyes[0]] - annotated[eyes[1]]), 1e-9)
    width, height = annotated.max(0) - annotated.min(0)
    result = {"error_px": float(error), "nme_interocular": float(error / interocular),
              "nme_box": float(error / max(np.sqrt(width * height), 1e-9))}
    if len(annotated) == 68:
        result["nme_interocular_by_group"] = {
            name: float(np.mean(distance[list(rows)]) / interocular)
            for name, rows in LANDMARK_GROUPS_68.items()}
    return result


def read_image_landmarks(path: str) -> np.ndarray:
    """(L, 2) annotated image points in mofa's pixel convention (pixel (i, j) covers
    [j, j+1) x [i, i+1), centre (j + 0.5, i + 0.5)).

    `.pts` (iBUG, 300-W): x y, 1-based, pixel centres at integers, so minus 0.5.
    `.ljson` (menpo): its first group's points as (y, x), 0-based, centres at integers,
    so swapped and plus 0.5. Half a pixel is 0.01 NME on a face 70 px between the eyes.
    """
    if not path.endswith(".ljson"):
        return read_landmarks(path, 2) - 0.5
    _require(path)
    try:
        with open(path, encoding="utf-8") as f:
            groups = json.load(f)["groups"]
        points = np.asarray(next(iter(groups.values()))["landmarks"]["points"], np.float64)
    except (ValueError, KeyError, TypeError, StopIteration, AttributeError) as err:
        raise ValueError(f"{path}: not a menpo LJSON landmark file ({err!r})") from err
    if points.ndim != 2 or points.shape[1] != 2:
        raise ValueError(f"{path}: points of shape {points.shape}, expected (L, 2)")
    return points[:, ::-1] + 0.5


def evaluate_landmarks(predictions: str, annotations: str) -> dict:
    """2D landmark NME of every annotation `<stem>.pts` (or menpo's `<stem>.ljson`)
    against the reconstructed face `<stem>_face<k>` (code.json 'landmarks', image pixels)
    nearest to it, and of the detector's landmarks of that face ('landmarks_detected')
    where code.json has them: a fit should land nearer the annotation than its input."""
    paths = {}
    for suffix in (".ljson", ".pts"):  # both for one photo: the .pts
        for path in glob.glob(os.path.join(glob.escape(annotations), "**", "*" + suffix),
                              recursive=True):
            paths[os.path.splitext(os.path.relpath(path, annotations))[0]] = path
    if not paths:
        raise FileNotFoundError(f"no .pts or .ljson landmark annotations in {annotations}")
    per_image = {}
    for stem, path in sorted(paths.items()):
        annotated = read_image_landmarks(path)
        if len(annotated) not in (5, 68):
            raise ValueError(f"{path}: {len(annotated)} points, expected 68 (iBUG) or 5")
        folders = prediction_faces(predictions, stem)
        if not folders:
            raise FileNotFoundError(f"no prediction for {path}: expected "
                                    f"{os.path.join(predictions, stem + '_face0', 'code.json')}")
        candidates = []
        for folder in folders:
            code_path = os.path.join(folder, "code.json")
            code = read_code_json(folder)
            points = _landmarks_field(code, ("landmarks", "landmarks_2d"), 2, code_path)
            if points is None:
                raise ValueError(f"{code_path}: no 68 2D 'landmarks'")
            detected = _landmarks_field(code, ("landmarks_detected",), 2, code_path)
            candidates.append((points, detected))
        # Several faces in the image: the annotated one is the nearest.
        centre = annotated.mean(0)
        best = int(np.argmin([np.linalg.norm(p.mean(0) - centre) for p, _ in candidates]))
        points, detected = candidates[best]
        per_image[stem] = {**landmark_nme(points, annotated),
                           "num_points": len(annotated), "prediction": folders[best]}
        if detected is not None:
            per_image[stem]["detector"] = landmark_nme(detected, annotated)
    values = list(per_image.values())
    results = {
        "normalization": "nme_interocular: mean point error / outer-eye-corner distance "
                         "(eye-centre distance for 5-point files); nme_box: / sqrt(w * h) of "
                         "the annotated points' box; means over images unless named median",
        "num_images": len(values), **_nme_summary(values), "images": per_image,
    }
    if all("detector" in v for v in values):  # the fit's input, on the same images
        results["detector"] = _nme_summary([v["detector"] for v in values])
    return results


def _nme_summary(rows: list) -> dict:
    """Means (and the NME's median) over images of `landmark_nme` results; per group
    (medians) over the 68-point ones."""
    result = {"nme_interocular": float(np.mean([v["nme_interocular"] for v in rows])),
              "nme_interocular_median": float(np.median([v["nme_interocular"] for v in rows])),
              "nme_box": float(np.mean([v["nme_box"] for v in rows])),
              "error_px": float(np.mean([v["error_px"] for v in rows]))}
    grouped = [v["nme_interocular_by_group"] for v in rows if "nme_interocular_by_group" in v]
    if grouped:
        result["nme_interocular_by_group_median"] = {
            name: float(np.median([g[name] for g in grouped])) for name in grouped[0]}
    return result
