"""ICT-FaceKit (ICT Face Model Light) read from a clone of the public repository,
or from the files `fetch` downloads at a pinned commit (`facemodel.load("ict")`).

Layout read (https://github.com/ICT-VGL/ICT-FaceKit, folder FaceXModel/):
  * generic_neutral_mesh.obj: 26,719 vertices, mostly quads, `vt` UVs, `f v/vt ...`;
  * identity000.obj ... identity099.obj: the neutral mesh with one identity mode
    applied; like ICT's own face_model_io.py we take mode = identity_i - neutral,
    and like its randomize_identity() the coefficients are N(0, 1), so the std of
    a component is the norm of its mode;
  * <name>.obj for the 53 names in vertex_indices.json["expressions"]: ARKit-style
    blendshapes, delta = blendshape - neutral, weights in [0, 1];
  * vertex_indices.json["idx_to_landmark_verts"]: 68 vertex indices, Multi-PIE order.

Conversions: ICT units are centimetres (x10 to mm); its axes are already ours
(y up, z forward, x to the subject's left: landmark 36, the subject's right
outer eye corner, has x < 0). Quads are split along their first diagonal,
which keeps the OBJ's counter-clockwise winding (checked: normals point out).
ICT has no albedo: the built-in model's albedo space is transferred by
geometric correspondence (mofa.facemodel.transfer).
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
import shutil
import tarfile
import tempfile
import urllib.request

import numpy as np

from mofa.facemodel import cache_dir, cache_path
from mofa.facemodel import transfer
from mofa.facemodel.model import FaceModel, from_numpy, load_npz, save_npz

VERSION = "2"  # 2: expression codes are the blendshape weights, bounded to [0, 1]
CM_TO_MM = 10.0

# Vertex index ranges of the regions (inclusive last index), from the ICT-FaceKit
# README tables: the face area [0:9408], the narrow face area [0:6705], and the
# face plus "head and neck" [0:11247]. Faces of a region are the polygons whose
# vertices all lie in the range (the README's polygon ranges agree).
REGIONS = {"narrow_face": 6705, "face": 9408, "face_and_head": 11247}

_NEUTRAL = os.path.join("FaceXModel", "generic_neutral_mesh.obj")
_IDENTITY = re.compile(r"identity(\d{3})\.obj$")


def _model_dir(path: str) -> str:
    """The FaceXModel folder of an ICT-FaceKit clone (or that folder itself)."""
    path = os.path.expanduser(path)
    if os.path.isfile(os.path.join(path, _NEUTRAL)):
        return os.path.join(path, "FaceXModel")
    if os.path.isfile(os.path.join(path, "generic_neutral_mesh.obj")):
        return path
    raise FileNotFoundError(
        f"ICT-FaceKit: {os.path.join(path, _NEUTRAL)} not found; expected a clone of the "
        "ICT-FaceKit repository (https://github.com/ICT-VGL/ICT-FaceKit) at " + path)


def _read(path: str) -> list:
    try:
        with open(path, "rb") as f:
            return f.read().split(b"\n")
    except FileNotFoundError:
        raise FileNotFoundError(f"ICT-FaceKit: missing file {path}") from None


def _floats(rows: list, width: int, path: str, what: str) -> np.ndarray:
    """Numbers of OBJ rows (bytes after the keyword) as an (N, width) array."""
    try:
        # One numpy conversion of the joined text is ~50x faster than per-line parsing.
        return np.array(b" ".join(rows).split(), dtype=np.float64).reshape(-1, width)
    except ValueError:
        pass
    try:  # rows with extra values (v x y z w, vertex colours): keep the first `width`
        return np.array([r.split()[:width] for r in rows], dtype=np.float64).reshape(-1, width)
    except ValueError as err:
        raise ValueError(f"ICT-FaceKit: corrupt OBJ file {path}: bad {what} ({err})") from None


def read_vertices(path: str, expect: int | None = None) -> np.ndarray:
    """The `v` positions of an OBJ file, (N, 3) float64 in file units."""
    lines = _read(path)
    verts = _floats([ln[2:] for ln in lines if ln.startswith(b"v ")], 3, path, "vertex line")
    if expect is not None and len(verts) != expect:
        raise ValueError(f"ICT-FaceKit: corrupt OBJ file {path}: {len(verts)} vertices, "
                         f"expected {expect} like generic_neutral_mesh.obj")
    return verts


def read_obj(path: str):
    """Vertices (N, 3), UVs (U, 2), and polygons as flat vertex/uv index arrays.

    Returns (vertices, uvs, vertex_index, uv_index or None, corner_counts); the
    polygon p has corner_counts[p] corners, stored consecutively (0-based).
    """
    lines = _read(path)
    verts = _floats([ln[2:] for ln in lines if ln.startswith(b"v ")], 3, path, "vertex line")
    uvs = _floats([ln[3:] for ln in lines if ln.startswith(b"vt ")], 2, path, "vt line")
    faces = [ln[2:].split() for ln in lines if ln.startswith(b"f ")]
    if not len(verts) or not faces:
        raise ValueError(f"ICT-FaceKit: corrupt OBJ file {path}: no vertices or no faces")
    counts = np.fromiter(map(len, faces), dtype=np.int64, count=len(faces))
    corners = [c.split(b"/") for f in faces for c in f]
    try:
        vi = np.array([c[0] for c in corners], dtype=np.int64)
        has_uv = all(len(c) > 1 and c[1] for c in corners)
        ti = np.array([c[1] for c in corners], dtype=np.int64) if has_uv else None
    except ValueError as err:
        raise ValueError(f"ICT-FaceKit: corrupt OBJ file {path}: bad face line ({err})") from None
    # OBJ indices are 1-based; negative ones count back from the end.
    vi = np.where(vi < 0, vi + len(verts), vi - 1)
    if ti is not None:
        ti = np.where(ti < 0, ti + len(uvs), ti - 1)
    if counts.min() < 3 or vi.min() < 0 or vi.max() >= len(verts) or (
            ti is not None and (ti.min() < 0 or ti.max() >= len(uvs))):
        raise ValueError(f"ICT-FaceKit: corrupt OBJ file {path}: face index out of range")
    return verts, uvs, vi, ti, counts


def triangulate(index: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Fan triangles (corner 0, i, i+1) of flat polygons: keeps each polygon's winding."""
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    out = []
    for n in np.unique(counts):
        s = starts[counts == n]
        for i in range(1, n - 1):
            out.append((n, i, np.stack([index[s], index[s + i], index[s + i + 1]], 1)))
    if not out:
        return np.zeros((0, 3), np.int64)
    # Restore polygon order (triangles of one polygon adjacent) for reproducibility.
    order = np.concatenate([np.flatnonzero(counts == n) * 1000 + i for n, i, _ in out])
    tris = np.concatenate([t for _, _, t in out])
    return tris[np.argsort(order, kind="stable")]


