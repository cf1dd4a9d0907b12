"""Expression transfer: one face's expressions and head motion on another identity.

`mofa retarget SOURCE --to TARGET --out DIR` reads two `mofa reconstruct` codes
(SOURCE: a video's `<stem>_codes.npz`, one tracked face of it, or a face
folder's `code.npz`; TARGET: a face's `code.npz` or a video's) of the same face model and writes the target's identity and
skin driven by the source's expressions and head rotation:

- `retarget.glb`: the target's face rig with the performance as a glTF animation
  (at the source clip's frame rate);
- `frames/frame_<k>.obj`: one mesh per source frame (model space, mm, like
  `mesh.obj`, with the target's skin as vertex colours);
- `retarget_codes.npz/.json`: the combined codes, one row per source frame.

The codes are semantic, so the transfer is a swap of fields: identity and
reflectance from the target, expression, rotation and translation from the source.
"""

from __future__ import annotations

import json
import os

import jax.numpy as jnp
import numpy as np

from mofa import export, facemodel, images

TARGET_FIELDS = ("identity", "reflectance")
SOURCE_FIELDS = ("expression", "rotation", "translation")


def load_codes(path: str) -> tuple[dict, dict]:
    """A `mofa reconstruct` code file -> (arrays with a leading frame axis, metadata).

    path: `code.npz` / `<stem>_codes.npz`, the same without `.npz`, or a face folder
    holding `code.npz`. The metadata is its `.json` without the arrays.
    """
    if os.path.isdir(path):
        path = os.path.join(path, "code.npz")
    if not path.endswith(".npz"):
        path += ".npz"
    if not os.path.exists(path):
        raise FileNotFoundError(f"no codes at {path} (expected a `mofa reconstruct` code.npz "
                                "or <stem>_codes.npz)")
    with np.load(path) as data:
        arrays = {k: np.asarray(data[k]) for k in data.files}
    missing = [f for f in TARGET_FIELDS + SOURCE_FIELDS if f not in arrays]
    if missing:
        raise ValueError(f"{path}: not a face code file, missing {', '.join(missing)}")
    if arrays["identity"].ndim == 1:  # one face: a single frame
        arrays = {k: v[None] for k, v in arrays.items()}
    meta_path = path[:-len(".npz")] + ".json"
    meta = {}
    if os.path.exists(meta_path):
        with open(meta_path, encoding="utf-8") as f:
            meta = {k: v for k, v in json.load(f).items() if k not in arrays}
    meta["path"] = path
    return arrays, meta


def transfer(source: dict, target: dict, target_index: int = 0) -> dict:
    """The source's per-frame expression and pose on the target's identity and skin
    (row `target_index` of the target)."""
    frames = len(source["expression"])
    for field in TARGET_FIELDS + SOURCE_FIELDS:
        if source[field].shape[1:] != target[field].shape[1:]:
            raise ValueError(f"source and target codes differ in {field}: "
                             f"{source[field].shape[1:]} vs {target[field].shape[1:]} "
                             "(codes of different face models?)")
    combined = {f: np.repeat(target[f][target_index][None], frames, 0) for f in TARGET_FIELDS}
    combined.update({f: source[f] for f in SOURCE_FIELDS})
    return combined


def select_track(arrays: dict, track: int | None, path: str) -> dict:
    """The rows of one face of a video's codes (its "track" column; default the face
    seen in most frames); codes without tracks are returned as they are."""
    if "track" not in arrays:
        return arrays
    tracks, counts = np.unique(arrays["track"], return_counts=True)
    if track is None:
        track = int(tracks[np.argmax(counts)])
    if track not in tracks:
        raise ValueError(f"{path} has no track {track} (tracks: {tracks.tolist()})")
    rows = arrays["track"] == track
    return {k: v[rows] for k, v in arrays.items()}


def run(source_path: str, target_path: str, out_dir: str, face_model: str | None = None,
        obj: bool = True, source_track: int | None = None,
        target_track: int | None = None) -> dict:
    """Retargets SOURCE's performance onto TARGET (see module docstring); returns the
    written paths. For videos' codes, `source_track`/`target_track` pick the face (default:
    the one seen in most frames)."""
    source, source_meta = load_codes(source_path)
    target, target_meta = load_codes(target_path)
    source = select_track(source, source_track, source_meta["path"])
    target = select_track(target, target_track, target_meta["path"])
    names = {source_meta.get("face_model"), target_meta.get("face_model")} - {None}
    if len(names) > 1:
        raise ValueError(f"{source_meta['path']} is a {source_meta['face_model']} code, "
                         f"{target_meta['path']} a {target_meta['face_model']} code: both must "
                         "come from one face model")
    spec = face_model or (names.pop() if names else "builtin")
    model = facemodel.load(spec)
    if source["expression"].shape[-1] != model.num_expression:
        raise ValueError(f"{source_meta['path']}: {source['expression'].shape[-1]} expression "
                         f"components, face model {spec!r} has {model.num_expression} "
                         "(pass --face-model)")
    code = transfer(source, target)
    frames = len(code["expression"])
    fps = float(source_meta.get("fps") or 30.0)
    frame_index = source.get("frame", np.arange(frames))
    os.makedirs(out_dir, exist_ok=True)
    outputs = {"glb": os.path.join(out_dir, "retarget.glb"),
               "codes": os.path.join(out_dir, "retarget_codes.npz")}
    linear_albedo = np.asarray(facemodel.albedo(model, jnp.asarray(code["reflectance"][0])))
    export.write_glb(outputs["glb"], model, code["identity"][0], code["expression"][0],
                     linear_albedo, animation={"times": np.asarray(frame_index) / fps,
                                               "expression": code["expression"],
                                               "rotation": code["rotation"]})
    if obj:
        colors = images.linear_to_srgb(linear_albedo)
        geometry = np.asarray(facemodel.shape(model, jnp.asarray(code["identity"]),
                                              jnp.asarray(code["expression"])))
        outputs["frames"] = os.path.join(out_dir, "frames")
        for k, vertices in enumerate(geometry):
            export.write_obj(os.path.join(outputs["frames"], f"frame_{k:05d}.obj"), vertices,
                             model.triangles, vertex_colors=colors)
    export.write_code(outputs["codes"][:-len(".npz")], {**code, "frame": frame_index},
                      {"source": source_meta["path"], "target": target_meta["path"],
                       "face_model": model.name, "fps": fps})
    return outputs
