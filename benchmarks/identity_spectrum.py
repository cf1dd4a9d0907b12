"""How much of a face model's identity space an image can see: similarity share,
non-rigid spread and spectrum, for the builtin model and optionally ICT-FaceKit.

A similarity transform (rigid motion plus uniform scale) of the face cannot be
told from head pose and camera distance, so it is removed first
(`facemodel.model.remove_similarity`, weighted by the model's face_mask). For
the identity space of each model it prints

  * the similarity share: the fraction of the face-region identity variance
    that is similarity transform (`similarity_share`);
  * the non-rigid spread: RMS per-vertex displacement (mm) over the face mask
    of a random identity (code ~ N(0, I)) after removing its similarity part
    (`nonrigid_rms`, exact, not sampled);
  * the spectrum of what is left: each principal component's share of the
    non-rigid variance (PCA in the face-mask-weighted metric, first 10) and the
    cumulative share of the first 10 / 20 / 50; and the share of the model's
    own first 10 components;

and, for the builtin model, the similarity share of every expression before the
builder removed it (those above 5%).

  python benchmarks/identity_spectrum.py [--ict /path/to/ict-facekit] [--figure out.png]

`--figure` renders the mean face and +-3 std of the first 6 identity components
of the builtin model, frontal and at 30 degrees yaw (docs/builtin_identity_components.png).
"""

from __future__ import annotations

import argparse

import numpy as np

from mofa import facemodel
from mofa.facemodel import builtin
from mofa.facemodel.model import nonrigid_rms, remove_similarity, similarity_share


def identity_stats(model: facemodel.FaceModel) -> dict:
    basis = np.asarray(model.identity_basis, np.float64)
    std = np.asarray(model.identity_std, np.float64)
    points = np.asarray(model.mean_shape, np.float64)
    weights = np.asarray(model.face_mask, np.float64)
    kept = remove_similarity(basis * std[:, None, None], points, weights)
    # Singular values of the mask-weighted fields: the principal non-rigid variances.
    flat = (kept * np.sqrt(weights)[None, :, None]).reshape(std.size, -1)
    var = np.linalg.svd(flat, compute_uv=False) ** 2
    own = np.sum(flat * flat, axis=1)  # the model's own components, in its order
    return {
        "components": own / own.sum(),
        "similarity_share": similarity_share(basis, std, points, weights),
        "nonrigid_rms": nonrigid_rms(basis, std, points, weights),
        "spectrum": var / var.sum(),
    }


def print_stats(label: str, stats: dict) -> None:
    s = stats["spectrum"]
    print(f"{label}: similarity share {100 * stats['similarity_share']:.1f}% of the face-region "
          f"identity variance; non-rigid RMS spread {stats['nonrigid_rms']:.2f} mm per vertex")
    print("  non-rigid variance per principal component (1-10): "
          + " ".join(f"{100 * v:.1f}%" for v in s[:10]))
    print("  ... per model component (1-10): "
          + " ".join(f"{100 * v:.1f}%" for v in stats["components"][:10]))
    print(f"  cumulative: 10 {100 * s[:10].sum():.1f}%, 20 {100 * s[:20].sum():.1f}%, "
          f"50 {100 * s[:50].sum():.1f}%")


def expression_similarity(threshold: float = 0.05) -> None:
    """The similarity share of each builtin expression field as designed (before removal)."""
    face = builtin._Face()
    fields = {}
    for name, field in builtin._central_expressions(face).items():
        fields[name] = field
    for name, field in builtin._left_expressions(face).items():
        fields[f"{name}_L"] = field
    shares = {n: similarity_share(f[None], None, face.v, face.mask) for n, f in fields.items()}
    print(f"builtin expressions, share of each designed field removed as similarity "
          f"(> {100 * threshold:.0f}%; _R and Right as their mirror images):")
    for name, share in sorted(shares.items(), key=lambda item: -item[1]):
        if share > threshold:
            print(f"  {name}: {100 * share:.0f}%")


def figure(model: facemodel.FaceModel, path: str, components: int = 6, size: int = 160) -> None:
    """Rows: components; columns: -3, 0, +3 std frontal, then the same at 30 degrees yaw."""
    import jax
    import jax.numpy as jnp

    from mofa import images, render
    from mofa.code import DEFAULT_FOV_DEGREES, FaceCode
    from mofa.render import sh

    sigmas = (-3.0, 0.0, 3.0)
    yaws = (0.0, 30.0)
    n = components * len(sigmas) * len(yaws)
    code = FaceCode.neutral(model, (n,))
    identity = np.zeros((n, model.num_identity), np.float32)
    yaw = np.zeros(n, np.float32)
    i = 0
    for k in range(components):
        for y in yaws:
            for s in sigmas:
                identity[i, k], yaw[i] = s, np.deg2rad(y)
                i += 1
    light = sh.directional_light([0.5, 0.5, 1.0], ambient=0.35, strength=1.0, batch_shape=(n,))
    code = code.replace(identity=jnp.asarray(identity),
                        rotation=code.rotation.at[:, 1].set(jnp.asarray(yaw)),
                        translation=code.translation.at[:, 2].set(-850.0),
                        illumination=light)
    camera = render.Camera.from_fov(DEFAULT_FOV_DEGREES, size, size)
    background = jnp.array([0.35, 0.38, 0.42])
    out = jax.jit(lambda c: render.render_face(model, c, camera, background=background))(code)
    pictures = images.linear_to_srgb(np.asarray(jax.device_get(out.image)))
    images.save_png(path, images.grid(pictures, columns=len(sigmas) * len(yaws)))
    print(f"wrote {path}: rows = identity components 1-{components}; columns = "
          "-3, 0, +3 std frontal, then -3, 0, +3 std at 30 degrees yaw")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ict", default=None, help="unpacked ICT-FaceKit folder (optional)")
    parser.add_argument("--figure", default=None, help="write the component figure here")
    parser.add_argument("--build", action="store_true",
                        help="build the builtin model afresh instead of loading the cache")
    args = parser.parse_args()
    model = builtin.build() if args.build else facemodel.load("builtin")
    print_stats("builtin identity", identity_stats(model))
    expression_similarity()
    ex_share = similarity_share(np.asarray(model.expression_basis, np.float64),
                                np.asarray(model.expression_std, np.float64),
                                np.asarray(model.mean_shape, np.float64),
                                np.asarray(model.face_mask, np.float64))
    print(f"builtin expression space now: similarity share {100 * ex_share:.2f}%")
    if args.ict:
        print_stats("ICT-FaceKit identity", identity_stats(facemodel.load(f"ict:{args.ict}")))
    if args.figure:
        figure(model, args.figure)


if __name__ == "__main__":
    main()
