"""FLAME (`generic_model.pkl`, 2020/2023 releases) read without chumpy.

The file is a Python-2 era pickle of a dict: `v_template` (5023, 3), `f`
(9976, 3), `shapedirs` (5023, 3, 400: 300 identity then 100 expression
directions), `posedirs`, `J_regressor` (scipy sparse), `kintree_table`,
`weights`, several of them `chumpy.ch.Ch` objects. chumpy pickles a Ch through
`__getstate__` = its `__dict__` minus caches, where a plain Ch keeps its value
under 'x' (chumpy/ch.py: `dterms = ['x']`, `compute_r` returns `self.x`). A
restricted unpickler maps chumpy classes to a stub that captures that array,
skips scipy.sparse/torch objects we do not need, and refuses any other class
(a pickle can run code; only numpy and plain containers are let through).

Conversions: FLAME is in metres (x1000 to mm), y up, z forward, right-handed.
shapedirs columns are already scaled so FLAME's shape/expression coefficients
are ~N(0, 1): the std of a component is its column's norm, and FLAME's order is
kept so FLAME coefficients are our codes. Albedo is transferred from the
built-in model (FLAME's own albedo is a separate texture-space model). The
landmarks come from `landmark_embedding` when given (DECA's
landmark_embedding.npy with full_lmk_faces_idx/full_lmk_bary_coords for 68
points, or flame_static_embedding.pkl with lmk_face_idx/lmk_b_coords for the
51 inner points, the jaw line then transferred), each barycentric point taken
at its nearest vertex; otherwise all 68 are transferred geometrically from the
built-in model (approximate).
"""

from __future__ import annotations

import logging
import os
import pickle

import numpy as np

from mofa import geometry
from mofa.facemodel import cache_path
from mofa.facemodel import transfer
from mofa.facemodel.model import FaceModel, from_numpy, load_npz, save_npz

log = logging.getLogger(__name__)

VERSION = "1"
M_TO_MM = 1000.0
NUM_EXPRESSION = 100  # FLAME 2020/2023: the last 100 shapedirs are expressions
_LICENSE = ("FLAME: Max Planck Institute for Intelligent Systems, FLAME model license "
            "(registration at flame.is.tue.mpg.de), not redistributable; albedo "
            "transferred from the mofa built-in model")


class _ChStub:
    """Stands in for any chumpy class while unpickling; keeps the pickled state."""

    chumpy_name = "chumpy"

    def __new__(cls, *args, **kwargs):
        obj = object.__new__(cls)
        obj.state = None
        return obj

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        self.state = state

    def value(self, key: str, path: str) -> np.ndarray:
        state = self.state if isinstance(self.state, dict) else {}
        if "x" not in state:
            raise ValueError(f"FLAME: {path}: '{key}' is a {self.chumpy_name} expression, not a "
                             "plain chumpy array; expected a FLAME generic_model.pkl")
        return np.asarray(state["x"])


class _Ignored:
    """Objects we do not need (scipy.sparse matrices, torch tensors): dropped."""

    def __new__(cls, *args, **kwargs):
        return object.__new__(cls)

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        pass


_BUILTINS = {"set", "frozenset", "object", "list", "dict", "tuple", "slice", "complex",
             "bytearray", "bytes", "int", "float", "str", "bool"}
_NUMPY = {"_reconstruct", "scalar", "ndarray", "dtype"}
_NUMPY2 = int(np.__version__.split(".")[0]) >= 2  # numpy.core became numpy._core
_stub_classes: dict = {}


