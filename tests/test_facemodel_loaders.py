"""Loaders of third-party face models: ICT-FaceKit (real data), BFM 2009/2017 and
FLAME (fixture files in their exact formats), and the shared geometric transfer."""

import importlib.util
import logging
import os
import pickle
import shutil
import sys
import time

import numpy as np
import pytest

from mofa import facemodel, landmark_calibration
from mofa.facemodel import bfm, flame, ict, transfer

import fixtures_facemodels as fx

# ---------------------------------------------------------------------------
# Shared transfer code


def _rotation_y(deg):
    a = np.deg2rad(deg)
    return np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])


def test_transfer_albedo_follows_the_geometry():
    source = fx.synthetic_model()
    verts, tris, lmk = fx.synthetic_face(29, 35)  # another sampling of the same face
    s, rot, t = 1.1, _rotation_y(12), np.array([3.0, -20.0, 55.0])
    target = s * verts @ rot.T + t
    src_lmk = np.asarray(source.mean_shape)[np.asarray(source.landmark_indices)]
    target_lmk = s * src_lmk @ rot.T + t  # landmarks in exact correspondence
    mean, basis, std = transfer.transfer_albedo(target, target_lmk, source)
    assert mean.shape == (len(verts), 3) and basis.shape == (4, len(verts), 3)
    # The source albedo is affine in position, so the transfer must reproduce it.
    np.testing.assert_allclose(mean, fx.albedo_of(verts), atol=5e-3)
    np.testing.assert_allclose(np.linalg.norm(basis.reshape(4, -1), axis=1), 1, atol=1e-5)
    assert np.all(np.diff(std) <= 0) and np.all(std > 0)
    # Fewer target vertices carry a proportionally smaller norm (sqrt of the count).
    ratio = std / np.asarray(source.albedo_std)
    assert np.all((ratio > 0.3) & (ratio < 0.9))


def test_transfer_landmarks_by_icp():
    source = fx.synthetic_model()
    verts, tris, lmk = fx.synthetic_face(33, 41)
    shifted = verts + [4.0, 25.0, -60.0]  # another origin, as FLAME/BFM have
    idx, (s, rot, t) = transfer.transfer_landmarks(shifted, tris, source)
    assert s == 1.0
    np.testing.assert_allclose(rot, np.eye(3), atol=0.03)  # ICP: within ~2 degrees
    np.testing.assert_allclose(t, [4.0, 25.0, -60.0], atol=2.0)
    _assert_transferred_landmarks(verts, idx, source)


def _assert_transferred_landmarks(verts, idx, source):
    """idx must be about the target vertices nearest to the source landmarks.

    Fixtures and source sample the same analytic face on different grids, so the
    nearest vertices are what an exact alignment gives; ICP between two coarse
    piecewise-linear samplings is biased by about a millimetre, hence the slack.
    """
    src = np.asarray(source.mean_shape)[np.asarray(source.landmark_indices)]
    dist = np.sqrt(((verts[None] - src[:, None]) ** 2).sum(-1))
    excess = dist[np.arange(68), idx] - dist.min(1)
    assert excess.mean() < 1.0 and excess.max() < 3.5  # fixture grid spacing ~4 mm


def test_orient_outwards_flips_clockwise_meshes():
    verts, tris, _ = fx.synthetic_face(12, 14)
    np.testing.assert_array_equal(transfer.orient_outwards(verts, tris), tris)
    np.testing.assert_array_equal(transfer.orient_outwards(verts, tris[:, ::-1]),
                                  tris[:, ::-1][:, [0, 2, 1]])


@pytest.fixture
def synthetic_source(monkeypatch):
    """The synthetic model stands in for the built-in one as correspondence source."""
    model = fx.synthetic_model()
    monkeypatch.setattr(transfer, "default_source", lambda: model)
    return model


# ---------------------------------------------------------------------------
# ICT-FaceKit on the real data


def _normals(model):
    return np.asarray(facemodel.vertex_normals(model.mean_shape, model.triangles))


