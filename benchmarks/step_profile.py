"""Where a fitting step's time goes: the photometric objective and its parts, per call.

Times (median of --repeats calls after a compiling call, each ended with
`jax.block_until_ready`) on a batch of random faces of one model through one camera:
the fitting objective forward and its gradient, the geometry (bases, pose), the
vertex normals, the visibility pass, the barycentric interpolation, a whole
forward render and the closed-form light and skin solve (`fitting.solve_appearance`).
Run by hand from the repository root, e.g. to compare two checkouts:

    python benchmarks/step_profile.py --face-model ict:/tmp/ict/ict-facekit --size 128
    PYTHONPATH=OTHER_CHECKOUT python benchmarks/step_profile.py ...   # the same, other code

--decimate MM draws the model decimated to MM cells (`facemodel.decimate`, as the
fit's coarse steps do) in every part but the objective's landmarks and priors;
--fit-steps N adds the time of a whole `fitting.fit` of the batch at --size (its
default options, so the coarse steps of 128 px crops draw the 6 mm mesh), and with
--options K=V,... its FitOptions overrides. --versus K=V,... then times that fit and
one with these overrides instead, interleaved in this process (--repeats rounds of
one call each), and prints wall and process CPU seconds of both: on a shared machine
whole-fit times of separate runs varied by 20-30%, more than the gains measured.
--stage-steps N instead times a step of each of the fit's stages as the fit runs them
(a scan of N steps of `fitting._run_stage`, with --options): rigid and landmark shape,
coarse appearance (half-size images, the decimated mesh) and full-size appearance
(sub-grid views of the full mesh).
--xla-ops N adds, under each timed program, its N costliest XLA operations (fusions,
scatters, loops) over one profiled call, from a `jax.profiler` trace, with the JAX
operation each came from: which part of a step to work on (a loop's time includes that
of the operations in its body, which are listed too).
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import functools
import glob
import gzip
import json
import re
import statistics
import tempfile
import time

import jax
import jax.numpy as jnp

from mofa import facemodel, fitting
from mofa.code import DEFAULT_FOV_DEGREES, random_code
from mofa.render import camera as camera_lib
from mofa.render import rasterizer, render


XLA_OPS = 0  # --xla-ops


def _median_ms(function, *args, repeats: int) -> float:
    function = jax.jit(function)
    jax.block_until_ready(function(*args))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(function(*args))
        times.append(time.perf_counter() - start)
    if XLA_OPS:
        _print_costliest_ops(function, args, XLA_OPS)
    return 1e3 * statistics.median(times)


def _print_costliest_ops(function, args, count: int) -> None:
    """The `count` XLA operations of `function`'s program that took longest in one traced
    call (ms), each with the JAX operation it came from (the HLO's op_name)."""
    source = {m.group(1): m.group(2) for m in re.finditer(
        r'^\s*%?([\w.\-]+) = [^\n]*?op_name="([^"]*)"',
        function.lower(*args).compile().as_text(), re.M)}
    with tempfile.TemporaryDirectory() as folder:
        jax.profiler.start_trace(folder, create_perfetto_trace=True)
        jax.block_until_ready(function(*args))
        jax.profiler.stop_trace()
        trace = json.load(gzip.open(glob.glob(f"{folder}/**/*.trace.json.gz",
                                              recursive=True)[0]))
    spent = collections.Counter()
    for event in trace["traceEvents"] if isinstance(trace, dict) else trace:
        if event.get("ph") == "X" and event.get("name") in source:
            spent[event["name"]] += event.get("dur", 0) / 1e3
    for name, ms in spent.most_common(count):
        print(f"      {ms:7.2f} ms  {name:32s} {source[name][-70:]}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--face-model", default="builtin")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--decimate", type=float, default=0.0)
    parser.add_argument("--fit-steps", type=int, default=0)
    parser.add_argument("--options", default="")
    parser.add_argument("--versus", default=None)
    parser.add_argument("--stage-steps", type=int, default=0)
    parser.add_argument("--xla-ops", type=int, default=0)
    args = parser.parse_args(argv)
    global XLA_OPS
    XLA_OPS = args.xla_ops
    if args.versus is not None and not args.fit_steps:
        parser.error("--versus compares whole fits: give --fit-steps N too")

    full_model = facemodel.load(args.face_model)
    model = facemodel.decimate(full_model, args.decimate) if args.decimate else full_model
    camera = camera_lib.Camera.from_fov(DEFAULT_FOV_DEGREES, args.size, args.size)
    code = random_code(model, jax.random.key(0), (args.batch,))
    out = render.render_face(model, code, camera)
    images = out.image + 0.05  # not the rendering itself: a non-zero residual
    landmarks, weight = out.landmarks, jnp.ones(out.landmarks.shape[:2])
    vertices, albedo = render.face_geometry(model, code)
    screen = camera_lib.project(vertices, camera)
    triangle_id = rasterizer.rasterize(screen, model.triangles, height=args.size,
                                       width=args.size).triangle_id
    attributes = jnp.concatenate([albedo, albedo, albedo[..., :2]], -1)  # 8 channels

    def objective(c):
        return fitting.objective(full_model, camera, c, images, landmarks, weight,
                                 render_model=model)

    def interpolate(s, a):
        bary = rasterizer.barycentrics(s, model.triangles, triangle_id)
        return rasterizer.interpolate(a, model.triangles, triangle_id, bary)

    def squared(f):
        return lambda *a: sum(jnp.sum(x**2) for x in jax.tree.leaves(f(*a)))

    normals = lambda v: facemodel.vertex_normals(v, model.triangles)  # noqa: E731
    parts = [
        ("objective forward", objective, (code,)),
        ("objective gradient", jax.grad(objective), (code,)),
        ("geometry forward", lambda c: render.face_geometry(model, c), (code,)),
        ("geometry gradient",
         jax.grad(squared(lambda c: render.face_geometry(model, c))), (code,)),
        ("vertex normals forward", normals, (vertices,)),
        ("vertex normals gradient", jax.grad(squared(normals)), (vertices,)),
        ("rasterize (visibility)",
         lambda s: rasterizer.rasterize(s, model.triangles, height=args.size,
                                        width=args.size).triangle_id, (screen,)),
        ("interpolate 8 channels forward", interpolate, (screen, attributes)),
        ("interpolate 8 channels gradient",
         jax.grad(squared(interpolate), argnums=(0, 1)), (screen, attributes)),
        ("render_face forward", lambda c: render.render_face(model, c, camera).image, (code,)),
        ("appearance solve, 2 rounds",
         lambda c: fitting.solve_appearance(full_model, camera, c, images,
                                            render_model=model, rounds=2), (code,)),
    ]
    if args.fit_steps:
        options = dataclasses.replace(fitting.FitOptions(),
                                      **fitting.option_overrides(args.options))
        coarse = fitting.coarse_render_model(full_model, options)
        parts.append((f"whole fit, {args.fit_steps} steps",
                      lambda i: fitting.fit(full_model, camera, i, landmarks, weight,
                                            steps=args.fit_steps, options=options,
                                            coarse_mesh=coarse), (images,)))
    print(f"{args.face_model}{f' decimated to {args.decimate} mm' if args.decimate else ''}: "
          f"{model.num_vertices} vertices, {model.triangles.shape[0]} "
          f"triangles, batch {args.batch} at {args.size} px, "
          f"{float(out.mask.mean()):.0%} of the pixels covered")
    if args.fit_steps and args.versus is not None:
        _interleaved_fits(full_model, camera, images, landmarks, weight, args)
        return
    if args.stage_steps:
        _stage_steps(full_model, camera, images, landmarks, weight, args)
        return
    for name, function, inputs in parts:
        if args.xla_ops:
            print(f"  {name}", flush=True)
        print(f"  {name:34s} {_median_ms(function, *inputs, repeats=args.repeats):8.2f} ms",
              flush=True)


def _stage_steps(model, camera, images, landmarks, weight, args) -> None:
    """ms per step of each fitting stage, from the landmarks' initial code."""
    options = dataclasses.replace(fitting.FitOptions(), **fitting.option_overrides(args.options))
    init = fitting.initial_code(model, camera, landmarks, weight)
    full = fitting.Views.single(camera, images, landmarks)
    stages = [
        ("rigid", full, "rigid", None),
        ("landmark shape", full, "shape", None),
        ("coarse appearance", fitting.Views.single(
            *fitting.half_resolution(camera, images, landmarks)), "appearance",
         fitting.coarse_render_model(model, options)),
        ("full-size appearance", fitting.subgrid_views(
            camera, images, landmarks, options.full_size_subgrid), "appearance", None),
    ]
    for name, views, stage, render_model in stages:
        def run(code, views=views, stage=stage, render_model=render_model):
            return fitting._run_stage(model, views, options, stage, args.stage_steps, (), code,
                                      weight, None, render_model)
        ms = _median_ms(run, init, repeats=args.repeats) / args.stage_steps
        print(f"  {name + ' step':34s} {ms:8.2f} ms", flush=True)


def _interleaved_fits(model, camera, images, landmarks, weight, args) -> None:
    """Whole fits with --options and with --versus, alternated call by call."""
    runs = {}
    for text in (args.options, args.versus):
        options = dataclasses.replace(fitting.FitOptions(), **fitting.option_overrides(text))
        coarse = fitting.coarse_render_model(model, options)
        runs[text or "defaults"] = functools.partial(
            fitting.fit, model, camera, images, landmarks, weight, steps=args.fit_steps,
            options=options, coarse_mesh=coarse)
    times = {name: ([], []) for name in runs}
    for name, run in runs.items():
        jax.block_until_ready(run())  # compiles
    for _ in range(args.repeats):
        for name, run in runs.items():
            wall, cpu = time.perf_counter(), time.process_time()
            jax.block_until_ready(run())
            times[name][0].append(time.perf_counter() - wall)
            times[name][1].append(time.process_time() - cpu)
    for name, (wall, cpu) in times.items():
        print(f"  whole fit, {args.fit_steps} steps, {name}: wall {statistics.median(wall):.2f} s"
              f" (min {min(wall):.2f}), CPU {statistics.median(cpu):.2f} s (min {min(cpu):.2f})"
              f", median of {args.repeats}", flush=True)


if __name__ == "__main__":
    main()
