"""`mofa reconstruct`: every face of photos, folders and videos -> meshes, textures, codes.

Inputs: image files, folders (their images, recursively, as `mofa.data.folder`
finds them) and video files named on the command line (VIDEO_EXTENSIONS; a
GIF named directly is a video, one inside a folder an image).

Images: every face the detector finds is cropped (the training crop framing),
encoded (with a checkpoint) and/or fitted (`mofa.fitting`) in batches, and
written to `<out>/<stem>_face<k>/`. Videos are streamed (`ReconstructionJob.video`): every
face is tracked across frames, each track gets one identity and reflectance,
pose, expression and light are fitted per frame with them fixed and smoothed
over time (Gaussian, `smooth` frames) per track. Unusable inputs are skipped
and listed with their reason in `summary.json`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, Optional

import jax
import numpy as np
from PIL import Image

from mofa import export, facemodel, images, render, visualize
from mofa.code import FIELDS, FaceCode
from mofa.inference import Reconstructor, crop_face, render_face
from mofa.data import common as data_common
from mofa.data import faces as faces_lib
from mofa.data import folder as folder_lib

log = logging.getLogger(__name__)

# Threads writing a flush's files (split by photo) while the next flush fits. Two wrote
# the shipped encoder's default run 1.02-1.07x as fast as one (README, "The encoder's
# refinement: coarse steps only"): zlib, file writes and numpy release the GIL.
WRITER_THREADS = 2
# Photos decoded and detected ahead of the fit (a thread-safe detector only), by this
# many threads, each up to LOAD_AHEAD photos ahead (bounded memory).
LOAD_THREADS = 2
LOAD_AHEAD = 2

# The photo overlay draws a face rendered at 128, 256 or 512 px, the smallest that is at
# least the face's size in the photo over this factor (a face of up to 160 px reuses
# its 128 px crop's render).
OVERLAY_UPSAMPLING = 1.25

VIDEO_EXTENSIONS = frozenset({".mp4", ".avi", ".mov", ".webm", ".gif", ".mkv", ".m4v"})
# What a photo's face folder gets besides code.json/.npz and blendshapes.json (always
# written): "mesh" = mesh.obj (+ .mtl, texture.png), mesh.ply, mesh.glb; "images" =
# overlay.jpg, overlay_crop.png, depth.png (and FineNet's detail outputs).
OUTPUTS = ("mesh", "images")


def collect_inputs(paths: list[str]) -> tuple[list[tuple], list[tuple], list[tuple]]:
    """(images, videos, skipped): images and videos as (path, output stem), skipped as
    (path, reason); folders are walked recursively.

    Output stems never collide: an image found in a folder keeps its path relative to
    that folder (`a/IMG_1.jpg` -> `a/IMG_1`), a file named directly its base name, and
    a stem already taken gets `-2`, `-3`, ... (two folders holding the same layout).
    """
    images_, videos, skipped, taken = [], [], [], set()

    def unique(stem: str) -> str:
        candidate, k = stem, 1
        while candidate.lower() in taken:  # case-insensitive file systems too
            k += 1
            candidate = f"{stem}-{k}"
        taken.add(candidate.lower())
        return candidate

    for path in paths:
        if os.path.isdir(path):
            found = folder_lib.find_images(path)
            if not found:
                skipped.append((path, "folder holds no image files"))
            images_.extend((f, unique(os.path.splitext(os.path.relpath(f, path))[0]))
                           for f in found)
        elif not os.path.exists(path):
            skipped.append((path, "file not found"))
        else:
            stem = unique(os.path.splitext(os.path.basename(path))[0])
            is_video = os.path.splitext(path)[1].lower() in VIDEO_EXTENSIONS
            (videos if is_video else images_).append((path, stem))
    return images_, videos, skipped


def _code_arrays(code: FaceCode) -> dict:
    return {f: np.asarray(getattr(code, f)) for f in FIELDS}


class ReconstructionJob:
    """One `mofa reconstruct` invocation: outputs, skipped inputs and counts for the summary."""

    def __init__(self, rec: Reconstructor, out_dir: str, detector, max_faces: int = 8,
                 texture_size: int = 256, smooth: float = 1.0, progress: bool = False,
                 window: int = 32, outputs: tuple = OUTPUTS):
        unknown = set(outputs) - set(OUTPUTS)
        if unknown:
            raise ValueError(f"unknown outputs {sorted(unknown)}: expected some of "
                             f"{', '.join(OUTPUTS)} (codes are always written)")
        self.outputs = frozenset(outputs)
        self.rec, self.out_dir, self.detector = rec, out_dir, detector
        self.max_faces, self.texture_size, self.smooth = max_faces, texture_size, smooth
        self.progress = progress
        # Video faces fitted together / frames drawn together: bounds the memory.
        self.window = window
        self.skipped: list[tuple] = []
        self.faces: list[dict] = []
        self.videos: list[dict] = []
        self._uv_layout = None
        self._glb_layouts: dict[bool, export.GlbLayout] = {}  # by textured
        # Writing a batch's files (numpy, zlib, text; mostly outside XLA) overlaps the
        # next batch's fit, which leaves part of the cores idle.
        self._writer = ThreadPoolExecutor(max_workers=WRITER_THREADS,
                                          thread_name_prefix="mofa-writer")
        self._writing: list[Future] = []
        os.makedirs(out_dir, exist_ok=True)

    def skip(self, source: str, reason: str) -> None:
        self.skipped.append((source, reason))
        log.warning("skipping %s: %s", source, reason)

    def _detect(self, image: np.ndarray, max_faces: int) -> tuple[list, Optional[str]]:
        try:
            found = self.detector(image)
        except Exception as err:  # a detector crash on one input must not stop the run
            return [], f"face detection failed: {type(err).__name__}: {err}"
        return faces_lib.usable_faces(found, max_faces)

    # -- images ---------------------------------------------------------------

    def image(self, path: str, stem: str) -> tuple[list[dict], Optional[str]]:
        """(detected, cropped faces of one photo pending reconstruction, to be written to
        `<out>/<stem>_face<k>/`; None) or ([], why the photo is skipped). Changes nothing
        in the job: with a thread-safe detector `run` loads photos ahead in threads."""
        try:
            photo = faces_lib.load_rgb8(path)
        except faces_lib.ImageError as err:
            return [], str(err)
        found, reason = self._detect(photo, self.max_faces)
        if reason:
            return [], reason
        return [dict(crop_face(photo, lm, self.rec.image_size), source=path, photo=photo,
                     name=f"{stem}_face{k}") for k, lm in enumerate(found)], None

    def finish_images(self, pending: list[dict]) -> None:
        """Reconstructs a list of pending faces (one batch or more) and hands them to the
        writer threads, which write them while the next faces are fitted."""
        if not pending:
            return
        code = self.rec.codes(pending)
        # Only the meshes' texture and the images need the rendered face.
        outs = self.rec.render(code, pending) if self.outputs else {}
        errors = self.rec.fit_errors(code, pending, outs.pop("photometric", None))
        outs["geometry"], outs["linear_albedo"], outs["neutral"] = self.rec.meshes(code, pending)
        outs["landmarks"] = errors["landmarks"]
        codes = _code_arrays(code)
        if "images" in self.outputs:
            self._dispatch_overlay_renders(pending, codes)
        self.wait_for_writes()  # one flush in the writers at a time: bounded memory
        # The flush split by photo (a photo's overlay shows all its faces) among the threads.
        sources = list(dict.fromkeys(face["source"] for face in pending))
        for part in range(WRITER_THREADS):
            mine = set(sources[part::WRITER_THREADS])
            rows = [i for i, face in enumerate(pending) if face["source"] in mine]
            if rows:
                take = lambda d: {k: v[rows] for k, v in d.items()}  # noqa: E731
                self._writing.append(self._writer.submit(
                    self._write_images, [pending[i] for i in rows], take(codes), take(outs),
                    take(errors)))
        self.faces += [{"source": face["source"],
                        "output": os.path.join(self.out_dir, face["name"])} for face in pending]

    def close(self) -> None:
        """Stops the writer threads (after what they were given)."""
        self._writer.shutdown(wait=True)

    def wait_for_writes(self) -> None:
        """Blocks until the writers have written every face handed to them (and raises
        the first error, if writing failed)."""
        writing, self._writing = self._writing, []
        for future in writing:
            future.result()

    def _write_images(self, pending: list[dict], codes: dict, outs: dict, errors: dict) -> None:
        photos: dict[str, list] = {}
        for i, face in enumerate(pending):
            folder = os.path.join(self.out_dir, face["name"])
            # The fitted face's 68 landmarks as the fit matched them to the detector's
            # (calibrated vertices, jaw on the silhouette), not the model's own vertices.
            out = {k: v[i] for k, v in outs.items()}
            face_code = {k: v[i] for k, v in codes.items()}
            residual = errors.get("photometric")
            self._write_face(folder, face, face_code, out, float(errors["landmark_px"][i]),
                             None if residual is None else float(residual[i]))
            photos.setdefault(face["source"], []).append((face, face_code, out, folder))
        if "images" in self.outputs:
            for faces in photos.values():  # every face of a photo on the photo itself
                self._write_photo_overlay(faces)

    def _overlay_size(self, face: dict) -> int:
        """The size a face is rendered at for its photo's `overlay.jpg`: few sizes, few
        compilations; shading is smooth, so it upsamples well: 512 px for any larger face,
        and each size for faces up to OVERLAY_UPSAMPLING x it."""
        side = self.rec.image_size / face["scale"]  # the crop's size in photo pixels
        size = 128
        while size * OVERLAY_UPSAMPLING < min(side, 512):
            size *= 2
        return size

    def _dispatch_overlay_renders(self, pending: list[dict], codes: dict) -> None:
        """Starts the overlay renders of faces larger than the crop's own render (JAX
        runs them before the next batches' fits; started from a writer thread, each would
        wait behind a running fit). The writer reads them as face["overlay_render"]."""
        for i, face in enumerate(pending):
            size = self._overlay_size(face)
            if size == self.rec.image_size:  # the crop's own render is this render
                continue
            k = size / self.rec.image_size
            camera = render.Camera(focal=self.rec.camera.focal * k,
                                   principal_point=self.rec.camera.principal_point * k,
                                   height=size, width=size)
            # Host arrays in: no eager JAX op (one compile each per process).
            single = FaceCode(**{f: v[i:i + 1] for f, v in codes.items()})
            shaded = render_face(self.rec.model, single, camera)
            face["overlay_render"] = (shaded.normals, shaded.mask)

    def _write_photo_overlay(self, faces: list[tuple]) -> None:
        """`overlay.jpg` of each face folder: the original photo at its own resolution
        with the shaded geometry of all its faces rendered at (up to 512 px of) the
        faces' own size, detected (green) and fitted (red) landmarks; a JPEG like the
        photos themselves (a PNG of a 7-megapixel photo took 0.5 s to encode)."""
        photo = faces[0][0]["photo"]
        canvas = photo.copy()
        points = []
        for face, _, out, _ in faces:
            if "overlay_render" in face:
                normals, mask = (np.asarray(x)[0] for x in face.pop("overlay_render"))
            else:  # the crop's own render
                normals, mask = out["normals"], out["mask"]
            _paste_shading(canvas, visualize.geometry_shading(normals), mask, face)
            to_image = lambda p: p / face["scale"] + face["origin"]  # noqa: E731
            points += [(face["detected"], visualize.DETECTED),
                       (to_image(out["landmarks"]), visualize.FITTED)]
        # Encoded once, the same file in every face's folder.
        jpeg = images.jpeg_bytes(visualize.draw_landmarks(canvas, points))
        for *_, folder in faces:
            with open(os.path.join(folder, "overlay.jpg"), "wb") as f:
                f.write(jpeg)

    def _write_face(self, folder: str, face: dict, code: dict, out: dict,
                    landmark_px: float, photometric: Optional[float] = None) -> None:
        model = self.rec.model
        os.makedirs(folder, exist_ok=True)
        to_image = lambda p: p / face["scale"] + face["origin"]  # noqa: E731
        geometry, linear_albedo = out["geometry"], out["linear_albedo"]
        albedo = images.linear_to_srgb(linear_albedo)
        texture_name, texture = None, None
        if "mesh" in self.outputs and model.uv_coords is not None:
            if self._uv_layout is None:
                self._uv_layout = export.uv_layout(model.uv_coords, model.uv_triangles,
                                                   self.texture_size, model.triangles,
                                                   model.num_vertices)
            texture = export.bake_texture(
                face["photo"], to_image(out["screen_vertices"][:, :2]),
                out["vertex_visibility"], model.uv_coords, model.uv_triangles, model.triangles,
                self.texture_size, albedo, layout=self._uv_layout)
            texture_name = "texture.png"
            # Encoded once: the file and the glTF's embedded image.
            texture = images.png_bytes(texture)
            with open(os.path.join(folder, texture_name), "wb") as f:
                f.write(texture)
        if "mesh" in self.outputs:
            export.write_obj(os.path.join(folder, "mesh.obj"), geometry, model.triangles,
                             model.uv_coords, model.uv_triangles, albedo, texture_name)
            export.write_ply(os.path.join(folder, "mesh.ply"), geometry, model.triangles,
                             albedo)
            textured = texture is not None
            if textured not in self._glb_layouts:
                self._glb_layouts[textured] = export.glb_layout(model, textured)
            export.write_glb(os.path.join(folder, "mesh.glb"), model, code["identity"],
                             code["expression"], linear_albedo, texture,
                             layout=self._glb_layouts[textured], neutral=out["neutral"])
        near = far = None
        if "images" in self.outputs:
            near, far = export.write_depth_png(os.path.join(folder, "depth.png"),
                                               out["depth"], out["mask"])
            if self.rec.detail is not None:
                from mofa import detail
                detail.write_detail(folder, self.rec.detail(face["image"], out["depth"],
                                                            out["mask"]),
                                    out["mask"], self.rec.camera)
            overlay = images.to_uint8(visualize.shaded_overlay(face["image"], out["mask"],
                                                               out["normals"]))
            overlay = visualize.draw_landmarks(
                overlay, [(face["landmarks"], visualize.DETECTED),
                          (out["landmarks"], visualize.FITTED)])
            images.save_png(os.path.join(folder, "overlay_crop.png"), overlay)
        extra = {
            "source": face["source"], "face_model": model.name,
            "image_size": self.rec.image_size, "focal_px": float(self.rec.camera.focal),
            "crop": {"origin_xy": face["origin"], "scale": face["scale"],
                     "note": "crop pixel = (image pixel - origin) * scale"},
            "landmark_error_px_crop": landmark_px, "depth_png_range_mm": [near, far],
            # Mean colour distance (linear RGB) over the skin the fit scored; None unfitted.
            "photometric_error": photometric,
            "pixel_convention": "original image pixels, x right, y down",
        }
        if model.expression_names:  # the expression code by name (blendshapes: ARKit weights)
            extra["expressions"] = export.expression_weights(model, code["expression"])
        export.write_blendshapes(os.path.join(folder, "blendshapes.json"), model,
                                 code["expression"], code["rotation"])
        export.write_code(os.path.join(folder, "code"), {
            **code, "landmarks": to_image(out["landmarks"]),
            "landmarks_detected": face["detected"],
            # The mesh's own 68 landmark vertices (model space, mm, like mesh.obj).
            "landmarks_3d": geometry[np.asarray(model.landmark_indices)]}, extra)

    # -- videos ---------------------------------------------------------------

    def video(self, path: str, stem: str) -> int:
        """Reconstructs every tracked face of a video, streaming: memory depends on the
        window and the number of faces, not on the clip's length. Returns the number of
        faces (face x frame) reconstructed.

        Pass 1 detects and tracks the faces (`FaceTracker`) and keeps a few crops of each
        track; each track's identity and reflectance are the mean of their fits. Pass 2
        fits pose, expression and light of every face in windows of `window` frames with
        them fixed; pose and expression are then smoothed per track. Pass 3 draws the
        overlay at the source resolution, written frame by frame.
        """
        from scipy.ndimage import gaussian_filter1d

        try:
            fps, total = _video_meta(path)
            tracker = FaceTracker()
            samples: dict[int, _Samples] = {}
            detections = []  # per frame: [(track id, (68, 2) landmarks)]
            for index, frame in enumerate(self._frames(path, total, "tracking faces")):
                found, _ = self._detect(frame, self.max_faces)
                ids = tracker.update(index, found)
                detections.append(list(zip(ids, found)))
                for track, landmarks in zip(ids, found):
                    samples.setdefault(track, _Samples()).offer(
                        lambda: crop_face(frame, landmarks, self.rec.image_size))
        except VideoError as err:
            self.skip(path, str(err))
            return 0
        num_frames = len(detections)
        if num_frames == 0:
            self.skip(path, "video has no frames")
            return 0
        if not samples:
            self.skip(path, "no face found in any frame")
            return 0
        # One identity and reflectance per track: the mean over its sampled crops.
        shared = {}
        for track, kept in samples.items():
            code = self.rec.codes(kept.crops)
            shared[track] = {f: np.asarray(getattr(code, f)).mean(0)
                             for f in ("identity", "reflectance")}

        faces = [(index, track, landmarks) for index, found in enumerate(detections)
                 for track, landmarks in found]
        codes = []
        window: list = []

        def fit_window():
            crops = [c for _, c in window]
            known = {f: np.stack([shared[t][f] for t, _ in window])
                     for f in ("identity", "reflectance")}
            codes.append(self.rec.codes(crops, known=known, fixed=("identity", "reflectance")))
            window.clear()

        position = 0
        for index, frame in enumerate(self._frames(path, num_frames, "fitting")):
            while position < len(faces) and faces[position][0] == index:
                _, track, landmarks = faces[position]
                window.append((track, crop_face(frame, landmarks, self.rec.image_size)))
                position += 1
            if len(window) >= self.window:
                fit_window()
        if window:
            fit_window()
        code = jax.tree.map(lambda *xs: np.concatenate(xs), *codes)
        frame_of = np.asarray([f[0] for f in faces])
        track_of = np.asarray([f[1] for f in faces])
        if self.smooth > 0:  # per track, over its frames
            fields = {f: np.array(getattr(code, f)) for f in ("rotation", "translation",
                                                              "expression")}
            for track in samples:
                rows = np.flatnonzero(track_of == track)
                if len(rows) > 1:
                    for values in fields.values():
                        values[rows] = gaussian_filter1d(values[rows], self.smooth, axis=0,
                                                         mode="nearest")
            code = code.replace(**fields)

        stem = os.path.join(self.out_dir, stem)
        os.makedirs(os.path.dirname(stem), exist_ok=True)
        landmarks = self._write_overlay_video(path, f"{stem}_overlay.mp4", fps, num_frames,
                                              faces, code)
        export.write_code(f"{stem}_codes", {
            **_code_arrays(code), "frame": frame_of, "track": track_of,
            "landmarks": landmarks,
            "landmarks_detected": np.stack([f[2] for f in faces])},
            {"source": path, "fps": fps, "frames": num_frames,
             "face_model": self.rec.model.name, "smooth_sigma_frames": self.smooth,
             "note": "one row per face and frame: 'frame' its frame, 'track' its face"})
        tracks = []
        for track in sorted(samples):
            rows = np.flatnonzero(track_of == track)
            sub = jax.tree.map(lambda x: np.asarray(x)[rows], code)  # noqa: B023
            entry = {"track": int(track), "faces": int(len(rows)),
                     "first_frame": int(frame_of[rows[0]]), "last_frame": int(frame_of[rows[-1]]),
                     "mesh_glb": f"{stem}_track{track}_mesh.glb"}
            # The track's face rig, its expressions and head rotation animated at the clip's
            # frame rate (frames without the face are interpolated over).
            export.write_glb(entry["mesh_glb"], self.rec.model, sub.identity[0],
                             sub.expression[0],
                             np.asarray(facemodel.albedo(self.rec.model, sub.reflectance[0])),
                             animation={"times": frame_of[rows] / fps,
                                        "expression": sub.expression, "rotation": sub.rotation})
            if self.rec.model.blendshapes:  # ARKit weights per frame, as Live Link Face writes
                entry["live_link_csv"] = f"{stem}_track{track}_livelink.csv"
                export.write_live_link_csv(entry["live_link_csv"],
                                           self.rec.model.expression_names, sub.expression,
                                           sub.rotation, fps, frames=frame_of[rows])
            tracks.append(entry)
        self.videos.append({"source": path, "frames": num_frames, "faces": len(faces),
                            "frames_without_face": int(num_frames - len(set(frame_of))),
                            "overlay": f"{stem}_overlay.mp4", "codes": f"{stem}_codes.npz",
                            "tracks": tracks})
        return len(faces)

    def _frames(self, path: str, total: Optional[int], desc: str):
        """The video's frames (uint8 RGB), decoded one at a time, with a frames/s bar."""
        from tqdm.auto import tqdm

        import imageio.v3 as iio

        try:
            frames = iio.imiter(path)
            bar = tqdm(frames, total=total, desc=f"{os.path.basename(path)}: {desc}",
                       unit="frame", disable=not self.progress, leave=False)
            for frame in bar:
                yield np.ascontiguousarray(np.asarray(frame)[..., :3])
        except Exception as err:  # imageio raises many kinds for bad files
            raise VideoError(f"unreadable video: {type(err).__name__}: {err}") from err

    def _write_overlay_video(self, path: str, out_path: str, fps: float, num_frames: int,
                             faces: list, code: FaceCode) -> np.ndarray:
        """The overlay video at the source resolution (frame by frame); returns the fitted
        landmarks of every face in the original frame's pixels."""
        writer, landmarks = None, []
        position = 0
        pending: list = []  # (frame, [(row, crop)]) of up to `window` frames

        def flush():
            rows = [r for _, found in pending for r, _ in found]
            if rows:
                crops = [c for _, found in pending for _, c in found]
                outs = self.rec.render(jax.tree.map(lambda x: np.asarray(x)[rows], code), crops)
            k = 0
            for frame, found in pending:
                for _, crop in found:
                    overlay = visualize.shaded_overlay(crop["image"], outs["mask"][k],
                                                       outs["normals"][k])
                    frame = _paste(frame, images.to_uint8(overlay), outs["mask"][k], crop)
                    landmarks.append(outs["landmarks"][k] / crop["scale"] + crop["origin"])
                    k += 1
                writer.send(_even(frame))
            pending.clear()

        try:
            for index, frame in enumerate(self._frames(path, num_frames, "overlay")):
                if writer is None:
                    writer = _video_writer(out_path, _even(frame).shape, fps)
                found = []
                while position < len(faces) and faces[position][0] == index:
                    crop = crop_face(frame, faces[position][2], self.rec.image_size)
                    found.append((position, crop))
                    position += 1
                pending.append((frame, found))
                if len(pending) >= self.window:
                    flush()
            flush()
        finally:
            if writer is not None:
                writer.close()
        return np.stack(landmarks)