def _identity_files(folder: str) -> list:
    numbers = sorted(int(m.group(1)) for m in map(_IDENTITY.match, os.listdir(folder)) if m)
    if not numbers:
        raise FileNotFoundError(f"ICT-FaceKit: no identity000.obj ... in {folder}")
    if numbers != list(range(len(numbers))):
        missing = sorted(set(range(numbers[-1] + 1)) - set(numbers))
        raise FileNotFoundError(
            f"ICT-FaceKit: identity files are not contiguous in {folder}: "
            f"missing identity{missing[0]:03d}.obj")
    return [os.path.join(folder, f"identity{i:03d}.obj") for i in numbers]


def _convert(folder: str, region: str):
    last = REGIONS[region]
    config_path = os.path.join(folder, "vertex_indices.json")
    try:
        with open(config_path) as f:
            config = json.load(f)
        names = list(config["expressions"])
        landmarks = np.asarray(config["idx_to_landmark_verts"], np.int64)
    except FileNotFoundError:
        raise FileNotFoundError(f"ICT-FaceKit: missing file {config_path}") from None
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(f"ICT-FaceKit: {config_path} is not a valid vertex_indices.json "
                         f"(needs 'expressions' and 'idx_to_landmark_verts'): {err}") from None
    if landmarks.shape != (68,) or landmarks.min() < 0 or landmarks.max() > last:
        raise ValueError(f"ICT-FaceKit: {config_path}: 'idx_to_landmark_verts' must hold 68 "
                         f"vertex indices inside the {region} region [0, {last}]")

    neutral_path = os.path.join(folder, "generic_neutral_mesh.obj")
    verts, uvs, vi, ti, counts = read_obj(neutral_path)
    if len(verts) <= last:
        raise ValueError(f"ICT-FaceKit: corrupt OBJ file {neutral_path}: {len(verts)} vertices, "
                         f"the {region} region needs {last + 1}")
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    keep = np.maximum.reduceat(vi, starts) <= last
    corner_keep = np.repeat(keep, counts)
    triangles = triangulate(vi[corner_keep], counts[keep])
    uv_triangles = uv_coords = None
    if ti is not None:
        uv_tri = triangulate(ti[corner_keep], counts[keep])
        used, uv_triangles = np.unique(uv_tri, return_inverse=True)
        uv_triangles = uv_triangles.reshape(-1, 3)
        uv_coords = uvs[used].copy()
        # The head uses a second UDIM tile (u in [1, 2]); pack tiles side by side in [0, 1].
        tiles = max(1.0, float(np.ceil(uv_coords[:, 0].max() - 1e-6)))
        uv_coords[:, 0] /= tiles

    n = last + 1
    neutral = verts[:n]
    total = len(verts)

    def deltas(paths):
        return np.stack([(read_vertices(p, total)[:n] - neutral) for p in paths]) * CM_TO_MM

    id_fields = deltas(_identity_files(folder))
    ex_fields = deltas([os.path.join(folder, f"{name}.obj") for name in names])
    mean = neutral * CM_TO_MM
    # ICT's order is kept (only nearly decreasing after the regional crop) so an ICT
    # identity coefficient vector is directly our standardized identity code.
    identity_basis, identity_std = transfer.standardize(id_fields, sort=False)
    # Blendshapes: the expression code is the ARKit weight itself, in [0, 1]
    # (`expression_bounds`), with a sparse prior instead of N(0, 1).
    expression_basis, expression_std = transfer.standardize(ex_fields, sort=False)

    triangles = transfer.orient_outwards(mean, triangles)
    albedo_mean, albedo_basis, albedo_std, transferred = transfer.albedo_from_source(
        mean, mean[landmarks])
    model = from_numpy(
        mean_shape=mean,
        identity_basis=identity_basis,
        identity_std=identity_std,
        expression_basis=expression_basis,
        expression_std=expression_std,
        albedo_mean=albedo_mean,
        albedo_basis=albedo_basis,
        albedo_std=albedo_std,
        triangles=triangles,
        landmark_indices=landmarks,
        face_mask=transfer.border_falloff_mask(mean, triangles),
        uv_coords=uv_coords,
        uv_triangles=uv_triangles,
        name=f"ict-facekit:{region}",
        license="ICT-FaceKit: MIT (USC Institute for Creative Technologies); "
                "albedo transferred from the mofa built-in model",
        units="mm",
        expression_names=tuple(names),
        expression_bounds=(0.0, 1.0),
    )
    return model, transferred


