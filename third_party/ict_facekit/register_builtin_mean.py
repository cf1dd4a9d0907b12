"""Registers the builtin model's procedural mean face to ICT-FaceKit's mean face.

The builtin model (mofa/facemodel/builtin.py) is generated without any data, and
its procedural mean face is 2.1 mm (NoW median) from ICT-FaceKit's mean, a mean
of real scanned faces. This finds the identity code of the builtin model whose
face is closest to ICT's neutral mean under the NoW protocol
(`scan_eval.fit_linear_model_to_scan`: 7-landmark similarity alignment, rigid
ICP, point-to-plane non-rigid ICP in the identity code, a ridge in units of the
builtin prior) and writes it to mofa/facemodel/builtin_mean.py, which the
builtin model adds to its mean. 100 numbers derived from ICT-FaceKit (MIT
License, (c) 2020 USC Institute for Creative Technologies); no ICT file or
vertex is committed.

    python third_party/ict_facekit/register_builtin_mean.py --ict PATH   # about 30 s
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
ICT-FaceKit's mean face. Written by

    python third_party/ict_facekit/register_builtin_mean.py --ict PATH --ridge {ridge}

(NoW median of the builtin mean against ICT's mean: {before:.2f} mm procedural,
{after:.2f} mm registered.) Derived from ICT-FaceKit, MIT License, (c) 2020 USC
Institute for Creative Technologies (third_party/README.md). Coefficients of
`builtin._identity`'s basis, in mm (basis rows have unit norm).
"""

MEAN_IDENTITY = (
'''


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ict", required=True, help="an ICT-FaceKit clone (ict:PATH)")
    parser.add_argument("--ridge", type=float, default=3.0,
                        help="ridge on the code in units of the builtin prior")
    parser.add_argument("--iterations", type=int, default=16)
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
    print("NoW median per round (mm):", " ".join(f"{m:.2f}" for m in medians))
    print(f"code RMS {np.sqrt(np.mean(np.square(code / model.identity_std))):.2f} std")
    rows = [", ".join(f"{c:.2f}" for c in code[i:i + 10]) for i in range(0, len(code), 10)]
    with open(args.out, "w") as f:
        f.write(HEADER.format(ridge=args.ridge, before=medians[0], after=medians[-1]))
        f.write("".join(f"    {row},\n" for row in rows) + ")\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