class VideoError(Exception):
    """A video that cannot be read."""


def _video_meta(path: str) -> tuple[float, Optional[int]]:
    """(frames per second, frame count or None) of a video file."""
    import imageio.v3 as iio

    try:
        meta = iio.immeta(path)
    except Exception as err:  # imageio raises many kinds for bad files
        raise VideoError(f"unreadable video: {type(err).__name__}: {err}") from err
    # ffmpeg reports fps; GIFs a frame duration in ms.
    fps = float(meta.get("fps") or 0) or 1000.0 / float(meta.get("duration") or 40)
    count = meta.get("nframes")
    total = int(count) if isinstance(count, (int, float)) and np.isfinite(count) else None
    return fps, total


def _even(frame: np.ndarray) -> np.ndarray:
    """H.264 in yuv420p needs even sizes: the frame padded by its edge where odd."""
    h, w = frame.shape[:2]
    if h % 2 == 0 and w % 2 == 0:
        return frame
    return np.pad(frame, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")


def _video_writer(path: str, shape: tuple, fps: float):
    """A generator taking uint8 RGB frames one at a time (`send`), H.264 via ffmpeg."""
    import imageio_ffmpeg

    writer = imageio_ffmpeg.write_frames(path, (shape[1], shape[0]), fps=fps, codec="libx264",
                                         macro_block_size=2, pix_fmt_out="yuv420p")
    writer.send(None)  # start ffmpeg
    return writer


@dataclasses.dataclass
class _Samples:
    """At most `2 x keep` crops of one track, spread over its whole length: every
    `stride`-th face, the stride doubling (and every other crop dropped) when full."""

    keep: int = 8
    stride: int = 1
    seen: int = 0
    crops: list = dataclasses.field(default_factory=list)

    def offer(self, make_crop: Callable[[], dict]) -> None:
        if self.seen % self.stride == 0:
            self.crops.append(make_crop())
            if len(self.crops) > 2 * self.keep:
                self.crops, self.stride = self.crops[::2], self.stride * 2
        self.seen += 1


class FaceTracker:
    """Face identities across frames: each detection joins the active track whose last
    landmark centre is nearest (within `max_distance` x the face's size), greedily by
    distance; the others start new tracks. A track not seen for `max_gap` frames ends."""

    def __init__(self, max_distance: float = 0.5, max_gap: int = 10):
        self.max_distance, self.max_gap = max_distance, max_gap
        self._tracks: dict[int, tuple] = {}  # id -> (last frame, centre (2,), size)
        self._next = 0

    def update(self, frame: int, found: list) -> list[int]:
        """Track ids of the detections (68, 2) of `frame`, in their order."""
        active = {t: v for t, v in self._tracks.items() if frame - v[0] <= self.max_gap}
        centres = [np.asarray(f, np.float64).mean(0) for f in found]
        sizes = [faces_lib.landmark_extent(np.asarray(f)) for f in found]
        pairs = sorted((np.linalg.norm(c - v[1]) / max(v[2], 1e-6), d, t)
                       for d, c in enumerate(centres) for t, v in active.items())
        ids: list = [None] * len(found)
        taken = set()
        for distance, d, t in pairs:
            if distance <= self.max_distance and ids[d] is None and t not in taken:
                ids[d] = t
                taken.add(t)
        for d in range(len(found)):
            if ids[d] is None:
                ids[d], self._next = self._next, self._next + 1
            self._tracks[ids[d]] = (frame, centres[d], sizes[d])
        return ids


def _paste(frame: np.ndarray, overlay8: np.ndarray, mask: np.ndarray, crop: dict) -> np.ndarray:
    """The crop-sized overlay resized back onto the frame where the mesh covers it."""
    side = int(round(overlay8.shape[0] / crop["scale"]))
    x0, y0 = (int(v) for v in np.round(crop["origin"]))
    big = np.asarray(Image.fromarray(overlay8).resize((side, side), Image.BILINEAR))
    alpha = np.asarray(Image.fromarray((mask * 255).astype(np.uint8)).resize(
        (side, side), Image.BILINEAR), np.float32)[..., None] / 255.0
    out = frame.copy()
    h, w = frame.shape[:2]
    ys, xs = slice(max(y0, 0), min(y0 + side, h)), slice(max(x0, 0), min(x0 + side, w))
    part = (slice(ys.start - y0, ys.stop - y0), slice(xs.start - x0, xs.stop - x0))
    out[ys, xs] = (alpha[part] * big[part] + (1 - alpha[part]) * frame[ys, xs]).astype(np.uint8)
    return out


def _paste_shading(photo: np.ndarray, shading: np.ndarray, mask: np.ndarray,
                   crop: dict) -> None:
    """Blends grey shading (S, S) into the photo (uint8 sRGB, in place) where `mask`
    covers it, both resized from the crop's square onto the photo's pixels."""
    covered = np.asarray(mask) > 0
    covered_rows, covered_cols = np.nonzero(covered.any(1))[0], np.nonzero(covered.any(0))[0]
    if not len(covered_rows):
        return
    size = mask.shape[0]
    side = max(int(round(crop["image"].shape[0] / crop["scale"])), 1)
    zoom = side / size
    x0, y0 = (int(v) for v in np.round(crop["origin"]))
    h, w = photo.shape[:2]
    # Only the photo pixels of the square that the mask's box reaches (a pixel's margin
    # for the bilinear edge).
    ys = slice(max(y0 + int((covered_rows[0] - 1) * zoom), y0, 0),
               min(y0 + int(np.ceil((covered_rows[-1] + 2) * zoom)), y0 + side, h))
    xs = slice(max(x0 + int((covered_cols[0] - 1) * zoom), x0, 0),
               min(x0 + int(np.ceil((covered_cols[-1] + 2) * zoom)), x0 + side, w))
    if ys.start >= ys.stop or xs.start >= xs.stop:
        return
    # In 8 bits through PIL's C loops, resampling only those pixels: the float32 numpy
    # blend of the whole square took 0.48 s a face of a 12-megapixel photo (README,
    # "Stop 54: overlays of large photos").
    source_box = ((xs.start - x0) / zoom, (ys.start - y0) / zoom,
                  (xs.stop - x0) / zoom, (ys.stop - y0) / zoom)
    to_photo = lambda a: Image.fromarray(  # noqa: E731
        np.clip(np.asarray(a, np.float32) * 255.0 + 0.5, 0, 255).astype(np.uint8)).resize(
        (xs.stop - xs.start, ys.stop - ys.start), Image.BILINEAR, box=source_box)
    shade, alpha = to_photo(shading).convert("RGB"), to_photo(np.clip(mask, 0.0, 1.0))
    region = Image.fromarray(np.ascontiguousarray(photo[ys, xs]))
    # alpha * (0.65 shade + 0.35 photo) + (1 - alpha) * photo
    photo[ys, xs] = np.asarray(Image.composite(Image.blend(region, shade, 0.65), region, alpha))


def run(paths: list[str], out_dir: str, rec: Reconstructor, detector=None, max_faces: int = 8,
        texture_size: int = 256, smooth: float = 1.0, progress: bool = True,
        outputs: tuple = OUTPUTS) -> dict:
    """Reconstructs every input; writes and returns the run summary (see module docstring).
    outputs: which of `OUTPUTS` a photo's faces get besides their codes."""
    from tqdm.auto import tqdm

    detector = detector or faces_lib.make_detector(rec.detector, max_faces=max_faces)
    job = ReconstructionJob(rec, out_dir, detector, max_faces, texture_size, smooth, progress,
                            outputs=tuple(outputs))
    image_inputs, video_inputs, skipped = collect_inputs(paths)
    for source, reason in skipped:
        job.skip(source, reason)
    start = time.perf_counter()
    count = 0
    pending: list[dict] = []
    bar = tqdm(total=len(image_inputs) + len(video_inputs), desc="reconstructing",
               unit="input", disable=not progress)
    # Photos are decoded and their faces detected in threads, ahead of the fit (which
    # has the cores while they wait on MediaPipe), where the detector allows it.
    loaders = LOAD_THREADS if getattr(detector, "thread_safe", False) else 0
    loaded = data_common.ordered_map(lambda item: (item[0], job.image(*item)), image_inputs,
                                     loaders, prefetch=LOAD_AHEAD)

    def advance():
        bar.update()
        bar.set_postfix(faces_per_s=f"{count / max(time.perf_counter() - start, 1e-9):.2f}")

    try:
        for path, (faces, reason) in loaded:
            if reason:
                job.skip(path, reason)
            pending += faces
            # As many whole batches as the reconstructor fits at once.
            if len(pending) >= rec.batch_size * rec.parallel_batches:
                job.finish_images(pending)
                count, pending = count + len(pending), []
            advance()
        job.finish_images(pending)
        count, pending = count + len(pending), []
        for path, stem in video_inputs:
            count += job.video(path, stem)
            advance()
        job.wait_for_writes()
    finally:
        loaded.close()  # a failed run stops its loader threads too
        job.close()
    bar.close()
    seconds = time.perf_counter() - start
    summary = {
        "inputs": list(paths), "images": [path for path, _ in image_inputs],
        "videos": job.videos,
        "faces": job.faces, "num_faces": count,
        "skipped": [{"source": s, "reason": r} for s, r in job.skipped],
        "seconds": seconds, "faces_per_second": count / max(seconds, 1e-9),
        "face_model": rec.model.name, "image_size": rec.image_size,
        "fit_steps": rec.fit_steps, "checkpoint": rec.encoder is not None,
        "outputs": ["code", *sorted(job.outputs)],
    }
    with open(os.path.join(out_dir, "summary.json"), "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=1)
    return summary
