"""An evaluated render in parts against the whole batch at once (run by hand, not in CI).

python benchmarks/render_parts.py [--settings 64x128,16x224,64x64] [--parts 1,2,4,8,16]
    [--face-model builtin] [--repeats 7] [--encoder]

For each batch x size, `render.render_face`'s image evaluated (no derivative) with the
whole batch in one pass (`render._render_batch`, what every render did before parts) and
with parts of each size in --parts (`render.PART_PIXELS` picks the default, marked *),
alternated call by call in one process; ms an image, medians. --encoder adds, at batch 64,
128 px, the quickstart config's encoder (AlexNet-style, initial weights) on rendered faces,
alone and with the render of its codes, and prints what rendering adds to the encoder's
time (issue 13 asks at most half).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mofa import facemodel, networks, render  # noqa: E402
from mofa.code import DEFAULT_FOV_DEGREES, FaceCode  # noqa: E402
from mofa.data import synthetic  # noqa: E402
from mofa.render import render as render_lib  # noqa: E402


def _whole(model, camera):
    def image(code):
        vertices, albedo = render_lib.face_geometry(model, code)
        return render_lib._render_batch(vertices, albedo, model.triangles, camera,
                                        code.illumination, None, model.landmark_indices,
                                        model.face_mask, 2.0).image
    return image


def _in_parts(model, camera, part):
    def image(code):
        saved = render_lib.PART_PIXELS, render_lib.MAX_PART
        render_lib.PART_PIXELS, render_lib.MAX_PART = part * camera.height * camera.width, part
        try:
            return render.render_face(model, code, camera).image
        finally:
            render_lib.PART_PIXELS, render_lib.MAX_PART = saved
    return image


def _alternate(functions: dict, args: dict, repeats: int, batch: int) -> dict:
    compiled = {name: jax.jit(f).lower(*args[name]).compile() for name, f in functions.items()}
    for name, f in compiled.items():
        jax.block_until_ready(f(*args[name]))
    times = {name: [] for name in compiled}
    for _ in range(repeats):
        for name, f in compiled.items():
            start = time.perf_counter()
            jax.block_until_ready(f(*args[name]))
            times[name].append(time.perf_counter() - start)
    return {name: 1e3 * sorted(t)[len(t) // 2] / batch for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--settings", default="64x128,16x224,64x64")
    parser.add_argument("--parts", default="1,2,4,8,16")
    parser.add_argument("--face-model", default="builtin")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--encoder", action="store_true")
    args = parser.parse_args()
    model = facemodel.load(args.face_model)
    print(f"jax {jax.__version__}, {os.cpu_count()} cores, {args.face_model} "
          f"({model.num_triangles} triangles); ms an image, * the default part")
    print("| batch x px | whole batch | " + " | ".join(
        f"parts of {p}" for p in args.parts.split(",")) + " | default / whole |")
    print("|---|---|" + "---|" * len(args.parts.split(",")) + "---|")
    for setting in args.settings.split(","):
        batch, size = (int(x) for x in setting.split("x"))
        camera = render.Camera.from_fov(DEFAULT_FOV_DEGREES, size, size)
        code = FaceCode.from_batch(next(synthetic.synthetic_batches(
            model, size, batch, jax.random.key(0))))
        functions = {"whole": _whole(model, camera)}
        parts = [int(p) for p in args.parts.split(",") if int(p) < batch]
        functions.update({f"part {p}": _in_parts(model, camera, p) for p in parts})
        ms = _alternate(functions, {name: (code,) for name in functions}, args.repeats, batch)
        default = render_lib.part_size(size, size)
        cells = [f"{ms[f'part {p}']:.2f}" + ("*" if p == default else "") for p in parts]
        cells += ["–"] * (len(args.parts.split(",")) - len(parts))
        best = ms.get(f"part {default}", ms["whole"])
        print(f"| {batch} x {size} | {ms['whole']:.2f} | " + " | ".join(cells)
              + f" | {best / ms['whole']:.2f} |")
    if args.encoder:
        from experiments.configs import default as default_config
        from mofa import train

        config = default_config.get_config()
        config.image_size = 128
        state = train.create_state(config, model, jax.random.key(0))
        variables = {"params": state.params, "batch_stats": state.batch_stats}
        camera = render.Camera.from_fov(DEFAULT_FOV_DEGREES, 128, 128)
        images = next(synthetic.synthetic_batches(model, 128, 64, jax.random.key(1)))["image"]

        def encode(v, x):
            return state.apply_fn(v, x, train=False)

        def with_render(draw):
            return lambda v, x: draw(networks.decode_head(encode(v, x), model))

        functions = {"encoder": encode, "encoder + whole": with_render(_whole(model, camera)),
                     "encoder + parts": with_render(
                         _in_parts(model, camera, render_lib.part_size(128, 128)))}
        ms = _alternate(functions, {name: (variables, images) for name in functions},
                        args.repeats, 64)
        for name in ("whole", "parts"):
            total = ms[f"encoder + {name}"]
            print(f"batch 64, 128 px, render as {name}: encoder {ms['encoder']:.2f} ms, "
                  f"encoder + render {total:.2f} ms an image ({1e3 / total:.0f} Hz); rendering "
                  f"adds {(total - ms['encoder']) / ms['encoder']:.2f}x the encoder's time")


if __name__ == "__main__":
    main()
