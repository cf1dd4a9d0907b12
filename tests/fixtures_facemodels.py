"""Tiny synthetic face models and fixture files in the exact third-party formats.

The loaders must read real BFM 2009/2017 and FLAME downloads, which cannot be
shipped; these writers produce files with the same variables, groups, shapes,
dtypes, units and binary layouts from a small analytic face, and return the
arrays written so tests can check the conversion exactly.
"""

from __future__ import annotations

import json
import os
import pickle
import sys
import types

import numpy as np

# iBUG-68 layout (mm) on the analytic face: x to the subject's left, so point 0
# (the subject's right jaw) and 36 (the right eye's outer corner) have x < 0.


def _ellipse(cx, cy, rx, ry, angles):
    a = np.deg2rad(np.asarray(angles, np.float64))
    return np.stack([cx + rx * np.cos(a), cy + ry * np.sin(a)], 1)


def ibug68_xy() -> np.ndarray:
    jaw = _ellipse(0.0, 15.0, 62.0, 95.0, np.linspace(180.0, 360.0, 17))
    brow_r = np.stack([np.linspace(-55, -15, 5), [38, 43, 45, 44, 41]], 1)
    brow_l = brow_r[::-1] * [-1, 1]
    bridge = np.stack([np.zeros(4), np.linspace(25, -2, 4)], 1)
    nostrils = np.stack([np.linspace(-12, 12, 5), [-12, -14, -15, -14, -12]], 1)
    eye_r = _ellipse(-31.0, 25.0, 13.0, 5.0, [180, 120, 60, 0, -60, -120])
    eye_l = _ellipse(31.0, 25.0, 13.0, 5.0, [180, 120, 60, 0, -60, -120])
    eye_l = eye_l[[3, 2, 1, 0, 5, 4]]  # 42 inner corner ... 45 outer corner
    mouth_o = _ellipse(0.0, -42.0, 25.0, 10.0, np.linspace(180, -150, 12))
    mouth_i = _ellipse(0.0, -42.0, 17.0, 4.0, np.linspace(180, -135, 8))
    pts = np.concatenate([jaw, brow_r, brow_l, bridge, nostrils, eye_r, eye_l, mouth_o, mouth_i])
    assert pts.shape == (68, 2)
    return pts


def _bump(x, y, cx, cy, sx, sy):
    return np.exp(-0.5 * (((x - cx) / sx) ** 2 + ((y - cy) / sy) ** 2))


def surface_z(x, y):
    """Depth of the analytic face: an ellipsoidal cap with nose, eye sockets, brows,
    lips and chin (features pin down the alignments; a bare cap would slide)."""
    cap = 100.0 * np.sqrt(np.clip(1.0 - (x / 110.0) ** 2 - (y / 150.0) ** 2, 0.05, 1.0))
    z = cap + 22.0 * _bump(x, y, 0.0, -2.0, 8.0, 14.0)
    z -= 9.0 * (_bump(x, y, -31.0, 25.0, 10.0, 7.0) + _bump(x, y, 31.0, 25.0, 10.0, 7.0))
    z += 5.0 * (_bump(x, y, -32.0, 42.0, 14.0, 4.0) + _bump(x, y, 32.0, 42.0, 14.0, 4.0))
    z += 6.0 * _bump(x, y, 0.0, -42.0, 18.0, 6.0) + 8.0 * _bump(x, y, 0.0, -82.0, 14.0, 9.0)
    return z


def synthetic_face(nx: int = 40, ny: int = 48, half_width: float = 75.0,
                   half_height: float = 100.0):
    """(vertices (N, 3) mm, CCW triangles (T, 3), 68 landmark vertex indices)."""
    xs = np.linspace(-half_width, half_width, nx)
    ys = np.linspace(-half_height, half_height, ny)
    x, y = np.meshgrid(xs, ys)
    vertices = np.stack([x, y, surface_z(x, y)], -1).reshape(-1, 3)
    idx = np.arange(nx * ny).reshape(ny, nx)
    a, b = idx[:-1, :-1], idx[:-1, 1:]
    c, d = idx[1:, 1:], idx[1:, :-1]
    # a -> b is +x and b -> c is +y, so (a, b, c) is counter-clockwise seen from +z.
    triangles = np.concatenate([np.stack([a, b, c], -1).reshape(-1, 3),
                                np.stack([a, c, d], -1).reshape(-1, 3)])
    xy = ibug68_xy()
    landmarks = np.argmin(((vertices[None, :, :2] - xy[:, None]) ** 2).sum(-1), axis=1)
    return vertices, triangles, landmarks


