"""Writing reconstructions: OBJ (+ MTL + texture), PLY, baked UV textures, depth PNGs, codes."""

from __future__ import annotations

import functools
import json
import os
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from mofa import facemodel, images, render


def _folder_of(path: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)


def _format_rows(row_format: str, rows: np.ndarray) -> str:
    """Rows of a 2D array as text lines, one printf format for all of them (one C-level
    formatting call: a per-row f-string made writing a mesh the slowest output)."""
    if not len(rows):
        return ""
    return "\n".join([row_format] * len(rows)) % tuple(rows.ravel().tolist())


@functools.cache
def _digit_table() -> np.ndarray:
    """(10^5,) little-endian uint64 whose bytes 1-5 are the ASCII digits of "%05d" % i
    (bytes 0, 6 and 7 zero): five digits of a number in one gather."""
    values = np.arange(100000)
    table = np.zeros((100000, 8), np.uint8)
    for k in range(5):
        table[:, 5 - k] = ord("0") + values // 10 ** k % 10
    return table.view("<u8").ravel()


def _bytes_mask(first: np.ndarray, count: np.ndarray) -> np.ndarray:
    """uint64 masks keeping `count` bytes from byte `first` on (little-endian)."""
    ones = (np.left_shift(np.uint64(1), (8 * count).astype(np.uint64)) - np.uint64(1))
    return np.left_shift(ones, (8 * first).astype(np.uint64))