@pytest.fixture(scope="module")
def ict_env(tmp_path_factory):
    """ICT tests borrow albedo from the synthetic model, caching in a private folder.

    Building the built-in model takes ~20 s on a cold cache, which alone would blow
    this file's time budget; a private cache keeps the synthetic-albedo ICT model
    from reaching other tests.
    """
    source = fx.synthetic_model()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MOFA_CACHE_DIR", str(tmp_path_factory.mktemp("ict_cache")))
        mp.setattr(transfer, "default_source", lambda: source)
        yield source


@pytest.fixture(scope="module")
def ict_face(ict_env, ict_dir):
    start = time.perf_counter()
    model = ict.load(str(ict_dir))
    first = time.perf_counter() - start
    print(f"ICT first load: {first:.2f} s")
    return model


def test_ict_face_counts_and_conventions(ict_face, ict_dir):
    m = ict_face
    assert m.num_vertices == 9409 and m.num_triangles == 18460  # 9,230 quads
    assert m.num_identity == 100 and m.num_expression == 53
    assert m.expression_names[0] == "browDown_L" and len(m.expression_names) == 53
    mean = np.asarray(m.mean_shape)
    lmk = mean[np.asarray(m.landmark_indices)]
    assert lmk[36, 0] < 0 < lmk[45, 0]  # subject's right eye corner at -x
    assert lmk[30, 2] == pytest.approx(mean[:, 2].max(), abs=1.0)  # nose tip at the front
    assert _normals(m)[np.asarray(m.landmark_indices)[30], 2] > 0.9
    assert 150.0 < np.ptp(mean[:, 0]) < 200.0  # millimetres
    for basis in (m.identity_basis, m.expression_basis, m.albedo_basis):
        norms = np.linalg.norm(np.asarray(basis).reshape(len(basis), -1), axis=1)
        np.testing.assert_allclose(norms, 1.0, atol=1e-4)
    albedo = np.asarray(m.albedo_mean)
    assert albedo.shape == (9409, 3) and albedo.min() >= 0 and albedo.max() <= 1
    uv = np.asarray(m.uv_coords)
    assert uv.min() >= 0 and uv.max() <= 1 and m.uv_triangles.shape == (18460, 3)
    mask = np.asarray(m.face_mask)
    assert mask.max() == 1.0 and mask.min() == 0.0
    assert mask[np.asarray(m.landmark_indices)].min() == 1.0  # landmarks are on the skin
    # MediaPipe's measured landmark table applies: its vertices on the face's skin, each
    # within 20 mm of the model's own landmark, and the detector's lean measured.
    table = landmark_calibration.table_for(m)
    assert table is not None, "regenerate: python -m mofa.landmark_calibration --face-model ict"
    vertices = np.asarray(table.vertices)
    assert mask[vertices].min() == 1.0
    assert np.linalg.norm(mean[vertices] - lmk, axis=-1).max() <= 20.0
    assert 0 < table.identity_shrink < 1 and 0 < table.expression_shrink < 1


def test_ict_identity_matches_the_obj_files(ict_face, ict_dir):
    folder = os.path.join(ict_dir, "FaceXModel")
    neutral = ict.read_vertices(os.path.join(folder, "generic_neutral_mesh.obj"))[:9409]
    ident = ict.read_vertices(os.path.join(folder, "identity003.obj"))[:9409]
    field = np.asarray(ict_face.identity_std)[3] * np.asarray(ict_face.identity_basis)[3]
    np.testing.assert_allclose(field, (ident - neutral) * 10.0, atol=1e-3)
    smile = ict.read_vertices(os.path.join(folder, "mouthSmile_L.obj"))[:9409]
    k = ict_face.expression_names.index("mouthSmile_L")
    field = np.asarray(ict_face.expression_std)[k] * np.asarray(ict_face.expression_basis)[k]
    np.testing.assert_allclose(field, (smile - neutral) * 10.0, atol=1e-3)


