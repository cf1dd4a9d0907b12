"""Plausibility of fits on real photos (no ground truth): the fitted identity's size
against the prior's, how far the fitted landmarks sit from the detector's, and the
fits' photometric residuals.

  python benchmarks/real_photos.py --photos ../shared/data/faces-dev --face-model ict:PATH
  python benchmarks/real_photos.py ... --fit-steps 200 --options coarse_fraction=0,prior_identity=0.005

Under the N(0, I) prior a typical identity code of K components has norm ~sqrt(K)
(10 for ICT's 100); a fit far above that is explaining the photo with an
implausible face. Outputs (overlays included) go to --out for looking at.
"""

from __future__ import annotations

import argparse
import dataclasses
import glob
import json
import os

import numpy as np

from mofa import fitting, inference, reconstruct
from mofa.data import faces as faces_lib


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", required=True, help="folder of photos")
    parser.add_argument("--face-model", default="builtin")
    parser.add_argument("--fit-steps", type=int, default=None)
    parser.add_argument("--options", default="", help="FitOptions overrides, k=v,k=v")
    parser.add_argument("--out", default="/tmp/mofa_real_photos")
    args = parser.parse_args(argv)
    rec = inference.load_reconstructor(face_model=args.face_model, fit_steps=args.fit_steps)
    overrides = fitting.option_overrides(args.options)
    rec.options = dataclasses.replace(rec.options, **overrides)
    paths = sorted(p for p in glob.glob(os.path.join(args.photos, "*")) if os.path.isfile(p))
    reconstruct.run(paths, args.out, rec, faces_lib.MediaPipeDetector(max_faces=8),
                    texture_size=64, progress=False)
    norms, nme, residuals = [], [], []
    for path in sorted(glob.glob(os.path.join(args.out, "**", "code.npz"), recursive=True)):
        code = np.load(path)
        norms.append(np.linalg.norm(code["identity"]))
        detected = code["landmarks_detected"]
        inter_ocular = np.linalg.norm(detected[36] - detected[45])  # outer eye corners
        nme.append(np.mean(np.linalg.norm(code["landmarks"] - detected, axis=-1)) / inter_ocular)
        with open(os.path.join(os.path.dirname(path), "code.json")) as f:
            residuals.append(json.load(f)["photometric_error"])
    print(f"{len(norms)} faces; identity norm median {np.median(norms):.1f} "
          f"max {np.max(norms):.1f} (typical under the prior: "
          f"{np.sqrt(rec.model.num_identity):.1f}); fitted vs detected landmarks, "
          f"median NME {np.median(nme):.4f}; overlays in {args.out}")
    if None not in residuals:  # the fit's photometric noise scale sits at FIT_NOISE's above it
        print("photometric residual p10/median/p90 {:.3f}/{:.3f}/{:.3f} (fixed noise scale "
              "{})".format(*np.percentile(residuals, [10, 50, 90]),
                           fitting.FIT_NOISE.photometric_scale))


if __name__ == "__main__":
    main()
