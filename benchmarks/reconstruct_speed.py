"""Whole `mofa reconstruct` runs with the default reconstructor: faces/s and process CPU
per face, optionally alternated with another checkout in the same hour.

    python benchmarks/reconstruct_speed.py PHOTOS [--outputs mesh,images] [--rounds 2]
        [--against OTHER_CHECKOUT] [--passes 2] [--with-detection] [--out-dir DIR]

Each run is a fresh process (`PYTHONPATH` = this checkout, or --against's): it loads the
default reconstructor, reconstructs every photo once untimed (compiling every program and
running MediaPipe, whose landmarks are cached on disk by the image's content, so every run
and both checkouts see the same detections), then times `reconstruct.run` over the photos
--passes times over with the given outputs (`''`: codes only). Detection is left out of
the timing (MediaPipe's own rate is printed apart by `ict_benchmark.py run`), unless
--with-detection: then MediaPipe runs on every photo of the timed passes too, as in
`mofa reconstruct` (the issue's "faces/s with detection"). --out-dir: where the runs write
(default the temporary folder; a tmpfs such as /dev/shm leaves the disk out). The machine
is shared and its speed varies by hour: compare the two checkouts' rows of one call only.
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import os
import pickle
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class CachedDetections:
    """MediaPipe's faces by the photo's content, kept in a file across processes."""

    def __init__(self, path: str):
        self.path = path
        self.cache = {}
        if os.path.exists(path):
            with open(path, "rb") as f:
                self.cache = pickle.load(f)
        self.detector = None

    def __call__(self, image):
        key = hashlib.md5(image.tobytes()).hexdigest()
        if key not in self.cache:
            if self.detector is None:
                from mofa.data import faces as faces_lib
                self.detector = faces_lib.MediaPipeDetector(max_faces=8)
            self.cache[key] = self.detector(image)
        return self.cache[key]

    def save(self) -> None:
        with open(self.path, "wb") as f:
            pickle.dump(self.cache, f)


def one_run(args) -> None:
    from mofa import inference, reconstruct

    outputs = tuple(filter(None, args.outputs.split(",")))
    photos = sorted(glob.glob(os.path.join(args.photos, "*.png"))
                    + glob.glob(os.path.join(args.photos, "*.jpg")))
    if args.with_detection:
        from mofa.data import faces as faces_lib
        detector = faces_lib.MediaPipeDetector(max_faces=8)
    else:
        detector = CachedDetections(args.detections)
    rec = inference.load_reconstructor()
    with tempfile.TemporaryDirectory(dir=args.out_dir) as out:
        reconstruct.run(photos, os.path.join(out, "warm"), rec, detector, progress=False,
                        outputs=outputs)
        if not args.with_detection:
            detector.save()
        wall, cpu = time.perf_counter(), time.process_time()
        summary = reconstruct.run(photos * args.passes, os.path.join(out, "timed"), rec,
                                  detector, progress=False, outputs=outputs)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    faces = summary["num_faces"]
    print(f"RESULT {faces} faces {faces / wall:.2f} faces/s {1e3 * cpu / faces:.1f} ms CPU/face")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("photos")
    parser.add_argument("--outputs", default="mesh,images",
                        help="comma-separated outputs besides the codes ('' for codes only)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--passes", type=int, default=2)
    parser.add_argument("--against", default=None, help="another checkout, alternated run by run")
    parser.add_argument("--with-detection", action="store_true",
                        help="time MediaPipe on every photo too, as `mofa reconstruct` runs")
    parser.add_argument("--out-dir", default=None, help="where the runs write")
    parser.add_argument("--detections", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        one_run(args)
        return
    if not os.path.isdir(args.photos):
        parser.error(f"photos: {args.photos!r} is not a folder")
    cache = args.detections or os.path.join(
        tempfile.gettempdir(), "mofa-speed-" + hashlib.md5(
            os.path.abspath(args.photos).encode()).hexdigest()[:12] + ".pkl")
    checkouts = [("this", REPO)] + ([("against", os.path.abspath(args.against))]
                                    if args.against else [])
    for _ in range(args.rounds):
        for name, checkout in checkouts:
            command = [sys.executable, os.path.abspath(__file__), args.photos, "--one",
                       "--outputs", args.outputs, "--passes", str(args.passes),
                       "--detections", cache]
            command += ["--with-detection"] if args.with_detection else []
            command += ["--out-dir", args.out_dir] if args.out_dir else []
            result = subprocess.run(command, cwd=checkout, capture_output=True, text=True,
                                    env={**os.environ, "PYTHONPATH": checkout})
            line = [x for x in result.stdout.splitlines() if x.startswith("RESULT")]
            if result.returncode or not line:
                sys.exit(f"{name} ({checkout}) failed:\n{result.stderr[-3000:]}")
            detection = ", detection timed" if args.with_detection else ""
            print(f"{name:8s} {line[0][len('RESULT '):]}  outputs={args.outputs or 'codes'}"
                  f"{detection}", flush=True)


if __name__ == "__main__":
    main()