def test_ict_second_load_is_cached(ict_face, ict_dir):
    cache = facemodel.cache_path("ict", str(ict_dir), "face", ict.VERSION)
    assert os.path.exists(cache)
    start = time.perf_counter()
    again = facemodel.load(f"ict:{ict_dir}")
    second = time.perf_counter() - start
    print(f"ICT second load: {second:.3f} s")
    assert second < 1.0
    for field in ("mean_shape", "identity_basis", "expression_std", "albedo_basis",
                  "triangles", "landmark_indices", "face_mask", "uv_coords"):
        np.testing.assert_array_equal(np.asarray(getattr(again, field)),
                                      np.asarray(getattr(ict_face, field)))
    assert again.expression_names == ict_face.expression_names


def test_ict_regions(ict_env, ict_dir):
    narrow = ict.load(str(ict_dir), region="narrow_face")
    assert narrow.num_vertices == 6706 and narrow.num_triangles == 13120
    head = ict.load(str(ict_dir), region="face_and_head")
    assert head.num_vertices == 11248 and head.num_triangles == 22288
    assert _normals(head)[np.asarray(head.landmark_indices)[30], 2] > 0.9
    assert np.asarray(head.uv_coords).max() <= 1.0  # two UDIM tiles packed into [0, 1]


def test_ict_errors(ict_env, ict_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match="ICT-FaceKit.*generic_neutral_mesh.obj"):
        ict.load(str(tmp_path))
    with pytest.raises(ValueError, match="narrow_face, face, face_and_head"):
        ict.load(str(ict_dir), region="whole_body")
    # A copy of the clone with a corrupt identity file.
    folder = tmp_path / "clone" / "FaceXModel"
    folder.mkdir(parents=True)
    src = os.path.join(ict_dir, "FaceXModel")
    for name in ("generic_neutral_mesh.obj", "vertex_indices.json"):
        shutil.copy(os.path.join(src, name), folder / name)
    (folder / "identity000.obj").write_text("v 1.0 2.0 3.0\nv 1.0 oops 3.0\n")
    with pytest.raises(ValueError, match="identity000.obj"):
        ict.load(str(tmp_path / "clone"))
    (folder / "identity000.obj").write_text("v 1.0 2.0 3.0\nf 1 1 1\n")
    with pytest.raises(ValueError, match="identity000.obj.*vertices"):
        ict.load(str(tmp_path / "clone"))
    (folder / "generic_neutral_mesh.obj").write_text("v 0 0 zero\nf 1 2 3\n")
    with pytest.raises(ValueError, match="generic_neutral_mesh.obj"):
        ict.load(str(tmp_path / "clone"))


# ---------------------------------------------------------------------------
# BFM 2009


def _fields(model, name):
    return (np.asarray(getattr(model, f"{name}_std"))[:, None, None]
            * np.asarray(getattr(model, f"{name}_basis")))


def _sorted_fields(fields):
    norms = np.linalg.norm(fields.reshape(len(fields), -1), axis=1)
    return fields[np.argsort(-norms, kind="stable")]


def test_bfm2009_round_trip(tmp_path, synthetic_source):
    raw = fx.write_bfm2009(str(tmp_path))
    m = bfm.load_bfm2009(str(tmp_path / "01_MorphableModel.mat"),
                         landmarks=str(tmp_path / "landmarks68.txt"))
    keep = raw["trim"]
    n = len(raw["vertices"])
    mean = raw["shapeMU"].reshape(-1, 3).astype(np.float64) / 1000.0  # um -> mm
    np.testing.assert_allclose(np.asarray(m.mean_shape), mean[keep], rtol=1e-6)
    shape = (raw["shapePC"] * raw["shapeEV"].T).T.reshape(-1, n, 3) / 1000.0
    np.testing.assert_allclose(_fields(m, "identity"), _sorted_fields(shape[:, keep]),
                               atol=1e-5)
    expr = (raw["exp_pc"] * raw["exp_std"]).T.reshape(-1, len(keep), 3) / 1000.0
    np.testing.assert_allclose(_fields(m, "expression"), _sorted_fields(expr), atol=1e-5)
    # The fixture's tl is clockwise: the loader restores counter-clockwise triangles.
    tris = raw["triangles"]
    expected = tris[np.isin(tris, keep).all(1)]
    np.testing.assert_array_equal(np.asarray(m.triangles), expected)
    np.testing.assert_array_equal(np.asarray(m.landmark_indices), raw["landmarks"])
    colour = raw["texMU"].reshape(-1, 3) / 255.0
    np.testing.assert_allclose(np.asarray(m.albedo_mean),
                               transfer.srgb_to_linear(colour)[keep], atol=1e-6)
    assert m.num_albedo == 5 and np.all(np.diff(np.asarray(m.albedo_std)) <= 0)
    assert m.face_mask.shape == (len(keep),)