class _Unpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if module == "chumpy" or module.startswith("chumpy."):
            key = f"{module}.{name}"
            if key not in _stub_classes:
                _stub_classes[key] = type(name, (_ChStub,), {"chumpy_name": key})
            return _stub_classes[key]
        if module.startswith(("scipy.sparse", "torch")):
            return _Ignored
        if module in ("numpy", "numpy.core.multiarray", "numpy._core.multiarray",
                      "numpy.core.numeric", "numpy._core.numeric") and name in _NUMPY:
            real = module.replace("numpy.core", "numpy._core") if _NUMPY2 else \
                module.replace("numpy._core", "numpy.core")
            return super().find_class(real, name)
        if module in ("copy_reg", "copyreg") and name == "_reconstructor":
            return super().find_class("copyreg", name)
        if module in ("__builtin__", "builtins") and name in _BUILTINS:
            return super().find_class("builtins", name)
        if module == "collections" and name == "OrderedDict":  # inside torch tensor pickles
            return super().find_class(module, name)
        if module == "_codecs" and name == "encode":
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"unexpected class {module}.{name}")


def read_pickle(path: str, expected: str):
    """A (py2-era) pickle through the restricted unpickler; ValueError names the file."""
    try:
        with open(path, "rb") as f:
            return _Unpickler(f, encoding="latin1").load()
    except FileNotFoundError:
        raise
    except Exception as err:  # unpickling raises many types on foreign input
        raise ValueError(f"{path} is not {expected}: {type(err).__name__}: {err}") from None


def _read_npy_object(path: str, expected: str):
    """The dict inside an .npy written by np.save(dict), read without allow_pickle."""
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                      else np.lib.format.read_array_header_2_0)
            _, _, dtype = header(f)
            if dtype != object:
                raise ValueError("holds a plain array, not a dict")
            arr = _Unpickler(f, encoding="latin1").load()
    except Exception as err:
        raise ValueError(f"{path} is not {expected}: {type(err).__name__}: {err}") from None
    return arr.item() if isinstance(arr, np.ndarray) else arr


def _array(data: dict, key: str, path: str) -> np.ndarray:
    if key not in data:
        raise ValueError(f"{path} is not a FLAME generic_model.pkl: missing '{key}'")
    value = data[key]
    if isinstance(value, _ChStub):
        return value.value(key, path)
    return np.asarray(value)


def _embedding_landmarks(path: str, vertices, faces):
    """(vertex indices, iBUG positions) from a FLAME landmark embedding file."""
    expected = ("a FLAME landmark embedding (DECA landmark_embedding.npy or "
                "flame_static_embedding.pkl)")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"FLAME: landmark embedding not found: {path}")
    data = _read_npy_object(path, expected) if path.endswith(".npy") else read_pickle(
        path, expected)
    if not isinstance(data, dict):
        raise ValueError(f"{path} is not {expected}: holds a {type(data).__name__}")
    for fkey, bkey in (("full_lmk_faces_idx", "full_lmk_bary_coords"),
                       ("lmk_face_idx", "lmk_b_coords"),
                       ("static_lmk_faces_idx", "static_lmk_bary_coords")):
        if fkey in data and bkey in data:
            face_idx = np.asarray(data[fkey]).reshape(-1).astype(np.int64)
            bary = np.asarray(data[bkey], np.float64).reshape(-1, 3)
            break
    else:
        raise ValueError(f"{path} is not {expected}: no full_lmk_faces_idx/"
                         "full_lmk_bary_coords or lmk_face_idx/lmk_b_coords")
    if len(face_idx) not in (51, 68) or len(bary) != len(face_idx):
        raise ValueError(f"{path}: {len(face_idx)} landmarks; expected 68 (iBUG) or 51 "
                         "(iBUG without the jaw line)")
    if face_idx.min() < 0 or face_idx.max() >= len(faces):
        raise ValueError(f"{path}: landmark face indices outside the {len(faces)} FLAME faces")
    corners = faces[face_idx]  # (L, 3)
    points = np.einsum("lc,lcd->ld", bary, vertices[corners])
    nearest = np.argmin(np.linalg.norm(vertices[corners] - points[:, None], axis=2), axis=1)
    idx = corners[np.arange(len(corners)), nearest]
    return idx, len(face_idx)