# The ICT-FaceKit commit `fetch` downloads (master on 2020-12-01, the latest commit;
# its FaceXModel files are those of ../shared/data and of ict_manifest.SHA256).
ICT_COMMIT = "da5f95a607f5e6b37755b38d3385d7f2853732e5"
ICT_URL = f"https://github.com/ICT-VGL/ICT-FaceKit/archive/{ICT_COMMIT}.tar.gz"
URL_ENV = "MOFA_ICT_URL"  # overrides ICT_URL (a mirror, or a local server in tests)


def fetch(url: str | None = None, manifest: dict | None = None, progress: bool = True) -> str:
    """The ICT-FaceKit files mofa reads, downloaded once into the cache; returns the folder.

    Downloads the repository archive at the pinned commit (`ICT_URL`, or
    $MOFA_ICT_URL, or `url`), extracts the files named in `manifest` (default:
    ict_manifest.SHA256), checks each one's SHA-256, and only then moves the folder
    into place in one rename: an interrupted or corrupt download leaves no partial
    cache behind (its temporary files are removed; a killed process's are removed
    by the next call).
    """
    from mofa.facemodel import ict_manifest

    url = url or os.environ.get(URL_ENV) or ICT_URL
    manifest = ict_manifest.SHA256 if manifest is None else manifest
    stamp = hashlib.sha256(json.dumps(sorted(manifest.items())).encode()).hexdigest()[:12]
    root = os.path.join(cache_dir(), "ict-facekit")
    final = os.path.join(root, stamp)
    if os.path.isfile(os.path.join(final, _NEUTRAL)):
        return final
    os.makedirs(root, exist_ok=True)
    for stale in os.listdir(root):  # left by a killed download, not a running one
        if stale.startswith(".partial-") and not _owner_alive(stale):
            shutil.rmtree(os.path.join(root, stale), ignore_errors=True)
    work = tempfile.mkdtemp(prefix=f".partial-{os.getpid()}-", dir=root)
    try:
        archive = os.path.join(work, "archive")
        _download(url, archive, progress)
        folder = os.path.join(work, "ict-facekit")
        _extract(archive, folder, manifest, url)
        os.remove(archive)
        try:
            os.replace(folder, final)
        except OSError:  # another process finished first
            if not os.path.isfile(os.path.join(final, _NEUTRAL)):
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return final