def smooth_fields(vertices, count: int, seed: int, scale: float = 1.0) -> np.ndarray:
    """(count, N, 3) smooth random displacement/colour fields."""
    rng = np.random.default_rng(seed)
    p = (vertices - vertices.mean(0)) / np.ptp(vertices, axis=0).max()
    feats = np.stack([np.ones(len(p)), p[:, 0], p[:, 1], p[:, 2], p[:, 0] * p[:, 1],
                      p[:, 0] ** 2, p[:, 1] ** 2, np.sin(3 * p[:, 0]), np.cos(4 * p[:, 1])], 1)
    coef = rng.normal(size=(count, feats.shape[1], 3))
    return scale * np.einsum("nf,kfc->knc", feats, coef)


def albedo_of(vertices) -> np.ndarray:
    """A linear-RGB albedo that is an affine function of position (interpolates exactly)."""
    v = np.asarray(vertices, np.float64)
    return np.stack([0.45 + 0.002 * v[:, 0], 0.35 + 0.0015 * v[:, 1], 0.25 + 0.001 * v[:, 2]], 1)


def synthetic_model(nx: int = 44, ny: int = 52, num_albedo: int = 4):
    """A small FaceModel on the analytic face (a stand-in for the built-in model)."""
    from mofa.facemodel import from_numpy, transfer

    vertices, triangles, landmarks = synthetic_face(nx, ny)
    ib, istd = transfer.standardize(smooth_fields(vertices, 4, 1, 3.0))
    eb, estd = transfer.standardize(smooth_fields(vertices, 3, 2, 2.0), sort=False)
    ab, astd = transfer.standardize(smooth_fields(vertices, num_albedo, 3, 0.02))
    return from_numpy(
        mean_shape=vertices, identity_basis=ib, identity_std=istd,
        expression_basis=eb, expression_std=estd,
        albedo_mean=albedo_of(vertices), albedo_basis=ab, albedo_std=astd,
        triangles=triangles, landmark_indices=landmarks,
        face_mask=transfer.border_falloff_mask(vertices, triangles),
        name="synthetic", license="test fixture", expression_names=("a", "b", "c"))


def _orthonormal_columns(rows: int, cols: int, seed: int) -> np.ndarray:
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(rows, cols)))
    return q


# ---------------------------------------------------------------------------
# BFM 2009 (+ Guo et al. expression files, as in Deep3DFaceRecon's BFM folder)


def write_bfm2009(folder: str, expressions: bool = True, landmark_file: bool = True) -> dict:
    """01_MorphableModel.mat (+ Exp_Pca.bin, std_exp.txt, BFM_exp_idx.mat) in `folder`."""
    import scipy.io

    os.makedirs(folder, exist_ok=True)
    verts, tris, lmk = synthetic_face()
    n = len(verts)
    k, kt, ke = 6, 5, 3
    shape_pc = _orthonormal_columns(3 * n, k, 10).astype(np.float32)
    shape_ev = np.linspace(40000.0, 5000.0, k).astype(np.float32)[:, None]  # um
    colour = np.clip(0.2 + 0.6 * np.random.default_rng(11).random((n, 3)), 0, 1)
    tex_pc = _orthonormal_columns(3 * n, kt, 12).astype(np.float32)
    tex_ev = np.linspace(900.0, 300.0, kt).astype(np.float32)[:, None]  # 0-255 units
    raw = {
        "shapeMU": (verts * 1000.0).reshape(-1, 1).astype(np.float32),  # um
        "shapePC": shape_pc, "shapeEV": shape_ev,
        "texMU": (colour * 255.0).reshape(-1, 1).astype(np.float32),
        "texPC": tex_pc, "texEV": tex_ev,
        # BFM's own winding is not trusted by the loader: write it clockwise here.
        "tl": (tris[:, [0, 2, 1]] + 1).astype(np.float64),
    }
    scipy.io.savemat(os.path.join(folder, "01_MorphableModel.mat"), raw)
    out = dict(raw, vertices=verts, triangles=tris, landmarks=lmk)
    if expressions:
        nx = 40  # drop the top grid row: expression vertices are a subset, like 53,215/53,490
        trim = np.arange(n - nx)
        ne = len(trim)
        exp_pc = _orthonormal_columns(3 * ne, ke, 13).astype(np.float32)  # (3Ne, K)
        exp_mu = np.random.default_rng(14).normal(size=3 * ne).astype(np.float32)
        exp_std = np.array([3000.0, 2000.0, 1000.0])
        with open(os.path.join(folder, "Exp_Pca.bin"), "wb") as f:
            np.array([ke], "<i4").tofile(f)
            exp_mu.astype("<f4").tofile(f)
            exp_pc.T.astype("<f4").tofile(f)  # component by component
        np.savetxt(os.path.join(folder, "std_exp.txt"), exp_std)
        scipy.io.savemat(os.path.join(folder, "BFM_exp_idx.mat"),
                         {"trimIndex": (trim + 1).astype(np.float64)[:, None]})
        out.update(trim=trim, exp_pc=exp_pc, exp_std=exp_std)
    if landmark_file:
        np.savetxt(os.path.join(folder, "landmarks68.txt"), lmk, fmt="%d")
    return out


