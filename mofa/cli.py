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
    sheet = images.grid(images.linear_to_srgb(pictures), columns=args.columns)
    images.save_png(args.out, sheet)
    print(f"rendered {args.n} faces of '{model.name}' ({model.num_vertices} vertices, "
          f"{model.num_triangles} triangles) at {args.size}px in "
          f"{time.perf_counter() - start:.2f}s -> {args.out}")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    import json
    import os

    from mofa import evaluation, train

    if args.mode == "synthetic":
        results = train.evaluate_checkpoint(args.checkpoint, num_faces=args.num_faces,
                                            face_model=args.face_model,
                                            yaw_split_degrees=args.yaw_split,
                                            refine_steps=args.refine_steps,
                                            fit_steps=args.fit_steps)
        out = args.out or (os.path.join(args.checkpoint, "eval_synthetic.json")
                           if os.path.isdir(args.checkpoint) else "eval_synthetic.json")
    else:
        from mofa import scan_eval

        for folder in (args.predictions, args.scans if args.mode == "scans" else args.annotations):
            if not os.path.isdir(folder):
                raise FileNotFoundError(f"no such folder: {folder}")
        if args.mode == "scans":
            results = scan_eval.evaluate_scans(args.predictions, args.scans, args.crop_radius,
                                               refine=not args.no_refine,
                                               face_model=args.face_model)
        else:
            results = scan_eval.evaluate_landmarks(args.predictions, args.annotations)
        out = args.out or os.path.join(args.predictions, f"{args.mode[:-1]}_eval.json")
    evaluation.write_json(out, results)
    summary = {k: v for k, v in results.items()
               if not isinstance(v, dict) or k == "detector"}  # not per-item
    print(json.dumps(summary, indent=2, sort_keys=True))
    print(f"-> {out}")
    return 0


def _reconstruct(args: argparse.Namespace) -> int:
    from mofa import inference, reconstruct

    rec = inference.load_reconstructor(
        args.checkpoint, args.face_model, args.image_size, args.fit_steps, args.batch_size,
        warn=lambda message: print(f"mofa reconstruct: {message}", file=sys.stderr),
        detector=args.detector)
    if args.detail:
        from mofa import detail

        rec.detail = detail.load_refiner(args.detail, rec.camera)
    # Codes are always written; `reconstruct.run` refuses unknown names.
    outputs = tuple(x.strip() for x in args.outputs.split(",") if x.strip() not in ("", "code"))
    summary = reconstruct.run(args.inputs, args.out, rec, max_faces=args.max_faces,
                              texture_size=args.texture_size, smooth=args.smooth,
                              progress=not args.quiet, outputs=outputs)
    for item in summary["skipped"]:
        print(f"mofa reconstruct: skipped {item['source']}: {item['reason']}", file=sys.stderr)
    print(f"reconstructed {summary['num_faces']} faces in {summary['seconds']:.1f}s "
          f"({summary['faces_per_second']:.2f} faces/s), {len(summary['skipped'])} inputs "
          f"skipped -> {args.out}")
    return 1 if summary["skipped"] else 0


def _export_encoder(args: argparse.Namespace) -> int:
    from mofa import train

    info = train.export_encoder(args.checkpoint, args.out, dtype=args.dtype)
    print(f"encoder of {args.checkpoint} (step {info['step']}, {info['num_parameters']:,} "
          f"parameters, {info['dtype']}) -> {args.out} ({info['bytes'] / 2**20:.1f} MiB)")
    return 0