def _owner_alive(partial: str) -> bool:
    """Whether the process named in `.partial-<pid>-...` still runs on this host (two
    processes sharing a cache, such as the workers of one training run, must not remove
    each other's downloads in flight)."""
    pid = partial.split("-")[1]
    if not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def _download(url: str, path: str, progress: bool) -> None:
    from tqdm.auto import tqdm

    offline = (f"ICT-FaceKit: could not download {url}: {{}}. Without network, clone "
               "https://github.com/ICT-VGL/ICT-FaceKit yourself and pass --face-model "
               "ict:PATH (facemodel.load('ict:PATH')).")
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(path, "wb") as out:
            total = int(response.headers.get("Content-Length") or 0) or None
            received = 0
            with tqdm(total=total, unit="B", unit_scale=True, desc="ICT-FaceKit",
                      disable=not progress) as bar:
                while chunk := response.read(1 << 20):
                    out.write(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
        if total is not None and received != total:
            raise OSError(f"connection closed after {received} of {total} bytes")
    except (OSError, ValueError, http.client.HTTPException) as err:
        reason = getattr(err, "reason", None) or err
        raise OSError(offline.format(reason)) from err


def _extract(archive: str, folder: str, manifest: dict, url: str) -> None:
    """Extracts the manifest's files (under the archive's single top folder) and checks them."""
    try:
        with tarfile.open(archive) as tar:
            members = {}
            for member in tar:
                top, _, rest = member.name.partition("/")
                if rest in manifest and member.isfile():
                    members[rest] = member
            missing = sorted(set(manifest) - set(members))
            if missing:
                raise ValueError(f"ICT-FaceKit: the archive from {url} lacks {len(missing)} "
                                 f"of the files mofa reads, e.g. {missing[0]}")
            for name, member in members.items():
                target = os.path.join(folder, name)
                os.makedirs(os.path.dirname(target), exist_ok=True)
                digest = hashlib.sha256()
                with tar.extractfile(member) as src, open(target, "wb") as out:
                    while chunk := src.read(1 << 20):
                        digest.update(chunk)
                        out.write(chunk)
                if digest.hexdigest() != manifest[name]:
                    raise ValueError(
                        f"ICT-FaceKit: {name} from {url} has SHA-256 {digest.hexdigest()}, "
                        f"expected {manifest[name]} (commit {ICT_COMMIT}); the download is "
                        "corrupt or not that commit, nothing was cached")
    except (tarfile.TarError, EOFError, OSError) as err:
        raise ValueError(f"ICT-FaceKit: {url} is not a readable archive: {err}") from err


def load(path: str, region: str = "face") -> FaceModel:
    """The ICT Face Model from an ICT-FaceKit clone at PATH, cropped to REGION.

    Regions: "narrow_face" (vertices 0-6705), "face" (0-9408: 9,409 vertices,
    18,460 triangles) and "face_and_head" (0-11247). The converted model is cached
    (mofa.facemodel.cache_path), so only the first load parses the 155 OBJ files.
    """
    if region not in REGIONS:
        raise ValueError(f"ICT-FaceKit: unknown region {region!r}; valid regions: "
                         + ", ".join(REGIONS))
    folder = _model_dir(path)
    cache = cache_path("ict", os.path.expanduser(path), region, VERSION)
    if os.path.exists(cache):
        return load_npz(cache)
    model, transferred = _convert(folder, region)
    if transferred:  # a fallback albedo must not shadow the transferred one later
        save_npz(model, cache)
    return model
