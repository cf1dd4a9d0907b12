"""Peak memory and speed of `mofa reconstruct` on videos of growing length (run by hand).

python benchmarks/video_memory.py [--frames 60,240] [--width 1920 --height 1080]

Writes 1080p clips of a face photo (../shared/data/faces-dev) moving across the frame,
streamed to H.264 (the clip is never held in memory here either), runs
`mofa reconstruct` on each in its own process and prints the process's peak
resident memory, frames/s, and the memory the decoded clip alone would take.
A streaming reconstruction keeps the peak flat as the clip grows.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_RUN = """
import resource, sys
from mofa import cli
status = cli.main(sys.argv[1:])
print("PEAK_RSS_MB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0)
"""


def write_clip(path: str, frames: int, width: int, height: int, photo: str,
               fps: float = 30.0) -> None:
    """A photo (480 px) drifting over a gradient, streamed to `path`."""
    import imageio_ffmpeg
    from PIL import Image

    face = np.asarray(Image.open(photo).convert("RGB").resize((480, 480)))
    ramp = np.linspace(60, 200, width, dtype=np.float32)[None, :, None]
    background = np.broadcast_to(ramp, (height, width, 3)).astype(np.uint8)
    writer = imageio_ffmpeg.write_frames(path, (width, height), fps=fps, codec="libx264",
                                         macro_block_size=2)
    writer.send(None)
    for t in range(frames):
        frame = background.copy()
        x = int((width - 480) * (0.5 + 0.4 * np.sin(t / 40.0)))
        y = (height - 480) // 2
        frame[y:y + 480, x:x + 480] = face
        writer.send(frame)
    writer.close()


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--frames", default="60,240")
    parser.add_argument("--width", type=int, default=1920)
    parser.add_argument("--height", type=int, default=1080)
    parser.add_argument("--fit-steps", type=int, default=40)
    parser.add_argument("--photo", default=os.path.join(
        os.path.dirname(REPO), "shared", "data", "faces-dev", "deca_0.jpg"))
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for frames in (int(f) for f in args.frames.split(",")):
            clip = os.path.join(tmp, f"clip{frames}.mp4")
            write_clip(clip, frames, args.width, args.height, args.photo)
            start = time.perf_counter()
            done = subprocess.run(
                [sys.executable, "-c", _RUN, "reconstruct", clip, "--out",
                 os.path.join(tmp, f"out{frames}"), "--fit-steps", str(args.fit_steps),
                 "--quiet"], cwd=REPO, capture_output=True, text=True, check=True)
            seconds = time.perf_counter() - start
            peak = float(done.stdout.split("PEAK_RSS_MB")[-1])
            with open(os.path.join(tmp, f"out{frames}", "summary.json"), encoding="utf-8") as f:
                faces = json.load(f)["num_faces"]
            rows.append((frames, faces, seconds, peak,
                         frames * args.width * args.height * 3 / 2**20))
    print(f"\n{args.width}x{args.height}, --fit-steps {args.fit_steps}\n")
    print("| frames | faces | seconds | frames/s | peak RSS (MB) | decoded clip (MB) |")
    print("|---|---|---|---|---|---|")
    for frames, faces, seconds, peak, clip_mb in rows:
        print(f"| {frames} | {faces} | {seconds:.1f} | {frames / seconds:.2f} | {peak:.0f} "
              f"| {clip_mb:.0f} |")
    if len(rows) > 1:
        print(f"\npeak RSS ratio longest/shortest: {rows[-1][3] / rows[0][3]:.2f} for "
              f"{rows[-1][0] / rows[0][0]:.0f}x the frames")


if __name__ == "__main__":
    main()
