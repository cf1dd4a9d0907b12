"""The rasterizer of this checkout against another revision's, in one process.

Loads `mofa/render/rasterizer.py` as it was at --against (`git show`; the module
imports nothing of mofa), runs the same random faces through both, checks that the
results agree and prints medians of alternated calls and their ratio. --part picks
what is timed: the visibility pass (triangle ids identical), `render` (the image of
`render.render_face`, this checkout's renderer composing either rasterizer module) or
`gradient` (the gradient of a squared image loss with respect to the code). On
a shared machine separate runs of `render_bench.py` varied by 20-50%, more than a
change to measure; alternating in one process cancels the drift. Run by hand from the
repository root:

    python benchmarks/rasterizer_ab.py --against 709e247 --models builtin,ict:/tmp/ict/ict-facekit
    python benchmarks/rasterizer_ab.py --against HEAD~1 --part render --settings 1x128,64x128
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import subprocess
import tempfile
import time

import jax
import numpy as np

from mofa import facemodel
from mofa.code import DEFAULT_FOV_DEGREES, random_code
from mofa.render import camera as camera_lib
from mofa.render import rasterizer, render


def _module_at(revision: str):
    source = subprocess.run(["git", "show", f"{revision}:mofa/render/rasterizer.py"],
                            check=True, capture_output=True, text=True).stdout
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as f:
        f.write(source)
    spec = importlib.util.spec_from_file_location(f"rasterizer_{revision}", f.name)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _with_rasterizer(module, function):
    """`function` traced with `render`'s rasterizer module swapped for `module`."""
    def traced(*args):
        own = render.raster
        render.raster = module
        try:
            return function(*args)
        finally:
            render.raster = own
    return traced


def _part(part: str, model, size: int):
    """The timed function of `part`, (code, rasterizer module) -> result."""
    camera = camera_lib.Camera.from_fov(DEFAULT_FOV_DEGREES, size, size)
    if part == "visibility":
        def function(code, m):
            screen = camera_lib.project(render.face_geometry(model, code)[0], camera)
            return m.rasterize(jax.lax.stop_gradient(screen), model.triangles, height=size,
                               width=size).triangle_id
    elif part == "render":
        def function(code, m):
            return _with_rasterizer(m, lambda c: render.render_face(model, c, camera).image)(
                code)
    else:
        def function(code, m):
            image = _with_rasterizer(m, lambda c: render.render_face(model, c, camera).image)
            return jax.grad(lambda c: jax.numpy.sum((image(c) - 0.3) ** 2))(code)
    return function


def _seconds(function, argument) -> float:
    start = time.perf_counter()
    jax.block_until_ready(function(argument))
    return time.perf_counter() - start


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--against", required=True, help="a git revision")
    parser.add_argument("--part", default="visibility",
                        choices=("visibility", "render", "gradient"))
    parser.add_argument("--models", default="builtin")
    parser.add_argument("--settings", default="1x128,16x128,1x224,8x64",
                        help="comma list of BATCHxPIXELS")
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args(argv)
    other = _module_at(args.against)
    print(f"{args.part}, ms per image: this checkout / {args.against} (medians of "
          f"{args.repeats} alternated calls)")
    for spec in args.models.split(","):
        model = facemodel.load(spec)
        for setting in args.settings.split(","):
            batch, size = (int(x) for x in setting.split("x"))
            code = random_code(model, jax.random.key(batch * 1000 + size), (batch,))
            function = _part(args.part, model, size)
            runs = {name: jax.jit(lambda c, m=module: function(c, m))
                    for name, module in (("this", rasterizer), ("other", other))}
            results = {name: jax.tree.leaves(jax.device_get(run(code)))  # compiles
                       for name, run in runs.items()}
            times = {name: [] for name in runs}
            for _ in range(args.repeats):
                for name, run in runs.items():
                    times[name].append(_seconds(run, code))
            this, that = (1e3 * statistics.median(times[n]) / batch for n in ("this", "other"))
            if args.part == "visibility":
                agree = np.array_equal(results["this"][0], results["other"][0])
                same = "identical ids" if agree else "IDS DIFFER"
            else:
                gap = max(float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-12))
                          for a, b in zip(results["this"], results["other"]))
                same = f"largest relative difference {gap:.1e}"
            print(f"  {spec.split(':')[0]:8s} batch {batch:3d} {size:4d} px  {this:7.3f} / "
                  f"{that:7.3f}  = {this / that:.2f}  {same}", flush=True)


if __name__ == "__main__":
    main()