def test_bfm2009_without_expressions_and_default_landmarks(tmp_path, synthetic_source, caplog):
    raw = fx.write_bfm2009(str(tmp_path), expressions=False)
    with caplog.at_level(logging.WARNING):
        m = facemodel.load(f"bfm2009:{tmp_path / '01_MorphableModel.mat'}")
    assert "0 expression components" in caplog.text
    assert m.num_expression == 0 and m.num_vertices == len(raw["vertices"])
    _assert_transferred_landmarks(raw["vertices"], np.asarray(m.landmark_indices),
                                  synthetic_source)
    with pytest.raises(FileNotFoundError, match="Exp_Pca.bin"):
        bfm.load_bfm2009(str(tmp_path / "01_MorphableModel.mat"), expression_path=str(tmp_path),
                         landmarks=str(tmp_path / "landmarks68.txt"))


def test_bfm2009_bad_expression_file(tmp_path):
    fx.write_bfm2009(str(tmp_path))
    with open(tmp_path / "Exp_Pca.bin", "r+b") as f:
        f.truncate(1000)
    with pytest.raises(ValueError, match="Exp_Pca.bin"):
        bfm.load_bfm2009(str(tmp_path / "01_MorphableModel.mat"),
                         landmarks=str(tmp_path / "landmarks68.txt"))


# ---------------------------------------------------------------------------
# BFM 2017


@pytest.mark.parametrize("minor_version", [9, 8])
def test_bfm2017_round_trip(tmp_path, synthetic_source, minor_version):
    path = str(tmp_path / "model2017-1_bfm_nomouth.h5")
    raw = fx.write_bfm2017(path, minor_version=minor_version)
    m = bfm.load_bfm2017(path)
    verts = raw["vertices"]
    np.testing.assert_allclose(np.asarray(m.mean_shape), verts, atol=1e-4)  # shape + exp mean
    for name, group in (("identity", "shape"), ("expression", "expression")):
        _, basis, variance = raw["models"][group]
        fields = (basis * np.sqrt(variance)).T.reshape(-1, len(verts), 3)
        np.testing.assert_allclose(_fields(m, name), fields, atol=1e-4)
    np.testing.assert_array_equal(np.asarray(m.triangles), raw["triangles"])
    colour, _, _ = raw["models"]["color"]
    np.testing.assert_allclose(np.asarray(m.albedo_mean), transfer.srgb_to_linear(colour),
                               atol=1e-6)
    _assert_transferred_landmarks(verts, np.asarray(m.landmark_indices), synthetic_source)


# ---------------------------------------------------------------------------
# FLAME


def test_flame_round_trip_without_chumpy(tmp_path, synthetic_source):
    path = str(tmp_path / "generic_model.pkl")
    raw = fx.write_flame(path)
    assert "chumpy" not in sys.modules
    if importlib.util.find_spec("chumpy") is None:
        with pytest.raises(ModuleNotFoundError):
            with open(path, "rb") as f:
                pickle.load(f, encoding="latin1")  # the file really names chumpy classes
    m = flame.load(path)
    assert "chumpy" not in sys.modules
    verts_mm = raw["vertices_m"] * 1000.0
    np.testing.assert_allclose(np.asarray(m.mean_shape), verts_mm, rtol=1e-6, atol=1e-3)
    fields = np.moveaxis(raw["shapedirs"], 2, 0) * 1000.0
    ne = raw["num_expression"]
    np.testing.assert_allclose(_fields(m, "identity"), fields[:-ne], atol=1e-4)
    np.testing.assert_allclose(_fields(m, "expression"), fields[-ne:], atol=1e-4)
    np.testing.assert_array_equal(np.asarray(m.triangles), raw["triangles"])
    # The fixture's template is off-centre (in metres): compare in the centred frame.
    _assert_transferred_landmarks(raw["vertices"], np.asarray(m.landmark_indices),
                                  synthetic_source)
    assert m.num_albedo == 4 and float(np.asarray(m.face_mask).max()) > 0.9