def load(path: str, landmark_embedding: str | None = None,
         num_expression: int = NUM_EXPRESSION) -> FaceModel:
    """FLAME from `generic_model.pkl` (no chumpy needed); see the module docstring."""
    expected = "a FLAME generic_model.pkl (pickle with v_template, f, shapedirs)"
    path = os.path.expanduser(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"FLAME: no such file: {path} (expected {expected})")
    embedding = os.path.abspath(os.path.expanduser(landmark_embedding)) \
        if landmark_embedding else ""
    cache = cache_path("flame", path, embedding, num_expression, VERSION)
    if os.path.exists(cache):
        return load_npz(cache)

    data = read_pickle(path, expected)
    if not isinstance(data, dict):
        raise ValueError(f"{path} is not {expected}: holds a {type(data).__name__}")
    template = _array(data, "v_template", path).astype(np.float64)
    faces = _array(data, "f", path).astype(np.int64)
    shapedirs = _array(data, "shapedirs", path).astype(np.float64)
    n = len(template)
    if template.shape != (n, 3) or faces.ndim != 2 or faces.shape[1] != 3 or \
            shapedirs.ndim != 3 or shapedirs.shape[:2] != (n, 3):
        raise ValueError(f"{path} is not {expected}: v_template {template.shape}, f "
                         f"{faces.shape}, shapedirs {shapedirs.shape}")
    if faces.min() < 0 or faces.max() >= n:
        raise ValueError(f"{path} is not {expected}: f indexes outside the {n} vertices")
    total = shapedirs.shape[2]
    if not 0 <= num_expression < total:
        raise ValueError(f"FLAME: {path} has {total} shapedirs; cannot take "
                         f"{num_expression} expression components")

    mean = template * M_TO_MM
    fields = np.moveaxis(shapedirs, 2, 0) * M_TO_MM  # (K, V, 3)
    split = total - num_expression
    identity_basis, identity_std = transfer.standardize(fields[:split], sort=False)
    expression_basis, expression_std = transfer.standardize(fields[split:], sort=False)
    triangles = transfer.orient_outwards(mean, faces)

    source = transfer.default_source()
    if landmark_embedding:
        idx, count = _embedding_landmarks(embedding, mean, triangles)
        if count == 51:  # inner points only: borrow the jaw line (iBUG 0-16)
            if source is None:
                raise RuntimeError(f"FLAME: {embedding} has no jaw-line landmarks and the "
                                   "built-in model (to transfer them) is unavailable")
            jaw, _ = transfer.transfer_landmarks(mean, triangles, source)
            idx = np.concatenate([jaw[:17], idx])
    elif source is None:
        raise RuntimeError("FLAME has no 68-landmark table and the built-in model (used to "
                           "transfer one) is unavailable: pass landmark_embedding=FILE")
    else:
        idx, _ = transfer.transfer_landmarks(mean, triangles, source)
        log.info("FLAME: 68 landmarks transferred from the built-in model (approximate)")

    albedo_mean, albedo_basis, albedo_std, transferred = transfer.albedo_from_source(
        mean, mean[idx], source)
    if source is not None:
        # The source's face mask, faded out where FLAME has no nearby source surface
        # (scalp, neck, eyeballs behind the lids).
        src_lmk = np.asarray(source.mean_shape, np.float64)[np.asarray(source.landmark_indices)]
        transform = geometry.similarity_transform(src_lmk, mean[idx])
        values, dist = transfer.transfer_vertex_field(
            mean, transform, source, np.asarray(source.face_mask, np.float64)[:, None])
        face_mask = np.clip(values[:, 0], 0, 1) * (1.0 - transfer.smoothstep(3.0, 10.0, dist))
    else:
        face_mask = np.ones(n)

    model = from_numpy(
        mean_shape=mean, identity_basis=identity_basis, identity_std=identity_std,
        expression_basis=expression_basis, expression_std=expression_std,
        albedo_mean=albedo_mean, albedo_basis=albedo_basis, albedo_std=albedo_std,
        triangles=triangles, landmark_indices=idx, face_mask=face_mask,
        name="flame", license=_LICENSE, units="mm",
    )
    if transferred:
        save_npz(model, cache)
    return model
