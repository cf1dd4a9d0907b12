"""Basel Face Model 2009 (.mat, + Guo et al. expressions) and 2017 (statismo .h5).

BFM 2009, `01_MorphableModel.mat` (MATLAB v5; v7.3/HDF5 is read too):
  shapeMU (3N, 1), shapePC (3N, 199), shapeEV (199, 1), texMU, texPC, texEV and
  tl (T, 3, 1-based). Vectors interleave x, y, z per vertex. Coordinates are in
  micrometres (Deep3DFaceRecon's load_mats.py divides by 1e5 "to decimeter");
  shapeEV/texEV are standard deviations (Deep3DFaceRecon scales the PCs by them
  directly); colours are 0-255.
  Expressions (optional) are Guo et al.'s basis as Deep3DFaceRecon uses it,
  three files in one folder:
    * Exp_Pca.bin: int32 K, then float32 mean (3 Ne), then float32 PCs stored
      component by component (K x 3 Ne), native little-endian;
    * std_exp.txt: K standard deviations (text);
    * BFM_exp_idx.mat: `trimIndex` (Ne, 1-based) - the BFM 2009 vertex of each of
      the Ne = 53,215 expression vertices.
  With expressions the model lives on those Ne vertices (triangles fully inside
  them are kept); Deep3DFaceRecon further crops to its 35,709-vertex front
  model (BFM_front_idx.mat), which we do not. The expression mean in
  Exp_Pca.bin is ignored, as Deep3DFaceRecon does.

BFM 2017, `model2017-1_bfm_nomouth.h5` / `model2017-1_face12_nomouth.h5`
(statismo format): {shape,expression,color}/model/{mean (3N,), pcaBasis (3N, K),
pcaVariance (K,), noiseVariance}, shape/representer/points (3, N) and cells
(3, T). pcaBasis has orthonormal columns (statismo >= 0.9; scalismo's
StatismoIO unscales the 0.8 format, pcaBasis = U sqrt(variance), which we
handle too); a component's field at one std is column * sqrt(variance). Units
are millimetres; colours are in [0, 1]. The expression model's mean is a mean
deformation and is added to the shape mean (as scalismo-faces and
Occlusion-Robust-MoFA do).

Shared conversions: colours are treated as sRGB and converted to linear RGB;
the colour PCA fields are linearized at the mean (first-order: field * d
linear/d sRGB), which keeps the space linear. Neither BFM ships an iBUG-68
table: `landmarks` names a file of 68 vertex indices, otherwise the built-in
model's landmarks are carried over by geometric correspondence
(transfer.transfer_landmarks, a few millimetres of error). Albedo is the
model's own. Triangle winding is checked and made counter-clockwise seen from
outside.
"""

from __future__ import annotations

import json
import logging
import os

import numpy as np

from mofa.facemodel import cache_path
from mofa.facemodel import transfer
from mofa.facemodel.model import FaceModel, from_numpy, load_npz, save_npz

log = logging.getLogger(__name__)

VERSION = "1"
UM_TO_MM = 1e-3

_BFM2009_FIELDS = ("shapeMU", "shapePC", "shapeEV", "texMU", "texPC", "texEV", "tl")
_EXPRESSION_FILES = ("Exp_Pca.bin", "std_exp.txt", "BFM_exp_idx.mat")
_BFM2009_LICENSE = ("Basel Face Model 2009: University of Basel, non-commercial research "
                    "license, obtained by registration; not redistributable")
_BFM2017_LICENSE = ("Basel Face Model 2017: University of Basel, non-commercial research "
                    "license, obtained by registration; not redistributable")


