"""The first detection pass over a photo folder, in images/s (run by hand, not in CI).

python benchmarks/detect_speed.py [FOLDER] [--copies 8] [--workers 0,2,4] [--rounds 2]

`FolderDataset`'s scan (decoding at <= 1024 px, MediaPipe's face mesh, the 68 points,
the cache entry) over FOLDER's images linked `--copies` times (default:
../shared/data/faces-dev), each round on an empty cache, with `scan_workers` threads (0:
the calling thread). The peer: grain's worker processes (`grain.MapDataset ...
mp_prefetch`, `pip install grain==0.2.11`; newer grain needs protobuf >= 5, which
mediapipe 0.10.14 does not import with), running the same detection per image, timed
from the pipeline's start (its processes' start-up included: what a scan pays). Ratios
are against one thread (`--workers 0`), in the same run.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mofa.data import faces as faces_lib  # noqa: E402
from mofa.data.folder import FolderDataset, find_images  # noqa: E402

DEFAULT_FOLDER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..",
                              "shared", "data", "faces-dev")


class _Detect:
    """One image's detection as the scan runs it, in a grain worker (its own graphs)."""

    def __init__(self):
        self._detector = None

    def __call__(self, path: str) -> int:
        if self._detector is None:
            self._detector = faces_lib.MediaPipeDetector()
        try:
            image, _ = faces_lib.open_rgb8(path, max_short_side=1024)
        except faces_lib.ImageError:
            return 0
        return len(self._detector(image))


def _linked_folder(source: str, copies: int, into: str) -> int:
    paths = find_images(source)
    if not paths:
        raise SystemExit(f"no images under {source}")
    for copy in range(copies):
        for i, path in enumerate(paths):
            os.symlink(os.path.abspath(path),
                       os.path.join(into, f"{copy:03d}_{i:04d}{os.path.splitext(path)[1]}"))
    return len(paths) * copies


def _scan_rate(folder: str, workers: int, count: int) -> float:
    with tempfile.TemporaryDirectory() as cache:
        start = time.perf_counter()
        FolderDataset(folder, 64, cache_dir=cache, progress=False, scan_workers=workers)
        return count / (time.perf_counter() - start)


def _grain_rate(folder: str, workers: int, count: int) -> float:
    import grain.python as grain

    paths = find_images(folder)
    start = time.perf_counter()
    dataset = grain.MapDataset.source(paths).map(_Detect()).to_iter_dataset()
    for _ in dataset.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers)):
        pass
    return count / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", nargs="?", default=DEFAULT_FOLDER)
    parser.add_argument("--copies", type=int, default=8)
    parser.add_argument("--workers", default="0,2,4")
    parser.add_argument("--grain-workers", default="2", help="'' skips grain")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    workers = [int(w) for w in args.workers.split(",")]
    if workers[0] != 0:
        workers.insert(0, 0)
    peers = [int(w) for w in args.grain_workers.split(",") if w]
    with tempfile.TemporaryDirectory() as folder:
        count = _linked_folder(args.folder, args.copies, folder)
        print(f"{count} images ({args.copies} links to each of {args.folder}'s), "
              f"{os.cpu_count()} cores")
        rates: dict = {}
        _scan_rate(folder, 0, count)  # warm: file cache, mediapipe's import
        for _ in range(args.rounds):
            for w in workers:
                rates.setdefault(f"threads={w}", []).append(_scan_rate(folder, w, count))
            for w in peers:
                try:
                    rate = _grain_rate(folder, w, count)
                except ImportError:
                    print("grain is not installed: pip install grain==0.2.11")
                    peers = []
                    break
                rates.setdefault(f"grain processes={w}", []).append(rate)
    base = sum(rates["threads=0"]) / len(rates["threads=0"])
    print("| scan | images/s (each round) | vs one thread |")
    print("|---|---|---|")
    for name, values in rates.items():
        mean = sum(values) / len(values)
        print(f"| {name} | {', '.join(f'{v:.1f}' for v in values)} | {mean / base:.2f}x |")


if __name__ == "__main__":
    main()
