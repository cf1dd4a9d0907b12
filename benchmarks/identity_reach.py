"""How near a face model's identity space can come to ground-truth scans at all.

    python benchmarks/identity_reach.py --scans DIR [--face-model builtin] [--ridge 0.3]

For every NoW-style scan of DIR (`<stem>.obj` + `<stem>.txt`, e.g. the ICT benchmark's
`scans/`), fits the identity code by non-rigid ICP under the NoW protocol
(`scan_eval.fit_linear_model_to_scan`) and prints the pooled median / mean
scan-to-surface distance of the mean face and of the fitted face, and the fitted
codes' RMS in prior units: a floor for any reconstruction with that model.
`--save-codes PATH.npz` writes those codes (standardized, one array per scan stem) for
`ict_benchmark.py run --start-identity PATH.npz`: do the fits stay near them?
"""

from __future__ import annotations

import argparse
import glob
import os

import numpy as np

from mofa import facemodel, scan_eval


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scans", required=True, help="folder of <stem>.obj + <stem>.txt")
    parser.add_argument("--face-model", default="builtin")
    parser.add_argument("--ridge", type=float, default=0.3, help="in prior units")
    parser.add_argument("--iterations", type=int, default=8)
    parser.add_argument("--point-stride", type=int, default=3, help="every n-th scan point")
    parser.add_argument("--save-codes", default=None, help="npz of the fitted codes by stem")
    args = parser.parse_args(argv)
    model = facemodel.load(args.face_model)
    mean = np.asarray(model.mean_shape, np.float64)
    faces = np.asarray(model.triangles)
    landmarks = np.asarray(model.landmark_indices)[list(scan_eval.NOW_LANDMARKS)]
    paths = sorted(glob.glob(os.path.join(args.scans, "*.obj")))
    if not paths:
        raise SystemExit(f"no .obj scans in {args.scans}")
    before, after, spread, codes = [], [], [], {}
    for path in paths:
        points = scan_eval.read_mesh(path, need_faces=False)[0][::args.point_stride]
        scan_landmarks = scan_eval.read_landmarks(os.path.splitext(path)[0] + ".txt", 3)
        code, _ = scan_eval.fit_linear_model_to_scan(
            mean, model.identity_basis, model.identity_std, faces, landmarks, points,
            scan_landmarks, ridge=args.ridge, iterations=args.iterations)
        shape = mean + np.einsum("k,kvd->vd", code, np.asarray(model.identity_basis))
        for out, vertices in ((before, mean), (after, shape)):
            out.append(scan_eval.scan_to_mesh_errors(points, scan_landmarks, vertices, faces,
                                                     vertices[landmarks])["distances"])
        stem = os.path.splitext(os.path.basename(path))[0]
        codes[stem] = code / np.asarray(model.identity_std)
        spread.append(np.sqrt(np.mean(np.square(codes[stem]))))
        print(f"{os.path.basename(path)}: {np.median(before[-1]):.2f} -> "
              f"{np.median(after[-1]):.2f} mm, code RMS {spread[-1]:.2f} prior std", flush=True)
    before, after = np.concatenate(before), np.concatenate(after)
    print(f"{len(paths)} scans, {args.face_model}: mean face {np.median(before):.2f} / "
          f"{before.mean():.2f} mm, identity fitted {np.median(after):.2f} / {after.mean():.2f}"
          f" mm (median / mean), code RMS {np.min(spread):.1f}-{np.max(spread):.1f} prior std")
    if args.save_codes:
        np.savez(args.save_codes, **{k: v.astype(np.float32) for k, v in codes.items()})
        print(f"codes -> {args.save_codes}")


if __name__ == "__main__":
    main()