def _format_fixed(prefix: str, rows: np.ndarray, decimals: tuple[int, ...]) -> bytes:
    """Rows of a 2D float array as `prefix` and fixed-point numbers (column k with
    decimals[k] <= 5 digits, as "%.{d}f" prints them), one line per row (no final
    newline), as ASCII bytes: printf formatting was most of the time of writing a mesh's
    OBJ.

    Built as 8-byte words in numpy, elementwise over all numbers: per number one word
    per five integer digits (sign and digits, leading slots zero) and one of the point,
    the decimals and the separator; the zero bytes are then dropped. Digits come from
    round(|x| 10^d) in float64, which can differ from printf's exact decimal rounding in
    the last digit where x 10^d lies within a rounding error of a half; both name the
    same float to within 10^-d."""
    rows = np.asarray(rows, np.float64)
    if rows.ndim != 2 or rows.shape[1] != len(decimals):
        raise ValueError(f"rows have shape {rows.shape}, expected (N, {len(decimals)})")
    if len(prefix) > 7 or not all(0 <= d <= 5 for d in decimals):
        raise ValueError(f"prefix {prefix!r} longer than 7 or decimals {decimals} not in 0-5")
    if not len(rows):
        return b""
    if not np.all(np.isfinite(rows)):
        raise ValueError("cannot write non-finite coordinates")
    n, columns = rows.shape
    decimals = np.asarray(decimals, np.int64)
    scaled = np.rint(np.abs(rows) * 10.0 ** decimals)
    if scaled.max() >= 2.0 ** 62:  # the digits are computed in int64
        raise ValueError(f"cannot write {np.abs(rows).max():g} with {decimals.max()} decimals "
                         "as fixed-point text")
    scaled = scaled.astype(np.int64)
    whole, fraction = np.divmod(scaled, 10 ** decimals)
    groups = -(-max(len(str(int(whole.max()))), 1) // 5)
    count = sum((whole >= 10 ** k for k in range(1, 5 * groups)), np.ones_like(whole))
    negative = np.signbit(rows)  # printf keeps "-0.00000"
    table = _digit_table()
    words = np.empty((n, 1 + columns * (groups + 1)), "<u8")
    words[:, 0] = np.frombuffer((prefix + " ").encode("ascii").ljust(8, b"\0"), "<u8")[0]
    per_number = words[:, 1:].reshape(n, columns, groups + 1)
    rest = whole  # the integer digits not yet placed
    for j in range(groups):  # j = 0: the last five integer digits
        rest, low = np.divmod(rest, 100000) if j + 1 < groups else (None, rest)
        shown = np.clip(count - 5 * j, 0, 5)  # digits 6 - shown .. 5 of the word
        word = table.take(low) & _bytes_mask(6 - shown, shown)
        sign = negative & ((count - 1) // 5 == j)  # the sign goes before the first digit
        per_number[..., groups - 1 - j] = word | np.where(
            sign, np.left_shift(np.uint64(ord("-")), (8 * (5 - shown)).astype(np.uint64)), 0)
    point = np.where(decimals > 0, ord("."), 0).astype("<u8")
    separator = np.full(columns, ord(" "), "<u8")
    separator[-1] = ord("\n")
    per_number[..., groups] = (
        (table.take(fraction * 10 ** (5 - decimals)) & _bytes_mask(np.ones_like(decimals),
                                                                  decimals))
        | point | np.left_shift(separator, np.uint64(48)))
    return words.tobytes().translate(None, b"\0")[:-1]


def write_obj(path: str, vertices, triangles, uv_coords=None, uv_triangles=None,
              vertex_colors=None, texture_png: str | None = None) -> None:
    """Wavefront OBJ with `v x y z r g b` colours (sRGB in [0, 1]), `vt`, `f v/vt`.

    With `texture_png` (a file name relative to the OBJ's folder) an MTL file of
    the same stem is written next to it and referenced.
    """
    vertices = np.asarray(vertices, np.float64)
    stem = os.path.splitext(os.path.basename(path))[0]
    parts = [f"mtllib {stem}.mtl\nusemtl face".encode("ascii")] if texture_png else []
    if vertex_colors is None:
        parts.append(_format_fixed("v", vertices, (5, 5, 5)))
    else:
        colors = np.clip(np.asarray(vertex_colors, np.float64), 0.0, 1.0)
        parts.append(_format_fixed("v", np.concatenate([vertices, colors], -1),
                                   (5, 5, 5, 4, 4, 4)))
    as_bytes = lambda x, dtype: None if x is None else np.asarray(x, dtype).tobytes()  # noqa: E731
    parts.append(_obj_topology(as_bytes(triangles, np.int64), as_bytes(uv_coords, np.float64),
                               as_bytes(uv_triangles, np.int64)))
    _folder_of(path)
    with open(path, "wb") as f:  # the parts as they are: no joined copy of the text
        for part in parts:
            if part:
                f.write(part)
                f.write(b"\n")
    if texture_png:
        with open(os.path.join(os.path.dirname(os.path.abspath(path)), f"{stem}.mtl"), "w",
                  encoding="ascii") as f:
            f.write(f"newmtl face\nKa 1 1 1\nKd 1 1 1\nKs 0 0 0\nd 1\nillum 1\n"
                    f"map_Kd {texture_png}\n")


@functools.lru_cache(maxsize=4)  # a few models' topologies, a few MB of text each
def _obj_topology(triangles: bytes, uv_coords: bytes | None,
                  uv_triangles: bytes | None) -> bytes:
    """The `vt` and `f` lines of an OBJ, from its arrays' bytes (int64, float64): the same
    for every mesh of a model, and two thirds of formatting one."""
    triangles = np.frombuffer(triangles, np.int64).reshape(-1, 3) + 1  # OBJ counts from 1
    if uv_coords is None:
        return _format_rows("f %d %d %d", triangles).encode("ascii")
    uv_tri = np.frombuffer(uv_triangles, np.int64).reshape(-1, 3) + 1
    return "\n".join(line for line in (
        _format_rows("vt %.6f %.6f", np.frombuffer(uv_coords, np.float64).reshape(-1, 2)),
        _format_rows("f %d/%d %d/%d %d/%d", np.stack([triangles, uv_tri], -1).reshape(-1, 6)),
    ) if line).encode("ascii")


def write_ply(path: str, vertices, triangles, vertex_colors=None) -> None:
    """Binary little-endian PLY; colours (sRGB in [0, 1]) stored as uchar red/green/blue."""
    vertices = np.asarray(vertices, np.float32)
    triangles = np.asarray(triangles, np.int32)
    header = ["ply", "format binary_little_endian 1.0", f"element vertex {len(vertices)}",
              "property float x", "property float y", "property float z"]
    fields = [("xyz", "<f4", (3,))]
    if vertex_colors is not None:
        header += ["property uchar red", "property uchar green", "property uchar blue"]
        fields.append(("rgb", "u1", (3,)))
    header += [f"element face {len(triangles)}", "property list uchar int vertex_indices",
               "end_header"]
    vertex_rows = np.empty(len(vertices), dtype=fields)
    vertex_rows["xyz"] = vertices
    if vertex_colors is not None:
        vertex_rows["rgb"] = _to_uint8(vertex_colors)
    face_rows = np.empty(len(triangles), dtype=[("n", "u1"), ("ids", "<i4", (3,))])
    face_rows["n"] = 3
    face_rows["ids"] = triangles
    _folder_of(path)
    with open(path, "wb") as f:
        f.write(("\n".join(header) + "\n").encode("ascii"))
        f.write(vertex_rows.tobytes())
        f.write(face_rows.tobytes())


def _to_uint8(colors) -> np.ndarray:
    return (np.clip(np.asarray(colors, np.float32), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


class UvLayout(NamedTuple):
    """A model's texture layout at one size, the same for every face: the triangle id of
    each texel (size, size), -1 outside the layout, and each texel as a combination of
    the mesh's vertices, a sparse (size^2, V) matrix (zero rows outside)."""
    triangle_id: np.ndarray
    texels: scipy.sparse.csr_matrix


def uv_layout(uv_coords, uv_triangles, size: int, triangles, num_vertices: int) -> UvLayout:
    """Rasterizes the UV layout (v up: texel row 0 is v = 1) with mofa's rasterizer, for
    the mesh `triangles` (T, 3) of `num_vertices` whose corners `uv_triangles` map."""
    import scipy.sparse  # here: a process that writes no texture never loads it

    uv = np.asarray(uv_coords, np.float32)
    layout = np.stack([uv[:, 0] * size, (1.0 - uv[:, 1]) * size, np.ones(len(uv))], -1)
    layout = jnp.asarray(layout[None], jnp.float32)
    uv_tri = jnp.asarray(uv_triangles, jnp.int32)
    tri_id = render.rasterize(layout, uv_tri, height=size, width=size, slots_per_pixel=4.0,
                              cull_backfaces=False).triangle_id
    bary = np.asarray(render.barycentrics(layout, uv_tri, tri_id))[0]
    tri_id = np.asarray(tri_id)[0]
    tri = tri_id.reshape(-1)
    corners = np.asarray(triangles)[np.maximum(tri, 0)]  # (S*S, 3) mesh vertex ids
    weights = np.where((tri >= 0)[:, None], bary.reshape(-1, 3), 0.0).astype(np.float32)
    texels = scipy.sparse.csr_matrix(
        (weights.ravel(), corners.ravel(), np.arange(0, 3 * len(tri) + 1, 3)),
        shape=(len(tri), num_vertices))
    return UvLayout(tri_id, texels)


def bake_texture(image, screen_vertices, visibility, uv_coords, uv_triangles, triangles,
                 size: int = 512, fallback_colors=None, layout: UvLayout | None = None
                 ) -> np.ndarray:
    """Samples `image` (H, W, 3), floats or uint8 (read as /255: a photo as it was
    loaded, never converted whole), into the UV layout: (size, size, 3) floats in its
    colour space.

    screen_vertices: (V, 2+) pixel positions of the mesh vertices in `image`;
    visibility: (V,) bool. A texel takes the photo where its triangle's corners
    are (mostly) visible, else `fallback_colors` (V, 3) (e.g. the model albedo
    in the same colour space), else grey. `layout`: the model's `uv_layout` at `size`,
    computed once for many faces.
    """
    if layout is None:
        layout = uv_layout(uv_coords, uv_triangles, size, triangles, len(screen_vertices))
    if layout.triangle_id.shape != (size, size):
        raise ValueError(f"UV layout is {layout.triangle_id.shape[0]} px, expected {size}")
    # A per-vertex table (visibility, screen position, fallback colour) at every texel
    # in one sparse product, and the photo sampled only where the face is seen
    # (0.6 ms a 256 px texture against 2.3 for gathers at the three corners).
    fallback = (np.full((len(screen_vertices), 3), 0.5, np.float32) if fallback_colors is None
                else np.asarray(fallback_colors, np.float32))
    table = np.concatenate([np.asarray(visibility, np.float32)[:, None],
                            np.asarray(screen_vertices, np.float32)[:, :2], fallback], -1)
    texels = layout.texels @ table
    inside = layout.triangle_id.reshape(-1) >= 0
    texture = np.where(inside[:, None], texels[:, 3:], np.float32(0.5))
    seen = inside & (texels[:, 0] > 0.5)
    # On the host: photos come in every size, and a jitted sampler compiles per size.
    image = np.asarray(image)
    photo = images.bilinear_sample(image, texels[seen, 1:3]).astype(np.float32)
    if image.dtype == np.uint8:
        photo /= 255.0
    texture[seen] = photo
    return texture.reshape(size, size, 3)


def write_depth_png(path: str, depth_mm, mask) -> tuple[float, float]:
    """16-bit PNG of a depth map: near = 65535, far = 1, background 0. Returns (near, far) mm."""
    depth = np.asarray(depth_mm, np.float64)
    covered = np.asarray(mask) > 0.5
    if not covered.any():
        near = far = 0.0
        scaled = np.zeros(depth.shape, np.uint16)
    else:
        near, far = float(depth[covered].min()), float(depth[covered].max())
        span = max(far - near, 1e-6)
        scaled = np.where(covered, 1.0 + 65534.0 * (far - depth) / span, 0.0)
        scaled = np.round(scaled).astype(np.uint16)
    images.save_png(path, scaled)
    return near, far


def _jsonable(value):
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "tolist"):
        return value.tolist()
    return value


def _write_json(path: str, document: dict) -> None:
    """A JSON object, one member per line (a dict's members each on its own line, one
    level deep) and each value in compact form. json's `indent` formats in Python, one
    number per line: 3-6 ms per file of a face; the compact values use its C encoder."""
    def members(obj: dict, indent: str) -> str:
        lines = []
        for key, value in obj.items():
            if isinstance(value, dict) and indent == " ":
                text = "{}" if not value else members(value, "  ")
            else:
                text = json.dumps(value)
            lines.append(f"{indent}{json.dumps(str(key))}: {text}")
        return "{\n" + ",\n".join(lines) + "\n" + indent[:-1] + "}"

    with open(path, "w", encoding="utf-8") as f:
        f.write(members(document, " ") + "\n")


def write_code(stem: str, arrays: dict, extra: dict | None = None) -> None:
    """`stem`.npz with the arrays and `stem`.json with the arrays as lists plus `extra`."""
    arrays = {k: np.asarray(v) for k, v in arrays.items()}
    _folder_of(stem)
    np.savez(f"{stem}.npz", **arrays)
    _write_json(f"{stem}.json", _jsonable({**(extra or {}), **arrays}))


def expression_weights(model, expression) -> dict:
    """{name: weight} of one expression code: for blendshape models (ICT's ARKit set) the
    weights in [0, 1]; for PCA models their standardized components (named where the model
    names them, else `expression_<k>`)."""
    expression = np.asarray(expression, np.float64).reshape(-1)
    names = model.expression_names or tuple(f"expression_{k}" for k in range(len(expression)))
    return {name: float(v) for name, v in zip(names, expression)}


def head_pose_degrees(rotation) -> dict:
    """{pitch, yaw, roll} in degrees of a FaceCode rotation (radians, pitch about x, yaw
    about y, roll about z; R = Rz(roll) Ry(yaw) Rx(pitch), camera looking down -z)."""
    pitch, yaw, roll = np.degrees(np.asarray(rotation, np.float64).reshape(3))
    return {"pitch": float(pitch), "yaw": float(yaw), "roll": float(roll)}


def write_blendshapes(path: str, model, expression, rotation) -> None:
    """`blendshapes.json`: the expression as named weights plus the head pose, the file
    animation tools and scripts read (no arrays, no model internals)."""
    bounds = model.expression_bounds if model.blendshapes else None
    document = {
        "face_model": model.name,
        "kind": "blendshapes" if model.blendshapes else "pca_components",
        "range": list(bounds) if bounds else None,
        "weights": expression_weights(model, expression),
        "head_pose_degrees": head_pose_degrees(rotation),
        "pose_convention": "R = Rz(roll) Ry(yaw) Rx(pitch); x right, y up, camera looks down -z",
    }
    if model.blendshapes:  # the 52 ARKit weights as Apple names them
        arkit, missing = arkit_weights(model.expression_names, expression)
        document["arkit"] = dict(zip(ARKIT_BLENDSHAPES, arkit.round(6).tolist()))
        document["arkit_not_modelled"] = missing
    _folder_of(path)
    _write_json(path, document)


# The 52 ARKit blendshapes in the column order of Live Link Face's CSV export
# (Epic's iOS app; Unreal's Live Link and the Blender add-ons that read it).
LIVE_LINK_BLENDSHAPES = (
    "EyeBlinkLeft", "EyeLookDownLeft", "EyeLookInLeft", "EyeLookOutLeft", "EyeLookUpLeft",
    "EyeSquintLeft", "EyeWideLeft", "EyeBlinkRight", "EyeLookDownRight", "EyeLookInRight",
    "EyeLookOutRight", "EyeLookUpRight", "EyeSquintRight", "EyeWideRight", "JawForward",
    "JawRight", "JawLeft", "JawOpen", "MouthClose", "MouthFunnel", "MouthPucker", "MouthRight",
    "MouthLeft", "MouthSmileLeft", "MouthSmileRight", "MouthFrownLeft", "MouthFrownRight",
    "MouthDimpleLeft", "MouthDimpleRight", "MouthStretchLeft", "MouthStretchRight",
    "MouthRollLower", "MouthRollUpper", "MouthShrugLower", "MouthShrugUpper", "MouthPressLeft",
    "MouthPressRight", "MouthLowerDownLeft", "MouthLowerDownRight", "MouthUpperUpLeft",
    "MouthUpperUpRight", "BrowDownLeft", "BrowDownRight", "BrowInnerUp", "BrowOuterUpLeft",
    "BrowOuterUpRight", "CheekPuff", "CheekSquintLeft", "CheekSquintRight", "NoseSneerLeft",
    "NoseSneerRight", "TongueOut")
LIVE_LINK_POSE = ("HeadYaw", "HeadPitch", "HeadRoll", "LeftEyeYaw", "LeftEyePitch",
                  "LeftEyeRoll", "RightEyeYaw", "RightEyePitch", "RightEyeRoll")
ARKIT_BLENDSHAPES = tuple(n[0].lower() + n[1:] for n in LIVE_LINK_BLENDSHAPES)


def arkit_weights(names, expression) -> tuple[np.ndarray, list]:
    """(..., 52) ARKit weights (`ARKIT_BLENDSHAPES` order) from a blendshape model's named
    weights (..., K), and the ARKit names the model lacks (left at 0).

    ICT-FaceKit names sided shapes `eyeBlink_L` (ARKit `eyeBlinkLeft`) and splits
    ARKit's `browInnerUp` and `cheekPuff` into _L/_R halves: those are averaged.
    """
    expression = np.asarray(expression, np.float64)
    index = {name: k for k, name in enumerate(names)}
    out = np.zeros(expression.shape[:-1] + (len(ARKIT_BLENDSHAPES),))
    missing = []
    for j, arkit in enumerate(ARKIT_BLENDSHAPES):
        own = arkit
        for side, suffix in (("Left", "_L"), ("Right", "_R")):
            if arkit.endswith(side):
                own = arkit[:-len(side)] + suffix
        if arkit in index or own in index:
            out[..., j] = expression[..., index.get(arkit, index.get(own))]
        elif f"{arkit}_L" in index and f"{arkit}_R" in index:
            out[..., j] = 0.5 * (expression[..., index[f"{arkit}_L"]]
                                 + expression[..., index[f"{arkit}_R"]])
        else:
            missing.append(arkit)
    return out, missing


def live_link_timecode(frame: int, fps: float) -> str:
    """`HH:MM:SS:FF.mmm` of a frame index at `fps` (FF: the frame within its second)."""
    rate = max(int(round(fps)), 1)
    seconds, frames = divmod(int(frame), rate)
    minutes, seconds = divmod(seconds, 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours:02d}:{minutes:02d}:{seconds:02d}:{frames:02d}.000"


def write_live_link_csv(path: str, names, expression, rotation, fps: float,
                        frames=None) -> list:
    """A Live Link Face CSV take: per frame its timecode, the count 61, the 52 ARKit
    weights, and the head's yaw, pitch and roll in radians (eye rotations are not
    modelled: 0). Returns the ARKit names the model lacks (written as 0)."""
    import csv

    weights, missing = arkit_weights(names, expression)
    rotation = np.asarray(rotation, np.float64)
    frames = np.arange(len(weights)) if frames is None else np.asarray(frames)
    _folder_of(path)
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["Timecode", "BlendShapeCount", *LIVE_LINK_BLENDSHAPES, *LIVE_LINK_POSE])
        count = len(LIVE_LINK_BLENDSHAPES) + len(LIVE_LINK_POSE)
        for frame, w, (pitch, yaw, roll) in zip(frames, weights, rotation):
            pose = [yaw, pitch, roll] + [0.0] * 6
            writer.writerow([live_link_timecode(frame, fps), count]
                            + [f"{v:.6f}" for v in list(w) + pose])
    return missing


def rotation_quaternions(rotation) -> np.ndarray:
    """FaceCode rotations (..., 3) radians -> unit quaternions (..., 4) in glTF's
    (x, y, z, w) order, of the same R = Rz(roll) Ry(yaw) Rx(pitch)."""
    from scipy.spatial.transform import Rotation

    rotation = np.asarray(rotation, np.float64)
    matrices = np.asarray(render.euler_to_matrix(jnp.asarray(rotation, jnp.float32)), np.float64)
    flat = Rotation.from_matrix(matrices.reshape(-1, 3, 3)).as_quat()
    return flat.reshape(*rotation.shape[:-1], 4).astype(np.float32)


class GlbLayout(NamedTuple):
    """What every `write_glb` rig of one face model shares: its topology (vertices split
    at UV seams where textured), and the morph targets (K, V', 3), metres, with their
    per-axis bounds (K, 3)."""
    triangles: np.ndarray  # (T, 3) uint32
    vertices: np.ndarray | None  # (V',) the model vertex of each glTF vertex; None: the same
    uv: np.ndarray | None  # (V', 2) glTF texture coordinates (v down), or None
    targets: np.ndarray
    target_lows: np.ndarray
    target_highs: np.ndarray


def glb_layout(model, textured: bool) -> GlbLayout:
    """The `GlbLayout` of `model`'s rigs (`textured`: with a UV texture, where the model
    has UV coordinates)."""
    mm = 0.001  # glTF units are metres
    targets = (np.asarray(model.expression_basis, np.float32)
               * np.asarray(model.expression_std, np.float32)[:, None, None] * mm)
    triangles = np.asarray(model.triangles, np.int64)
    vertices = uv = None
    if textured and model.uv_coords is not None:
        # glTF has one index per corner: split vertices where a UV seam gives one
        # position several texture coordinates.
        # (vertex, uv) pairs as one integer each: a 1-D unique sorts them in the same
        # order as a row-wise one, several times faster.
        uv_corner = np.asarray(model.uv_triangles, np.int64).ravel()
        keys, inverse = np.unique(triangles.ravel() * (uv_corner.max() + 1) + uv_corner,
                                  return_inverse=True)
        vertices, uv_ids = np.divmod(keys, uv_corner.max() + 1)
        triangles = inverse.reshape(-1, 3)
        targets = targets[:, vertices]
        uv = np.asarray(model.uv_coords, np.float32)[uv_ids] * [1.0, -1.0] + [0.0, 1.0]
    # Every target's bounds in two reductions along contiguous rows: per-target
    # reductions over (V, 3) arrays took a third of writing the file.
    by_axis = np.ascontiguousarray(targets.transpose(0, 2, 1))  # (K, 3, V)
    return GlbLayout(triangles.astype(np.uint32), vertices,
                     None if uv is None else uv.astype(np.float32),
                     np.ascontiguousarray(targets), by_axis.min(-1), by_axis.max(-1))


@jax.jit
def _neutral_shape(model, identity: jax.Array) -> jax.Array:
    return facemodel.shape(model, identity, jnp.zeros(model.num_expression))


def write_glb(path: str, model, identity, expression, vertex_colors=None,
              texture=None, animation: dict | None = None,
              layout: GlbLayout | None = None, neutral=None) -> None:
    """A glTF 2.0 face rig (binary .glb; `read_glb` reads it with pygltflib): the reconstructed
    identity at neutral expression as the base mesh (metres, +y up, facing +z), one
    morph target per expression component named after it (`mesh.extras.targetNames`,
    the convention Blender, three.js and Unreal read), the fitted expression as the
    mesh's default weights, vertex colours (linear RGB) and, with `texture` (sRGB,
    H x W x 3, uint8 or floats in [0, 1], the model's UV layout; or that image's PNG
    file as bytes, embedded as it is), a textured material.
    Morph weight w adds w x (the component's standard deviation x basis): weights are
    the code.

    animation: a performance (a video's codes) as one glTF animation, linear between
    keyframes: {"times": (N,) seconds, "expression": (N, K) weights, "rotation": (N, 3)
    FaceCode head rotations, radians}; the head node turns about the model's origin.
    layout: the model's `glb_layout` (with UVs exactly when textured), computed once for
    many rigs.
    neutral: the identity's mesh at zero expression (V, 3) mm, where the caller has it
    (`Reconstructor.meshes`); otherwise evaluated here, in JAX: from a thread beside a
    running fit that call waits behind the fit's queued programs (tens of ms a face).
    """
    mm = 0.001  # glTF units are metres
    identity = np.asarray(identity, np.float32)
    expression = np.asarray(expression, np.float32)
    textured = texture is not None and model.uv_coords is not None
    layout = glb_layout(model, textured) if layout is None else layout
    if (layout.uv is not None) != textured:
        raise ValueError(f"a glb layout {'with' if layout.uv is not None else 'without'} "
                         f"UV coordinates for a rig {'with' if textured else 'without'} texture")
    if neutral is None:
        neutral = _neutral_shape(model, jnp.asarray(identity))
    base = np.asarray(neutral, np.float32) * mm
    if base.shape != (model.num_vertices, 3):
        raise ValueError(f"neutral: expected ({model.num_vertices}, 3) vertices of "
                         f"{model.name}, got {base.shape}")
    colors = None if vertex_colors is None else np.asarray(vertex_colors, np.float32)
    if layout.vertices is not None:
        base = base[layout.vertices]
        colors = None if colors is None else colors[layout.vertices]
    uv = layout.uv

    chunks, views, accessors = [], [], []
    size = 0  # of the binary chunk so far

    def view(data, target=None) -> int:
        """A buffer view of `data` (bytes or a byte memoryview, written as it is: the
        morph targets are megabytes), at a 4-byte aligned offset of the binary chunk."""
        nonlocal size
        pad = -size % 4
        chunks.extend((b"\0" * pad, data))
        views.append({"buffer": 0, "byteOffset": size + pad, "byteLength": len(data),
                      **({} if target is None else {"target": target})})
        size += pad + len(data)
        return len(views) - 1

    def add(array, target=None, component=_GL_FLOAT, kind="VEC3", bounds=None) -> int:
        """An accessor of `array`; bounds: its (min, max) per component, where glTF
        requires them (positions, animation times)."""
        data = memoryview(np.ascontiguousarray(array)).cast("B")
        accessor = {"bufferView": view(data, target),
                    "componentType": component, "count": len(array), "type": kind}
        if bounds is not None:
            accessor["min"], accessor["max"] = (np.atleast_1d(b).tolist() for b in bounds)
        accessors.append(accessor)
        return len(accessors) - 1

    attributes = {"POSITION": add(base, _GL_ARRAY_BUFFER, bounds=(base.min(0), base.max(0)))}
    if colors is not None:
        attributes["COLOR_0"] = add(np.clip(colors, 0.0, 1.0).astype(np.float32),
                                    _GL_ARRAY_BUFFER)
    if uv is not None:
        attributes["TEXCOORD_0"] = add(uv, _GL_ARRAY_BUFFER, kind="VEC2")
    indices = add(layout.triangles.ravel(), _GL_ELEMENT_ARRAY_BUFFER,
                  component=_GL_UNSIGNED_INT, kind="SCALAR")
    morphs = [{"POSITION": add(t, _GL_ARRAY_BUFFER, bounds=(lo, hi))}
              for t, lo, hi in zip(layout.targets, layout.target_lows, layout.target_highs)]
    material = {"name": "face", "doubleSided": False,
                "pbrMetallicRoughness": {"metallicFactor": 0.0, "roughnessFactor": 0.8}}
    document = {"asset": {"generator": "mofa", "version": "2.0"}, "scene": 0,
                "scenes": [{"nodes": [0]}]}
    if uv is not None:
        if not isinstance(texture, bytes):  # sRGB: uint8, or floats in [0, 1] (`bake_texture`)
            texture = images.png_bytes(texture)
        document["images"] = [{"bufferView": view(texture), "mimeType": "image/png"}]
        document["samplers"] = [{"magFilter": _GL_LINEAR, "minFilter": _GL_LINEAR}]
        document["textures"] = [{"source": 0, "sampler": 0}]
        material["pbrMetallicRoughness"]["baseColorTexture"] = {"index": 0}
    names = list(expression_weights(model, expression))
    mesh = {"name": "face", "primitives": [{"attributes": attributes, "indices": indices,
                                            "material": 0, "targets": morphs}],
            "weights": [float(w) for w in expression], "extras": {"targetNames": names}}
    node = {"name": "face", "mesh": 0}
    if animation is not None:
        times = np.asarray(animation["times"], np.float32).reshape(-1)
        weights = np.asarray(animation["expression"], np.float32)
        quaternions = rotation_quaternions(animation["rotation"])
        if weights.shape != (len(times), len(names)) or quaternions.shape != (len(times), 4):
            raise ValueError(f"animation: {len(times)} times need expression "
                             f"({len(times)}, {len(names)}) and rotation ({len(times)}, 3), "
                             f"got {weights.shape} and {quaternions.shape[:-1] + (3,)}")
        if len(times) > 1 and np.any(np.diff(times) <= 0):
            raise ValueError("animation times must increase")
        node["rotation"] = quaternions[0].tolist()
        keys = add(times, kind="SCALAR", bounds=(times.min(0), times.max(0)))
        samplers = [{"input": keys, "output": add(values, kind=kind), "interpolation": "LINEAR"}
                    for values, kind in ((weights.ravel(), "SCALAR"), (quaternions, "VEC4"))]
        document["animations"] = [{"name": "performance", "samplers": samplers, "channels": [
            {"sampler": k, "target": {"node": 0, "path": path}}
            for k, path in enumerate(("weights", "rotation"))]}]
    document.update(nodes=[node], meshes=[mesh], materials=[material], accessors=accessors,
                    bufferViews=views, buffers=[{"byteLength": size}])
    _folder_of(path)
    _write_glb_container(path, document, chunks)


# glTF's enums (OpenGL's): component types, buffer targets, the linear texture filter.
_GL_FLOAT, _GL_UNSIGNED_INT = 5126, 5125
_GL_ARRAY_BUFFER, _GL_ELEMENT_ARRAY_BUFFER = 34962, 34963
_GL_LINEAR = 9729


def _write_glb_container(path: str, document: dict, chunks: list) -> None:
    """A binary glTF file (glTF 2.0 spec, "GLB File Format Specification"): a 12-byte
    header, then the JSON chunk (padded with spaces) and the binary chunk (with zeros),
    each 4-byte aligned."""
    import struct

    text = json.dumps(document, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 4)
    binary = sum(len(c) for c in chunks)
    tail = -binary % 4
    total = 12 + 8 + len(text) + 8 + binary + tail
    with open(path, "wb") as f:
        f.write(struct.pack("<4sII", b"glTF", 2, total))
        f.write(struct.pack("<I4s", len(text), b"JSON") + text)
        f.write(struct.pack("<I4s", binary + tail, b"BIN\0"))
        for chunk in chunks:
            f.write(chunk)
        f.write(b"\0" * tail)


def read_glb(path: str) -> dict:
    """A `write_glb` face rig read back with pygltflib: "positions" (V, 3) metres,
    "targets" (K, V, 3), "weights" (K,), "names", "triangles" (T, 3), "colors" (V, 3)
    or None."""
    import pygltflib as gl

    gltf = gl.GLTF2().load(path)
    blob = gltf.binary_blob()

    def read(index, columns):
        accessor = gltf.accessors[index]
        view = gltf.bufferViews[accessor.bufferView]
        dtype = np.uint32 if accessor.componentType == gl.UNSIGNED_INT else np.float32
        data = np.frombuffer(blob, dtype, accessor.count * columns, view.byteOffset)
        return data.reshape(accessor.count, columns) if columns > 1 else data

    mesh = gltf.meshes[0]
    primitive = mesh.primitives[0]
    colors = primitive.attributes.COLOR_0
    animation = None
    if gltf.animations:
        samplers = {c.target.path: gltf.animations[0].samplers[c.sampler]
                    for c in gltf.animations[0].channels}
        times = read(samplers["weights"].input, 1)
        animation = {"times": times,
                     "expression": read(samplers["weights"].output, 1).reshape(len(times), -1),
                     "rotation_quaternion": read(samplers["rotation"].output, 4)}
    return {"animation": animation,
            "positions": read(primitive.attributes.POSITION, 3),
            "targets": np.stack([read(t["POSITION"], 3) for t in primitive.targets]),
            "weights": np.asarray(mesh.weights, np.float32),
            "names": list((mesh.extras or {}).get("targetNames", [])),
            "triangles": read(primitive.indices, 1).reshape(-1, 3).astype(np.int64),
            "colors": None if colors is None else read(colors, 3),
            "has_texture": bool(gltf.images) and primitive.attributes.TEXCOORD_0 is not None}
