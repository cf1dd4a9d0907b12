"""Landmark fitting: mofa's batched `fit_landmarks` against eos (`pip install eos-py`).

Both fit identity, expression and pose to the same 68 synthetic landmarks of
random faces (known ground truth; perspective camera of mofa's default FOV,
optional pixel noise). eos gets our face model as a `MorphableModel` built from
numpy arrays (expressions as a PCA model) and its landmarks by vertex index
(identity `LandmarkMapper`), with its fixed-vertex fit (no contour refinement,
as the synthetic landmarks are fixed vertices too).

Reported per model and method: mean per-vertex distance (mm) of the fitted
face to the truth after rigid (Procrustes) alignment over the face-mask
vertices, landmark reprojection error of mofa's fit, and faces/s.

  python benchmarks/fit_bench.py [--faces 64] [--ict /tmp/ict/ict-facekit] [--noise 1.0]
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from mofa import facemodel, fitting
from mofa.code import DEFAULT_FOV_DEGREES
from mofa.data import synthetic
from mofa.render import Camera


def aligned_error(fitted: np.ndarray, truth: np.ndarray, mask: np.ndarray) -> float:
    """Mean vertex distance (mm) after the best rigid alignment of fitted onto truth."""
    a, b = fitted[mask], truth[mask]
    ca, cb = a.mean(0), b.mean(0)
    u, _, vt = np.linalg.svd((a - ca).T @ (b - cb))
    d = np.sign(np.linalg.det(u @ vt))
    rotation = u @ np.diag([1.0, 1.0, d]) @ vt
    return float(np.linalg.norm((a - ca) @ rotation - (b - cb), axis=-1).mean())


def eos_model(model: facemodel.FaceModel):
    import eos

    triangles = np.asarray(model.triangles).tolist()
    pca = lambda mean, basis, std: eos.morphablemodel.PcaModel(  # noqa: E731
        np.asarray(mean, np.float32).reshape(-1),
        np.asarray(basis, np.float32).reshape(basis.shape[0], -1).T.copy(),
        (np.asarray(std, np.float32) ** 2), triangles)
    shape = pca(model.mean_shape, model.identity_basis, model.identity_std)
    expression = pca(np.zeros_like(model.mean_shape), model.expression_basis,
                     model.expression_std)
    color = pca(model.albedo_mean, model.albedo_basis[:1], model.albedo_std[:1])
    return eos.morphablemodel.MorphableModel(shape, expression, color)


def fit_eos(morphable, model, landmarks: np.ndarray, size: int, lambda_identity: float):
    """eos's standardized (identity, expression) coefficients of each face, one at a time."""
    import eos

    mapper = eos.core.LandmarkMapper()
    indices = np.asarray(model.landmark_indices)
    identities, expressions = [], []
    for points in landmarks:
        marks = [eos.core.Landmark(str(int(i)), np.asarray(p, np.float32).reshape(2, 1))
                 for i, p in zip(indices, points)]
        _, _, identity, expression = eos.fitting.fit_shape_and_pose(
            morphable, marks, mapper, size, size, lambda_identity=lambda_identity,
            lambda_expressions=lambda_identity)
        identities.append(identity)
        expressions.append(expression)
    return np.asarray(identities, np.float32), np.asarray(expressions, np.float32)


def bench(name: str, model: facemodel.FaceModel, args) -> list:
    size = args.size
    camera = Camera.from_fov(DEFAULT_FOV_DEGREES, size, size)
    truth = jax.jit(synthetic.random_face_codes, static_argnums=2)(
        model, jax.random.key(args.seed), args.faces)
    clean = np.asarray(fitting.project_landmarks(model, camera, truth))
    landmarks = clean + args.noise * np.random.default_rng(args.seed).normal(size=clean.shape)
    true_shape = np.asarray(facemodel.shape(model, truth.identity, truth.expression))
    mask = np.asarray(model.face_mask) > 0.5
    errors = lambda shapes: np.mean([aligned_error(s, t, mask)  # noqa: E731
                                     for s, t in zip(shapes, true_shape)])
    rows = [(name, "mean face", "-", errors(np.broadcast_to(np.asarray(model.mean_shape),
                                                               true_shape.shape)), "-", "-")]
    options = fitting.FitOptions(prior_identity=args.prior, prior_expression=args.prior)
    for batch in args.batches:
        chunks = [slice(i, i + batch) for i in range(0, args.faces, batch)]
        run = lambda lm: jax.block_until_ready(fitting.fit_landmarks(  # noqa: E731
            model, camera, lm, jnp.ones(lm.shape[:2]), steps=args.steps, options=options))
        inputs = [jnp.asarray(landmarks[c], jnp.float32) for c in chunks]
        run(inputs[0])  # compile
        start = time.perf_counter()
        codes = [run(lm) for lm in inputs]
        seconds = time.perf_counter() - start
        shapes = np.concatenate([np.asarray(facemodel.shape(model, c.identity, c.expression))
                                 for c in codes])
        reprojection = np.concatenate([np.asarray(fitting.fit_errors(
            model, camera, code, jnp.asarray(clean[c]), jnp.ones(clean[c].shape[:2]))[
                "landmark_px"]) for code, c in zip(codes, chunks)]).mean()
        rows.append((name, f"mofa fit_landmarks ({args.steps} st, prior {args.prior:g})", batch,
                     errors(shapes),
                     float(reprojection), args.faces / seconds))
    try:
        morphable = eos_model(model)
    except ImportError:
        rows.append((name, "eos", "-", "not installed (pip install eos-py)", "-", "-"))
        return rows
    for lam in args.eos_lambda:
        start = time.perf_counter()
        identity, expression = fit_eos(morphable, model, landmarks, size, lam)
        seconds = time.perf_counter() - start
        shapes = np.asarray(facemodel.shape(model, identity, expression))
        rows.append((name, f"eos 1.5 fit_shape_and_pose (lambda {lam:g})", 1, errors(shapes),
                     "-", args.faces / seconds))
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--faces", type=int, default=64)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--prior", type=float, default=fitting.FitOptions().prior_identity,
                        help="mofa's identity/expression prior weight")
    parser.add_argument("--size", type=int, default=256, help="image size, pixels")
    parser.add_argument("--noise", type=float, default=0.0, help="landmark noise std, pixels")
    parser.add_argument("--eos-lambda", type=float, nargs="+", default=[30.0],
                        help="eos's shape/expression regularization (its default: 30)")
    parser.add_argument("--ict", default=None, help="ICT-FaceKit folder (adds the ICT model)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    models = [("builtin", facemodel.load("builtin"))]
    if args.ict:
        models.append(("ict", facemodel.load(f"ict:{args.ict}")))
    rows = []
    for name, model in models:
        rows += bench(name, model, args)
    print(f"{args.faces} random faces, {args.size} px, landmark noise {args.noise:g} px, "
          f"{jax.device_count()} {jax.default_backend()} device(s)")
    print(f"{'model':8} {'method':44} {'batch':>5} {'vertex err mm':>13} {'lmk px':>7} "
          f"{'faces/s':>9}")
    for model, method, batch, err, lmk, speed in rows:
        fmt = lambda v, spec: format(v, spec) if isinstance(v, float) else str(v)  # noqa: E731
        print(f"{model:8} {method:44} {batch!s:>5} {fmt(err, '13.2f'):>13} "
              f"{fmt(lmk, '7.2f'):>7} {fmt(speed, '9.1f'):>9}")


if __name__ == "__main__":
    main()