# ---------------------------------------------------------------------------
# BFM 2017 (statismo HDF5)


def write_bfm2017(path: str, minor_version: int = 9) -> dict:
    """A model2017-1_*.h5 with statismo groups; version 0.8 stores U sqrt(variance)."""
    import h5py

    verts, tris, lmk = synthetic_face()
    n = len(verts)
    ks, ke, kc = 5, 4, 3
    rng = np.random.default_rng(20)
    exp_mean = 0.5 * rng.normal(size=(n, 3))
    colour = np.clip(0.2 + 0.6 * rng.random((n, 3)), 0, 1)
    models = {
        "shape": (verts - exp_mean, _orthonormal_columns(3 * n, ks, 21),
                  np.linspace(900.0, 100.0, ks) ** 2),
        "expression": (exp_mean, _orthonormal_columns(3 * n, ke, 22),
                       np.linspace(400.0, 50.0, ke) ** 2),
        "color": (colour, _orthonormal_columns(3 * n, kc, 23), np.linspace(3.0, 1.0, kc) ** 2),
    }
    with h5py.File(path, "w") as f:
        f["version/majorVersion"] = np.int32(0)
        f["version/minorVersion"] = np.int32(minor_version)
        for group, (mean, basis, variance) in models.items():
            stored = basis * np.sqrt(variance)[None] if minor_version == 8 else basis
            f[f"{group}/model/mean"] = mean.reshape(-1).astype(np.float32)
            f[f"{group}/model/pcaBasis"] = stored.astype(np.float32)
            f[f"{group}/model/pcaVariance"] = variance.astype(np.float32)
            f[f"{group}/model/noiseVariance"] = np.float32(1e-3)
            f[f"{group}/representer/points"] = verts.T.astype(np.float32)
            f[f"{group}/representer/cells"] = tris.T.astype(np.uint32)
        f["metadata/landmarks/json"] = json.dumps(
            [{"id": "center.nose.tip.mesh", "coordinates": verts[lmk[30]].tolist()}])
    return dict(vertices=verts, triangles=tris, landmarks=lmk, models=models)


# ---------------------------------------------------------------------------
# FLAME (python-2 era pickle with chumpy objects)


def _fake_chumpy():
    """A stand-in `chumpy.ch.Ch` class that pickles like chumpy's (state dict with 'x')."""

    class Ch:
        def __init__(self, x):
            self.x = np.asarray(x, np.float64)
            self._dirty_vars = set()
            self._depends_on_deps = {}
            self._make_dense = False
            self._make_sparse = False

        def __getstate__(self):  # chumpy: __dict__ minus the weakref caches
            return dict(self.__dict__)

    Ch.__module__ = "chumpy.ch"
    Ch.__qualname__ = "Ch"
    chumpy = types.ModuleType("chumpy")
    ch = types.ModuleType("chumpy.ch")
    ch.Ch = Ch
    chumpy.ch = ch
    return chumpy, ch, Ch