def _require_file(path: str, kind: str, expected: str) -> str:
    path = os.path.expanduser(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{kind}: no such file: {path} (expected {expected})")
    return path


def _read_mat(path: str, names, expected: str) -> dict:
    """Variables of a MATLAB file (v5 via scipy, v7.3 via h5py), as numpy arrays."""
    import scipy.io

    try:
        data = scipy.io.loadmat(path, variable_names=list(names))
    except NotImplementedError:  # MATLAB v7.3 is HDF5; h5py reads it transposed
        import h5py
        try:
            with h5py.File(path, "r") as f:
                data = {n: np.asarray(f[n]).T for n in names if n in f}
        except OSError as err:
            raise ValueError(f"{path} is not {expected}: {err}") from None
    except Exception as err:  # scipy raises several types for non-MAT input
        raise ValueError(f"{path} is not {expected}: {err}") from None
    missing = [n for n in names if n not in data]
    if missing:
        raise ValueError(f"{path} is not {expected}: missing variable(s) {', '.join(missing)}")
    return {n: np.asarray(data[n]) for n in names}


def _fields(pcs: np.ndarray, stds: np.ndarray, n: int) -> np.ndarray:
    """(3N, K) PCs times per-component stds -> (K, N, 3) fields at one std."""
    pcs = np.asarray(pcs, np.float64).reshape(3 * n, -1)
    return (pcs * np.asarray(stds, np.float64).reshape(1, -1)).T.reshape(-1, n, 3)


def _linear_albedo(mean_srgb: np.ndarray, fields_srgb: np.ndarray):
    """Linear-RGB mean and PCA fields from sRGB ones (fields linearized at the mean)."""
    mean = np.clip(mean_srgb, 0.0, 1.0)
    fields = fields_srgb * transfer.srgb_to_linear_slope(mean)[None]
    return transfer.srgb_to_linear(mean), fields


def _read_landmark_file(path: str, kind: str) -> np.ndarray:
    path = os.path.expanduser(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{kind}: landmark file not found: {path}")
    try:
        idx = np.load(path) if path.endswith(".npy") else np.loadtxt(path)
    except Exception as err:
        raise ValueError(f"{kind}: {path} is not a landmark file (68 vertex indices as "
                         f"text or .npy): {err}") from None
    idx = np.asarray(idx).reshape(-1)
    if idx.size != 68 or np.any(idx != np.round(idx)):
        raise ValueError(f"{kind}: {path} must hold 68 integer vertex indices, "
                         f"found {idx.size} values")
    return idx.astype(np.int64)


def _default_landmarks(mean, triangles, kind):
    source = transfer.default_source()
    if source is None:
        raise RuntimeError(
            f"{kind} has no 68-landmark table and the built-in model (used to transfer "
            "one) is unavailable: pass landmarks=FILE with 68 vertex indices")
    idx, _ = transfer.transfer_landmarks(mean, triangles, source)
    log.info("%s: 68 landmarks transferred from the built-in model by geometric "
             "correspondence (approximate)", kind)
    return idx


def _finish(cache, **fields) -> FaceModel:
    model = from_numpy(**fields)
    save_npz(model, cache)
    return model


# ---------------------------------------------------------------------------
# BFM 2009


def _read_guo_expressions(folder: str, explicit: bool):
    """(fields (K, Ne, 3) in um, trim index (Ne,) 0-based) or None when absent."""
    paths = [os.path.join(folder, f) for f in _EXPRESSION_FILES]
    present = [os.path.isfile(p) for p in paths]
    if not any(present) and not explicit:
        return None
    if not all(present):
        missing = [p for p, ok in zip(paths, present) if not ok]
        raise FileNotFoundError(
            "BFM 2009 expression basis (Guo et al., as in Deep3DFaceRecon's BFM folder): "
            "missing " + ", ".join(missing))
    bin_path, std_path, idx_path = paths
    trim = _read_mat(idx_path, ["trimIndex"], "a MATLAB file with 'trimIndex' "
                     "(BFM_exp_idx.mat)")["trimIndex"].reshape(-1)
    trim = trim.astype(np.int64) - 1  # MATLAB is 1-based
    raw = np.fromfile(bin_path, dtype="<f4")
    count = int(np.fromfile(bin_path, dtype="<i4", count=1)[0]) if raw.size else 0
    ne = len(trim)
    # Deep3DFaceRecon reads exactly this much and ignores any trailing bytes.
    if count <= 0 or raw.size - 1 < 3 * ne * (count + 1):
        raise ValueError(
            f"{bin_path} is not an Exp_Pca.bin for {ne} vertices (int32 K, then float32 "
            f"mean 3*{ne} and K*3*{ne} PCs): {raw.size * 4} bytes with K={count}")
    pcs = raw[1 + 3 * ne:1 + 3 * ne * (count + 1)].reshape(count, 3 * ne)  # by component
    try:
        std = np.loadtxt(std_path, dtype=np.float64).reshape(-1)
    except ValueError as err:
        raise ValueError(f"{std_path} is not a std_exp.txt (K numbers): {err}") from None
    if std.size != count:
        raise ValueError(f"{std_path} holds {std.size} stds, {bin_path} {count} components")
    fields = (pcs.astype(np.float64) * std[:, None]).reshape(count, ne, 3)
    return fields, trim


def load_bfm2009(path: str, expression_path: str | None = None,
                 landmarks: str | None = None) -> FaceModel:
    """BFM 2009 from `01_MorphableModel.mat`, with Guo et al. expressions if found.

    expression_path: folder of Exp_Pca.bin, std_exp.txt and BFM_exp_idx.mat
    (default: the .mat's folder; absent there -> 0 expression components and a
    warning, absent from an explicit folder -> FileNotFoundError).
    landmarks: text/.npy file of 68 0-based vertex indices into the original
    53,490-vertex BFM 2009 mesh (default: transferred from the built-in model).
    """
    kind = "BFM 2009"
    expected = "a Basel Face Model 2009 .mat file (01_MorphableModel.mat)"
    path = _require_file(path, kind, expected)
    folder = os.path.expanduser(expression_path) if expression_path else os.path.dirname(
        os.path.abspath(path))
    cache = cache_path("bfm2009", path, os.path.abspath(folder), bool(expression_path),
                       os.path.abspath(landmarks) if landmarks else "", VERSION)
    if os.path.exists(cache):
        return load_npz(cache)

    mat = _read_mat(path, _BFM2009_FIELDS, expected)
    mean_um = np.asarray(mat["shapeMU"], np.float64).reshape(-1, 3)
    n = len(mean_um)
    shape_fields = _fields(mat["shapePC"], mat["shapeEV"], n)
    tex_mean = np.asarray(mat["texMU"], np.float64).reshape(-1, 3) / 255.0
    tex_fields = _fields(mat["texPC"], mat["texEV"], n) / 255.0
    triangles = np.asarray(mat["tl"]).reshape(-1, 3).astype(np.int64) - 1
    if tex_mean.shape != mean_um.shape or triangles.min() < 0 or triangles.max() >= n:
        raise ValueError(f"{path} is not {expected}: inconsistent shapeMU/texMU/tl sizes")

    expressions = _read_guo_expressions(folder, explicit=bool(expression_path))
    if expressions is None:
        log.warning("BFM 2009: no expression basis (Exp_Pca.bin, std_exp.txt, "
                    "BFM_exp_idx.mat) in %s: the model has 0 expression components", folder)
        keep = np.arange(n)
        ex_fields = np.zeros((0, n, 3))
    else:
        ex_fields, keep = expressions
        if keep.min() < 0 or keep.max() >= n:
            raise ValueError(f"BFM 2009: trimIndex in {folder} indexes outside the "
                             f"{n} vertices of {path}")
    # Restrict to the kept vertices; triangles must lie entirely inside them.
    remap = np.full(n, -1, np.int64)
    remap[keep] = np.arange(len(keep))
    triangles = remap[triangles]
    triangles = triangles[(triangles >= 0).all(1)]

    mean = mean_um[keep] * UM_TO_MM
    triangles = transfer.orient_outwards(mean, triangles)
    identity_basis, identity_std = transfer.standardize(shape_fields[:, keep] * UM_TO_MM)
    expression_basis, expression_std = transfer.standardize(ex_fields * UM_TO_MM)
    albedo_mean, albedo_fields = _linear_albedo(tex_mean[keep], tex_fields[:, keep])
    albedo_basis, albedo_std = transfer.standardize(albedo_fields)

    if landmarks:
        idx = remap[_read_landmark_file(landmarks, kind)]
        if idx.min() < 0:
            raise ValueError(f"{kind}: landmark file {landmarks} names vertices outside the "
                             "expression model's vertex subset (or the 53,490-vertex mesh)")
    else:
        idx = _default_landmarks(mean, triangles, kind)

    return _finish(
        cache,
        mean_shape=mean, identity_basis=identity_basis, identity_std=identity_std,
        expression_basis=expression_basis, expression_std=expression_std,
        albedo_mean=albedo_mean, albedo_basis=albedo_basis, albedo_std=albedo_std,
        triangles=triangles, landmark_indices=idx,
        face_mask=transfer.border_falloff_mask(mean, triangles),
        name="bfm2009" + ("+guo-expressions" if expressions is not None else ""),
        license=_BFM2009_LICENSE + (
            "; expression basis: Guo et al. (3DFace / Deep3DFaceRecon distribution)"
            if expressions is not None else ""),
        units="mm",
    )


# ---------------------------------------------------------------------------
# BFM 2017


def _h5_version(f, group: str):
    for prefix in (f"{group}/version", "version"):
        try:
            return int(np.asarray(f[f"{prefix}/majorVersion"])), int(
                np.asarray(f[f"{prefix}/minorVersion"]))
        except KeyError:
            continue
    return None


def _h5_model(f, group: str, n: int, path: str):
    """(mean (N, 3), fields (K, N, 3)) of a statismo model group."""
    expected = "a Basel Face Model 2017 .h5 (statismo) file"
    try:
        mean = np.asarray(f[f"{group}/model/mean"], np.float64).reshape(-1)
        basis = np.asarray(f[f"{group}/model/pcaBasis"], np.float64)
        variance = np.asarray(f[f"{group}/model/pcaVariance"], np.float64).reshape(-1)
    except KeyError as err:
        raise ValueError(f"{path} is not {expected}: missing dataset in '{group}/model' "
                         f"({err})") from None
    if mean.size != 3 * n or basis.shape != (3 * n, variance.size):
        raise ValueError(f"{path} is not {expected}: '{group}/model' has mean {mean.shape}, "
                         f"pcaBasis {basis.shape}, pcaVariance {variance.shape} for {n} points")
    sd = np.sqrt(np.maximum(variance, 0.0))
    version = _h5_version(f, group)
    norms = np.linalg.norm(basis, axis=0)
    if version == (0, 8) or (version is None and not np.allclose(norms, 1.0, atol=1e-3)):
        # statismo 0.8 stored pcaBasis = U sqrt(variance): the columns are the fields.
        fields = basis
    else:
        fields = basis * sd[None]
    return mean.reshape(n, 3), fields.T.reshape(-1, n, 3)


def load_bfm2017(path: str, landmarks: str | None = None) -> FaceModel:
    """BFM 2017 from a statismo `.h5` (model2017-1_bfm_nomouth / face12_nomouth).

    landmarks: optional text/.npy file of 68 0-based vertex indices (default:
    transferred from the built-in model; the file's metadata landmarks are named
    points, not iBUG-68).
    """
    import h5py

    kind = "BFM 2017"
    expected = "a Basel Face Model 2017 .h5 (statismo) file"
    path = _require_file(path, kind, expected)
    cache = cache_path("bfm2017", path, os.path.abspath(landmarks) if landmarks else "",
                       VERSION)
    if os.path.exists(cache):
        return load_npz(cache)
    try:
        f = h5py.File(path, "r")
    except OSError as err:
        raise ValueError(f"{path} is not {expected}: {err}") from None
    with f:
        try:
            points = np.asarray(f["shape/representer/points"], np.float64)
            cells = np.asarray(f["shape/representer/cells"], np.int64)
        except KeyError as err:
            raise ValueError(f"{path} is not {expected}: missing shape/representer "
                             f"points or cells ({err})") from None
        if points.ndim != 2 or points.shape[0] != 3 or cells.ndim != 2 or cells.shape[0] != 3:
            raise ValueError(f"{path} is not {expected}: representer points {points.shape} "
                             f"and cells {cells.shape} must be (3, N) and (3, T)")
        n = points.shape[1]
        mean, shape_fields = _h5_model(f, "shape", n, path)
        if "expression" in f:
            ex_mean, ex_fields = _h5_model(f, "expression", n, path)
            mean = mean + ex_mean  # the expression mean is a mean deformation
        else:
            log.warning("BFM 2017: %s has no expression model: 0 expression components", path)
            ex_fields = np.zeros((0, n, 3))
        col_mean, col_fields = _h5_model(f, "color", n, path)
        names = []
        if "metadata/landmarks/json" in f:
            try:
                raw = np.asarray(f["metadata/landmarks/json"]).reshape(-1)[0]
                raw = raw.decode() if isinstance(raw, bytes) else str(raw)
                names = [lm.get("id") for lm in json.loads(raw)]
            except (ValueError, TypeError, AttributeError, IndexError):
                names = []

    triangles = cells.T
    if triangles.min() < 0 or triangles.max() >= n:
        raise ValueError(f"{path} is not {expected}: cells index outside the {n} points")
    extent = np.ptp(mean[:, 0])
    if not 50.0 <= extent <= 500.0:
        log.warning("BFM 2017: %s has a mean face %.3g units wide; expected millimetres",
                    path, extent)
    triangles = transfer.orient_outwards(mean, triangles)
    identity_basis, identity_std = transfer.standardize(shape_fields)
    expression_basis, expression_std = transfer.standardize(ex_fields)
    albedo_mean, albedo_fields = _linear_albedo(col_mean, col_fields)
    albedo_basis, albedo_std = transfer.standardize(albedo_fields)
    if landmarks:
        idx = _read_landmark_file(landmarks, kind)
        if idx.min() < 0 or idx.max() >= n:
            raise ValueError(f"{kind}: landmark file {landmarks} indexes outside [0, {n})")
    else:
        idx = _default_landmarks(mean, triangles, kind)
    if names:
        log.info("BFM 2017: ignoring %d named metadata landmarks (not iBUG-68)", len(names))

    return _finish(
        cache,
        mean_shape=mean, identity_basis=identity_basis, identity_std=identity_std,
        expression_basis=expression_basis, expression_std=expression_std,
        albedo_mean=albedo_mean, albedo_basis=albedo_basis, albedo_std=albedo_std,
        triangles=triangles, landmark_indices=idx,
        face_mask=transfer.border_falloff_mask(mean, triangles),
        name="bfm2017:" + os.path.splitext(os.path.basename(path))[0],
        license=_BFM2017_LICENSE, units="mm",
    )
