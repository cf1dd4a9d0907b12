"""Registers the builtin model's procedural mean face to ICT-FaceKit's mean face.

The builtin model (mofa/facemodel/builtin.py) is generated without any data, and
its procedural mean face is 2.1 mm (NoW median) from ICT-FaceKit's mean, a mean
of real scanned faces. This finds the identity code of the builtin model whose
face is closest to ICT's neutral mean under the NoW protocol
(`scan_eval.fit_linear_model_to_scan`: 7-landmark similarity alignment, rigid
ICP, point-to-plane non-rigid ICP in the identity code, a ridge in units of the
builtin prior). Then it fits 180 random ICT identities (N(0, 1) on ICT's 100
modes, neutral) the same way around that registered face, with a weak ridge, and
adds their average code: the population's mean as the builtin can draw it
(builtin version 5; version 4 stopped at the single registration, whose strong
ridge held it near the procedural face). It writes the code to
mofa/facemodel/builtin_mean.py, which the builtin model adds to its mean. 100
numbers derived from ICT-FaceKit (MIT License, (c) 2020 USC Institute for
Creative Technologies); no ICT file or vertex is committed.

    python third_party/ict_facekit/register_builtin_mean.py --ict PATH   # ~8 min, 2 processes
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

from mofa import facemodel, scan_eval  # noqa: E402
from mofa.facemodel import builtin  # noqa: E402

OUTPUT = os.path.join(ROOT, "mofa", "facemodel", "builtin_mean.py")

HEADER = '''"""The builtin model's mean identity code: its procedural mean face registered to
ICT-FaceKit's mean face, then moved by the average code of random ICT identities
(seeds {seeds}, {size} each, ridge {pridge}). Written by

    python third_party/ict_facekit/register_builtin_mean.py --ict PATH --ridge {ridge}

(NoW median of the builtin mean against ICT's mean: {before:.2f} mm procedural,
{after:.2f} mm registered.) Derived from ICT-FaceKit, MIT License, (c) 2020 USC
Institute for Creative Technologies (third_party/README.md). Coefficients of
`builtin._identity`'s basis, in mm (basis rows have unit norm).
"""

MEAN_IDENTITY = (
'''


def _face(model, code: np.ndarray) -> np.ndarray:
    """The builtin's procedural mean face moved by an identity code (mm coefficients)."""
    return (np.asarray(model.mean_shape, np.float64)
            + np.einsum("k,kvd->vd", code, np.asarray(model.identity_basis, np.float64)))


def _population_codes(args_tuple):
    """Builtin identity codes (mm) of random ICT identities, around `mean`."""
    ict_path, seed, count, mean, ridge, iterations = args_tuple
    import jax
    model = builtin.build(registered_mean=False)
    ict = facemodel.load(f"ict:{ict_path}", region="face")
    identity = jax.random.normal(jax.random.key(seed), (count, ict.num_identity))
    shapes = np.asarray(facemodel.shape(ict, identity, np.zeros(
        (count, ict.num_expression), np.float32)), np.float64)
    now = list(scan_eval.NOW_LANDMARKS)
    ict_landmarks = np.asarray(ict.landmark_indices)[now]
    codes = []
    for i in range(count):
        code, _ = scan_eval.fit_linear_model_to_scan(
            mean, model.identity_basis, model.identity_std, model.triangles,
            np.asarray(model.landmark_indices)[now], shapes[i][::3],
            shapes[i][ict_landmarks], ridge=ridge, iterations=iterations)
        codes.append(code)
    return np.array(codes)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ict", required=True, help="an ICT-FaceKit clone (ict:PATH)")
    parser.add_argument("--ridge", type=float, default=3.0,
                        help="ridge on the code in units of the builtin prior")
    parser.add_argument("--iterations", type=int, default=16)
    parser.add_argument("--population-seeds", default="101,202",
                        help="one batch of random ICT identities per seed, one process each")
    parser.add_argument("--population-size", type=int, default=90, help="identities per seed")
    parser.add_argument("--population-ridge", type=float, default=0.3)
    parser.add_argument("--population-iterations", type=int, default=8)
    parser.add_argument("--out", default=OUTPUT)
    args = parser.parse_args()
    model = builtin.build(registered_mean=False)
    ict = facemodel.load(f"ict:{args.ict}")
    ict_mean = np.asarray(ict.mean_shape, np.float64)
    now = list(scan_eval.NOW_LANDMARKS)
    code, medians = scan_eval.fit_linear_model_to_scan(
        model.mean_shape, model.identity_basis, model.identity_std, model.triangles,
        np.asarray(model.landmark_indices)[now], ict_mean,
        ict_mean[np.asarray(ict.landmark_indices)[now]], ridge=args.ridge,
        iterations=args.iterations)
    print("ICT's mean face, NoW median per round (mm):", " ".join(f"{m:.2f}" for m in medians))
    # The population's average code around that registration: a strong ridge keeps the
    # single fit near the procedural face where ICT's faces on average are not.
    registered = _face(model, code)
    seeds = [int(s) for s in args.population_seeds.split(",") if s]
    jobs = [(args.ict, seed, args.population_size, registered, args.population_ridge,
             args.population_iterations) for seed in seeds]
    if jobs:
        import multiprocessing
        with multiprocessing.get_context("spawn").Pool(len(jobs)) as pool:
            population = np.concatenate(pool.map(_population_codes, jobs))
        code = code + population.mean(0)
        print(f"{len(population)} ICT identities: their average code moves the mean by "
              f"{np.sqrt(np.mean(np.square(population.mean(0) / model.identity_std))):.2f} "
              "prior std (RMS over components)")
    shape = _face(model, code)
    lm = np.asarray(model.landmark_indices)[now]
    after = scan_eval.scan_to_mesh_errors(ict_mean, ict_mean[np.asarray(ict.landmark_indices)[now]],
                                          shape, np.asarray(model.triangles), shape[lm])
    print(f"NoW median to ICT's mean: {medians[0]:.2f} mm procedural, "
          f"{after['median_mm']:.2f} mm registered")
    print(f"code RMS {np.sqrt(np.mean(np.square(code / model.identity_std))):.2f} std")
    rows = [", ".join(f"{c:.2f}" for c in code[i:i + 10]) for i in range(0, len(code), 10)]
    with open(args.out, "w") as f:
        f.write(HEADER.format(ridge=args.ridge, before=medians[0], after=after["median_mm"],
                              seeds=args.population_seeds, size=args.population_size,
                              pridge=args.population_ridge))
        f.write("".join(f"    {row},\n" for row in rows) + ")\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