def write_flame(path: str, num_shape: int = 300, num_expression: int = 100,
                offset=(0.0, 0.03, -0.02)) -> dict:
    """A generic_model.pkl (protocol 2, chumpy-typed arrays, metres, 300 + 100 shapedirs)."""
    import scipy.sparse

    verts, tris, lmk = synthetic_face()
    v_m = verts / 1000.0 + np.asarray(offset)  # FLAME is in metres, not centred at our origin
    n = len(verts)
    k = num_shape + num_expression
    dirs = np.moveaxis(smooth_fields(verts, k, 30, 0.004), 0, 2)  # (V, 3, K) metres
    chumpy, ch, Ch = _fake_chumpy()
    saved = {m: sys.modules.get(m) for m in ("chumpy", "chumpy.ch")}
    sys.modules["chumpy"], sys.modules["chumpy.ch"] = chumpy, ch
    try:
        data = {
            "v_template": Ch(v_m),
            "f": tris[:, [0, 2, 1]].astype(np.uint32),  # winding checked by the loader
            "shapedirs": Ch(dirs),
            "posedirs": Ch(np.zeros((n, 3, 36))),
            "J_regressor": scipy.sparse.csc_matrix(np.eye(5, n)),
            "kintree_table": np.array([[4294967295, 0, 1, 1, 1], [0, 1, 2, 3, 4]], np.int64),
            "weights": Ch(np.full((n, 5), 0.2)),
            "J": Ch(np.zeros((5, 3))),
            "bs_style": "lbs",
            "bs_type": "lrotmin",
        }
        with open(path, "wb") as f:
            pickle.dump(data, f, protocol=2)
    finally:
        for m, mod in saved.items():
            if mod is None:
                sys.modules.pop(m, None)
            else:
                sys.modules[m] = mod
    return dict(vertices_m=v_m, vertices=verts, triangles=tris, landmarks=lmk, shapedirs=dirs,
                num_expression=num_expression)


def flame_embedding(triangles, landmarks):
    """(face index, barycentric coords) per landmark, nearest corner = the landmark vertex."""
    faces, bary = [], []
    for v in landmarks:
        t = int(np.flatnonzero((triangles == v).any(1))[0])
        corner = int(np.flatnonzero(triangles[t] == v)[0])
        b = np.full(3, 0.1)
        b[corner] = 0.8
        faces.append(t)
        bary.append(b)
    return np.array(faces), np.array(bary)


def write_flame_embeddings(folder: str, triangles, landmarks) -> tuple:
    """DECA-style landmark_embedding.npy (68) and flame_static_embedding.pkl (51)."""
    faces, bary = flame_embedding(triangles, landmarks)
    deca = os.path.join(folder, "landmark_embedding.npy")
    np.save(deca, {"static_lmk_faces_idx": faces[17:], "static_lmk_bary_coords": bary[17:],
                   "full_lmk_faces_idx": faces[None], "full_lmk_bary_coords": bary[None]},
            allow_pickle=True)
    static = os.path.join(folder, "flame_static_embedding.pkl")
    with open(static, "wb") as f:
        pickle.dump({"lmk_face_idx": faces[17:].astype(np.uint32),
                     "lmk_b_coords": bary[17:]}, f, protocol=2)
    return deca, static


def coarse_builtin(model, stride: int = 2):
    """The builtin model on every `stride`-th row and column of its (u, v) grid: the same
    face, bases and regions with 1/stride^2 of the vertices, for tests whose images are
    a few dozen pixels wide (the full mesh puts ~10 triangles in each pixel there).
    Landmarks move to the nearest kept vertex."""
    import jax.numpy as jnp

    from mofa import facemodel
    from mofa.facemodel import builtin

    rows, cols = np.arange(0, builtin._NV, stride), np.arange(0, builtin._NU, stride)
    if rows[-1] != builtin._NV - 1 or cols[-1] != builtin._NU - 1:
        raise ValueError(f"stride {stride} does not keep the grid's last row and column")
    keep = (rows[:, None] * builtin._NU + cols[None, :]).reshape(-1)
    triangles = builtin._grid_triangles(len(rows), len(cols)).astype(np.int32)
    mean = np.asarray(model.mean_shape)
    landmarks = np.argmin(((mean[np.asarray(model.landmark_indices)][:, None]
                            - mean[keep][None]) ** 2).sum(-1), 1).astype(np.int32)
    k = jnp.asarray(keep)
    # The same surface, wound the same way: normals at the kept face vertices agree.
    full_normals = np.asarray(facemodel.vertex_normals(model.mean_shape, model.triangles))[keep]
    coarse_normals = np.asarray(facemodel.vertex_normals(model.mean_shape[k],
                                                         jnp.asarray(triangles)))
    on_face = np.asarray(model.face_mask)[keep] > 0.5
    assert np.median(np.sum(full_normals * coarse_normals, -1)[on_face]) > 0.95
    return facemodel.vertex_subset(model, keep, triangles, landmarks)