def test_flame_landmark_embeddings(tmp_path, synthetic_source):
    path = str(tmp_path / "generic_model.pkl")
    raw = fx.write_flame(path)
    deca, static = fx.write_flame_embeddings(str(tmp_path), raw["triangles"], raw["landmarks"])
    m = flame.load(path, landmark_embedding=deca)
    np.testing.assert_array_equal(np.asarray(m.landmark_indices), raw["landmarks"])
    m = flame.load(path, landmark_embedding=static)  # 51 points: jaw transferred
    np.testing.assert_array_equal(np.asarray(m.landmark_indices)[17:], raw["landmarks"][17:])


# ---------------------------------------------------------------------------
# Errors shared by the file loaders


@pytest.mark.parametrize("kind,name,expected", [
    ("bfm2009", "model.mat", "Basel Face Model 2009"),
    ("bfm2017", "model.h5", "Basel Face Model 2017"),
    ("flame", "generic_model.pkl", "FLAME generic_model.pkl"),
])
def test_wrong_file_type(tmp_path, kind, name, expected):
    path = tmp_path / name
    path.write_text("this is not a face model\n")
    with pytest.raises(ValueError, match=expected) as info:
        facemodel.load(f"{kind}:{path}")
    assert str(path) in str(info.value)


@pytest.mark.parametrize("kind", ["bfm2009", "bfm2017", "flame", "ict"])
def test_missing_file(kind):
    with pytest.raises(FileNotFoundError, match="/nope"):
        facemodel.load(f"{kind}:/nope")


def test_missing_file_direct():
    with pytest.raises(FileNotFoundError, match="/nope.mat"):
        bfm.load_bfm2009("/nope.mat")
    with pytest.raises(FileNotFoundError, match="/nope.h5"):
        bfm.load_bfm2017("/nope.h5")
    with pytest.raises(FileNotFoundError, match="/nope.pkl"):
        flame.load("/nope.pkl")


def test_flame_unpickler_refuses_foreign_classes(tmp_path):
    path = tmp_path / "generic_model.pkl"
    path.write_bytes(pickle.dumps({"v_template": __import__("collections").Counter()}))
    with pytest.raises(ValueError, match="unexpected class collections.Counter"):
        flame.load(str(path))


class _FakeTensor:
    """Pickles like a torch tensor (a torch._utils reduce), without torch."""

    def __reduce__(self):
        args = (b"storage", 0, (2,), (1,), False, __import__("collections").OrderedDict())
        return (_rebuild, args)


def _rebuild(*args):
    return None


def test_flame_embedding_with_torch_entries(tmp_path, synthetic_source, monkeypatch):
    path = str(tmp_path / "generic_model.pkl")
    raw = fx.write_flame(path)
    faces, bary = fx.flame_embedding(raw["triangles"], raw["landmarks"])
    # DECA's file holds torch tensors (dynamic contour landmarks) we must skip.
    monkeypatch.setattr(_rebuild, "__module__", "torch._utils")
    monkeypatch.setattr(_rebuild, "__qualname__", "_rebuild_tensor_v2")
    torch, utils = type(sys)("torch"), type(sys)("torch._utils")
    utils._rebuild_tensor_v2 = _rebuild
    torch._utils = utils
    with monkeypatch.context() as mp:
        mp.setitem(sys.modules, "torch", torch)
        mp.setitem(sys.modules, "torch._utils", utils)
        embedding = str(tmp_path / "landmark_embedding.npy")
        np.save(embedding, {"dynamic_lmk_faces_idx": _FakeTensor(),
                            "full_lmk_faces_idx": faces[None],
                            "full_lmk_bary_coords": bary[None]}, allow_pickle=True)
    assert "torch" not in sys.modules or sys.modules["torch"] is not torch
    m = flame.load(path, landmark_embedding=embedding)
    np.testing.assert_array_equal(np.asarray(m.landmark_indices), raw["landmarks"])
