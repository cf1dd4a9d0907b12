"""The `mofa` command line: `mofa SUBCOMMAND --help` for each."""

from __future__ import annotations

import argparse
import sys
import time


def _sample(args: argparse.Namespace) -> int:
    import jax
    import jax.numpy as jnp

    from mofa import facemodel, images, render
    from mofa.code import random_code

    model = facemodel.load(args.face_model)
    camera = render.Camera.from_fov(args.fov, args.size, args.size)
    code = random_code(model, jax.random.key(args.seed), (args.n,))
    background = jnp.array([0.35, 0.38, 0.42])
    start = time.perf_counter()
    out = jax.jit(lambda c: render.render_face(model, c, camera, background=background))(code)
    pictures = jax.device_get(out.image)
    if int(out.overflow.max()) > 0:
        print(f"warning: rasterizer pool overflowed by {int(out.overflow.max())} candidates",
              file=sys.stderr)
    sheet = images.grid(images.linear_to_srgb(pictures), columns=args.columns)
    images.save_png(args.out, sheet)
    print(f"rendered {args.n} faces of '{model.name}' ({model.num_vertices} vertices, "
          f"{model.num_triangles} triangles) at {args.size}px in "
          f"{time.perf_counter() - start:.2f}s -> {args.out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mofa", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    sample = commands.add_parser(
        "sample", help="render random faces of a face model into one image grid")
    sample.add_argument("--face-model", default="builtin",
                        help="builtin | ict:PATH | bfm2009:PATH | bfm2017:PATH | flame:PATH")
    sample.add_argument("--n", type=int, default=16, help="number of faces")
    sample.add_argument("--size", type=int, default=224, help="image size in pixels")
    sample.add_argument("--fov", type=float, default=12.6, help="horizontal field of view, degrees")
    sample.add_argument("--columns", type=int, default=None, help="grid columns")
    sample.add_argument("--seed", type=int, default=0)
    sample.add_argument("--out", default="samples.png", help="output PNG path")
    sample.set_defaults(run=_sample)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "n", 1) < 1:
        print("mofa: --n must be at least 1", file=sys.stderr)
        return 2
    try:
        return args.run(args)
    except (FileNotFoundError, ValueError) as err:
        print(f"mofa {args.command}: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