def _retarget(args: argparse.Namespace) -> int:
    import json

    from mofa import retarget

    outputs = retarget.run(args.source, args.to, args.out, face_model=args.face_model,
                           obj=not args.no_obj, source_track=args.track,
                           target_track=args.target_track)
    print(json.dumps(outputs, indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    from mofa.data import faces as faces_lib  # numpy and PIL only: --help stays quick

    parser = argparse.ArgumentParser(prog="mofa", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    sample = commands.add_parser(
        "sample", help="render random faces of a face model into one image grid")
    sample.add_argument("--face-model", default="builtin",
                        help="builtin | ict | ict:PATH | bfm2009:PATH | bfm2017:PATH | flame:PATH")
    sample.add_argument("--n", type=int, default=16, help="number of faces")
    sample.add_argument("--size", type=int, default=224, help="image size in pixels")
    sample.add_argument("--fov", type=float, default=12.6, help="horizontal field of view, degrees")
    sample.add_argument("--columns", type=int, default=None, help="grid columns")
    sample.add_argument("--seed", type=int, default=0)
    sample.add_argument("--out", default="samples.png", help="output PNG path")
    sample.set_defaults(run=_sample)
    evaluate = commands.add_parser(
        "evaluate", help="reconstruction errors: synthetic test faces, 3D scans or 2D landmarks")
    modes = evaluate.add_subparsers(dest="mode", required=True)
    synthetic = modes.add_parser(
        "synthetic", help="a checkpoint on synthetic test faces: vertex error (mm), landmark "
        "NME, photometric, pose and light errors")
    synthetic.add_argument("--checkpoint", required=True,
                           help="training workdir or encoder file (`mofa export-encoder`)")
    synthetic.add_argument("--face-model", default=None,
                           help="evaluate on this model's faces (default: the trained model)")
    synthetic.add_argument("--num-faces", type=int, default=None,
                           help="test faces (default: the config's eval_batches batches)")
    synthetic.add_argument("--refine-steps", type=int, default=None,
                           help="landmark-fit steps refining the encoder's codes to its own "
                           "heatmap landmarks (train.refine_code; needs the landmark head; "
                           "default: the checkpoint's config.encoder.refine_steps)")
    synthetic.add_argument("--fit-steps", type=int, default=None,
                           help="photometric fit steps after the encoder (train.fit_code; 0 "
                           "scores the encoder alone; default: the checkpoint's "
                           "config.encoder.fit_steps)")
    synthetic.add_argument("--yaw-split", type=float, default=None,
                           help="also report every metric for faces whose true |yaw| (degrees) "
                           "is at most / above this (e.g. 35, the prior's range)")
    scans = modes.add_parser(
        "scans", help="NoW-style scan-to-mesh distance (mm) of predicted meshes to 3D scans")
    scans.add_argument("--predictions", required=True,
                       help="`mofa reconstruct` output: <stem>_face0/mesh.obj + code.json")
    scans.add_argument("--scans", required=True,
                       help="<stem>.obj|.ply scans (mm) with <stem>.txt|.npy|.pp 3D landmarks "
                       "(7 NoW points or 68)")
    scans.add_argument("--crop-radius", type=float, default=100.0,
                       help="mm around the scan's nose tip (0: no crop)")
    scans.add_argument("--no-refine", action="store_true",
                       help="skip the rigid ICP after the landmark alignment")
    scans.add_argument("--face-model", default="builtin",
                       help="model whose landmark vertices locate the 68 landmarks on meshes "
                       "whose code.json has no 'landmarks_3d'")
    landmarks = modes.add_parser(
        "landmarks", help="2D landmark NME of reconstructions against .pts annotations")
    landmarks.add_argument("--predictions", required=True,
                           help="`mofa reconstruct` output: <stem>_face<k>/code.json")
    landmarks.add_argument("--annotations", required=True,
                           help="<stem>.pts files (68 iBUG points or 5 points, 1-based as "
                           "300-W writes them) or menpo's <stem>.ljson")
    for mode in (synthetic, scans, landmarks):
        mode.add_argument("--out", default=None, help="output JSON path")
    evaluate.set_defaults(run=_evaluate)

    recon = commands.add_parser(
        "reconstruct", help="3D faces (mesh, texture, codes) from photos, folders and videos",
        description="Reconstructs every face in images, folders (recursive) and videos "
        "(.mp4 .avi .mov .webm .gif .mkv). Per face: <stem>_face<k>/ with mesh.obj (+ .mtl, "
        "texture.png), mesh.ply, code.json/.npz, overlay.jpg, depth.png; per video: "
        "<stem>_overlay.mp4 and <stem>_codes.npz/.json; summary.json for the run. "
        "Unusable inputs are skipped and listed with their reason. Exit status: 0 if every "
        "input was reconstructed, 1 if any was skipped (the others are still written).")
    recon.add_argument("inputs", nargs="+", metavar="INPUT", help="image, folder or video")
    recon.add_argument("--out", required=True, help="output folder")
    recon.add_argument("--checkpoint", default=None,
                       help="training workdir or encoder file (`mofa export-encoder`) whose "
                       "encoder gives the first estimate; 'none': fit from the mean face "
                       "(default: the encoder shipped for the builtin model, none for "
                       "other models)")
    recon.add_argument("--fit-steps", type=int, default=None,
                       help="analysis-by-synthesis steps after the encoder or from the mean "
                       "face (default with an encoder: its config's encoder.fit_steps; from "
                       "the mean face: mofa.fitting.DEFAULT_FIT_STEPS, 500; 0: the encoder's "
                       "code, or the mean face posed from the landmarks)")
    recon.add_argument("--face-model", default=None,
                       help="face model spec (default: the checkpoint's, else builtin)")
    recon.add_argument("--image-size", type=int, default=None,
                       help="face crop size in pixels (default: a workdir's or file's own "
                       "size, else 128; an encoder sees the crop resized to its size)")
    recon.add_argument("--detector", default="mediapipe", choices=faces_lib.DETECTORS,
                       help="2D landmarks: MediaPipe's face mesh mapped to 68 points, or "
                       "dlib's 68-point predictor on MediaPipe's faces (pip install "
                       "'mofa[dlib]'; its model's training data excludes commercial use)")
    recon.add_argument("--batch-size", type=int, default=8, help="faces per batch")
    recon.add_argument("--max-faces", type=int, default=8, help="faces per image at most")
    recon.add_argument("--texture-size", type=int, default=256, help="UV texture size in pixels")
    recon.add_argument("--outputs", default="code,mesh,images",
                       help="what each photo's face gets: code (code.json/.npz, "
                       "blendshapes.json; always), mesh (mesh.obj + texture, mesh.ply, "
                       "mesh.glb), images (overlay.jpg, overlay_crop.png, depth.png); "
                       "videos always get all of theirs")
    recon.add_argument("--smooth", type=float, default=1.0,
                       help="video: Gaussian sigma in frames for pose/expression (0: off)")
    recon.add_argument("--detail", default=None, metavar="WORKDIR",
                       help="FineNet workdir (`mofa.detail.train_detail`, same image size): "
                       "also write detail_depth.png, detail_normals.png, detail_mesh.obj")
    recon.add_argument("--quiet", action="store_true", help="no progress bar")
    recon.set_defaults(run=_reconstruct)

    export = commands.add_parser(
        "export-encoder", help="pack a training workdir's encoder into one file",
        description="Writes the latest checkpoint's encoder (config, parameters, batch "
        "statistics) as one msgpack file that --checkpoint of `mofa reconstruct` and `mofa "
        "evaluate synthetic` take in place of the workdir.")
    export.add_argument("--checkpoint", required=True, help="training workdir")
    export.add_argument("--out", required=True, help="encoder file to write")
    export.add_argument("--dtype", default="float16", choices=("float16", "float32"),
                        help="stored precision (computation is float32 either way)")
    export.set_defaults(run=_export_encoder)

    retarget = commands.add_parser(
        "retarget", help="one face's expressions and head motion on another identity",
        description="Puts SOURCE's expressions and head rotation (a video's <stem>_codes.npz "
        "or a face's code.npz from `mofa reconstruct`) on TARGET's identity and skin (a "
        "face's code.npz or its folder). Writes retarget.glb (a face rig with the "
        "performance as a glTF animation), frames/frame_<k>.obj and retarget_codes.npz.")
    retarget.add_argument("source", metavar="SOURCE", help="codes whose expressions to take")
    retarget.add_argument("--to", required=True, metavar="TARGET",
                          help="code (or face folder) whose identity to drive")
    retarget.add_argument("--out", required=True, help="output folder")
    retarget.add_argument("--face-model", default=None,
                          help="face model spec (default: the one named in the codes)")
    retarget.add_argument("--track", type=int, default=None,
                          help="a video's face to take (its codes' track id; default: the "
                          "face seen in most frames)")
    retarget.add_argument("--target-track", type=int, default=None,
                          help="the same for a video's codes as TARGET")
    retarget.add_argument("--no-obj", action="store_true", help="skip the OBJ sequence")
    retarget.set_defaults(run=_retarget)
    return parser


def main(argv: list[str] | None = None) -> int:
    import mofa

    args = build_parser().parse_args(argv)
    mofa.enable_compilation_cache()
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
