"""Photo decoding, face landmark detection and face crops shared by the photo pipelines.

Landmarks come from MediaPipe's offline face mesh (478 points with its attention
model's refined eyes and lips, models inside the `mediapipe==0.10.14` wheel), reduced
to the 68 Multi-PIE points by `mesh_to_68` (a measured table, `mesh68_table`).
The detector is pluggable: any callable `image_uint8 (H, W, 3) -> list of (68, 2)`
pixel arrays works (tests inject fakes).

Pixel convention everywhere: x right, y down, pixel (row i, col j) covers
[j, j+1) x [i, i+1), so its centre is at (j + 0.5, i + 0.5).
"""

from __future__ import annotations

import logging
import threading
from typing import Callable, Optional, Sequence

import numpy as np
from PIL import Image, ImageOps

log = logging.getLogger(__name__)

# Multi-PIE 68 points as MediaPipe face-mesh vertex indices: where each point sits on
# the mesh by its semantics, our own reading of the canonical mesh checked by drawing it
# on photos. `mesh_to_68` moves each point from its vertex by a measured combination of
# the neighbouring vertices (`mesh68_table`). "Right"/"left" are the subject's: the
# subject's right is the image's left.
MESH_TO_68: tuple = (
    # 0-16 jaw contour, image-left (at the ear) along the chin to image-right.
    127, 234, 93, 132, 58, 136, 150, 176, 152, 400, 379, 365, 288, 361, 323, 454, 356,
    # 17-21 right brow outer -> inner; 22-26 left brow inner -> outer (upper contour).
    70, 63, 105, 66, 107, 336, 296, 334, 293, 300,
    # 27-30 nose bridge, nasion -> tip; 31-35 nostril base, image-left -> right.
    168, 197, 5, 1, 98, 97, 2, 326, 327,
    # 36-41 right eye: outer corner, upper lid x2, inner corner, lower lid x2.
    33, 160, 158, 133, 153, 144,
    # 42-47 left eye: inner corner, upper lid x2, outer corner, lower lid x2.
    362, 385, 387, 263, 373, 380,
    # 48-59 outer lips: corner, upper lip to the other corner, lower lip back.
    61, 40, 37, 0, 267, 270, 291, 321, 314, 17, 84, 91,
    # 60-67 inner lips: corner, upper, corner, lower.
    78, 81, 13, 311, 308, 402, 14, 178,
)
# Mesh vertices of the eyes' outer corners (right, left) and the nose tip (`head_turn`).
MESH_EYE_CORNERS, MESH_NOSE_TIP = (33, 263), 1


def head_turn(mesh: np.ndarray) -> np.ndarray:
    """(..., 468+, 2+) mesh points -> (...,) the nose tip's offset from the midpoint of the
    outer eye corners along the line between them, in units of their distance: 0 on a
    frontal face, +-0.44 to 0.66 at 40-45 deg of yaw (README's ICT renders; the sign is the
    side the nose points to); unchanged by rotating, scaling or moving the image."""
    points = np.asarray(mesh, np.float64)[..., :2]
    right, left = points[..., MESH_EYE_CORNERS[0], :], points[..., MESH_EYE_CORNERS[1], :]
    axis = left - right
    offset = points[..., MESH_NOSE_TIP, :] - (right + left) / 2.0
    return np.sum(offset * axis, -1) / np.maximum(np.sum(axis * axis, -1), 1e-12)


def crop_points(mesh: np.ndarray) -> np.ndarray:
    """(..., 68, 2) the mesh's vertices at the 68 points (`MESH_TO_68`), unmoved: where
    dlib's crop is cut (its crop sizes were measured with these, README "Stop 51"; cut
    around the moved points' wider jaw, dlib's points on four annotated photos scored a
    mean NME of 0.062, against 0.049 this way)."""
    return np.asarray(mesh, np.float64)[..., np.asarray(MESH_TO_68), :2]


def mesh_to_68(mesh: np.ndarray, table=None) -> np.ndarray:
    """(..., 468 or 478, 2+) mesh points -> (..., 68, 2) Multi-PIE landmarks.

    Point k is its vertex `MESH_TO_68[k]` plus a combination of the offsets to its
    neighbouring vertices, whose weights change linearly with `head_turn` (annotators
    put the far jaw on the visible outline): `table` (default `mesh68_table`, measured by
    `mesh68_calibration`). Weights on offsets make the map commute with rotating,
    scaling and moving the image."""
    if table is None:
        from mofa.data import mesh68_table as table
    points = np.asarray(mesh, np.float64)[..., :2]
    anchors = np.asarray(MESH_TO_68)
    neighbours = np.asarray(table.NEIGHBOURS)  # (68, K)
    offsets = points[..., neighbours, :] - points[..., anchors, None, :]  # (..., 68, K, 2)
    weights = (np.asarray(table.WEIGHTS)
               + head_turn(points)[..., None, None] * np.asarray(table.TURN_WEIGHTS))
    moved = points[..., anchors, :] + np.einsum("...lk,...lkc->...lc", weights, offsets)
    return moved.astype(np.float32)


# ---------------------------------------------------------------------------
# Decoding.


class ImageError(Exception):
    """An image that cannot be used; the message is the reason shown to the user."""


MIN_IMAGE_SIZE = 32


def to_rgb8(image: Image.Image) -> np.ndarray:
    """Any PIL image -> (H, W, 3) uint8 sRGB, EXIF orientation applied.

    Grey and palette images become RGB, alpha is composited on mid grey, 16-bit
    and float data are scaled to 8 bits, CMYK/YCbCr/LAB are converted.
    """
    image = ImageOps.exif_transpose(image)
    mode = image.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        # 16-bit greyscale (PIL gives 16-bit RGB PNGs to us already as 8-bit RGB).
        data = np.asarray(image).astype(np.float64)
        top = 65535.0 if (mode != "I" or data.max() > 255) else 255.0
        grey = np.clip(np.round(data * (255.0 / top)), 0, 255).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=-1)
    if mode == "F":
        data = np.asarray(image, np.float64)
        top = 1.0 if data.max() <= 1.0 else 255.0
        grey = np.clip(np.round(data * (255.0 / top)), 0, 255).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=-1)
    if mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    elif mode in ("LA", "La", "PA", "RGBa"):
        image = image.convert("RGBA")
    if image.mode == "RGBA":
        grey = Image.new("RGBA", image.size, (128, 128, 128, 255))
        image = Image.alpha_composite(grey, image)
    if image.mode != "RGB":
        image = image.convert("RGB")
    return np.asarray(image, np.uint8)


def open_rgb8(path: str, scale: float = 1.0, max_short_side: Optional[int] = None
              ) -> tuple[np.ndarray, float]:
    """Decodes a photo file to (H, W, 3) uint8, raising ImageError with a reason.

    scale < 1 (or a short side above max_short_side) lets JPEGs decode at a
    reduced size (libjpeg's DCT scaling: 2-8x faster for big photos) no smaller
    than `scale` x the full size. Returns the image and its actual scale: a
    full-size pixel position p is at p * scale in it.
    """
    try:
        with Image.open(path) as image:
            full_width, full_height = image.size
            if min(full_width, full_height) < MIN_IMAGE_SIZE:
                raise ImageError(f"image too small ({full_width}x{full_height} px, "
                                 f"need {MIN_IMAGE_SIZE})")
            if max_short_side:
                scale = min(scale, max_short_side / min(full_width, full_height))
            if scale < 0.5 and image.format == "JPEG":
                image.draft("RGB", (max(1, int(np.ceil(full_width * scale))),
                                    max(1, int(np.ceil(full_height * scale)))))
            image.load()  # decodes now: truncated files fail here, not later
            actual = image.size[0] / full_width
            rgb = to_rgb8(image)
    except ImageError:
        raise
    except FileNotFoundError:
        raise ImageError("file not found") from None
    except Image.UnidentifiedImageError:
        raise ImageError("not an image file (unrecognized format)") from None
    except Image.DecompressionBombError as err:
        raise ImageError(f"image too large to decode safely: {err}") from None
    except (OSError, SyntaxError, ValueError, EOFError) as err:
        # PIL reports truncated/corrupt data as OSError or SyntaxError.
        raise ImageError(f"unreadable or corrupt image: {err}") from None
    return rgb, actual


def load_rgb8(path: str) -> np.ndarray:
    """Decodes a photo file at full size (see `open_rgb8`)."""
    return open_rgb8(path)[0]


# ---------------------------------------------------------------------------
# Detection.


Detector = Callable[[np.ndarray], Sequence[np.ndarray]]


class MediaPipeDetector:
    """MediaPipe face mesh -> 68 landmarks per face, largest faces first.

    The face mesh's own detector only finds faces that fill a good part of the
    image; when it finds none, the full-range face detector (faces up to ~5 m)
    proposes boxes and the mesh runs again on each enlarged crop.
    """

    # Callable from several threads at once: each has its own graphs, which release the
    # GIL while they run (photo scans and `mofa reconstruct` detect in threads).
    thread_safe = True

    @staticmethod
    def tag(max_faces: int = 4, min_confidence: float = 0.5) -> str:
        """Identifies the detector's results in caches (bump on mapping changes)."""
        return f"mediapipe-mesh68-v2-{max_faces}-{min_confidence}"

    def __init__(self, max_faces: int = 4, min_confidence: float = 0.5):
        try:
            import mediapipe as mp
        except ImportError as err:  # pragma: no cover - depends on the install
            raise ImportError(
                "face detection needs mediapipe (pip install 'mediapipe==0.10.14'), or pass "
                "detector=callable(image_uint8) -> list of (68, 2) arrays") from err
        self._mp = mp
        self.max_faces = max_faces
        self.min_confidence = min_confidence
        self._local = threading.local()  # mediapipe graphs are not thread-safe
        self.cache_tag = self.tag(max_faces, min_confidence)

    def _graphs(self):
        if not hasattr(self._local, "mesh"):
            solutions = self._mp.solutions
            self._local.mesh = solutions.face_mesh.FaceMesh(
                # The attention model's eyes and lips: on four annotated photos the eye
                # vertices' median NME 0.033 against 0.076 without it (README, "Stop 52").
                static_image_mode=True, max_num_faces=self.max_faces, refine_landmarks=True,
                min_detection_confidence=self.min_confidence)
            self._local.finder = solutions.face_detection.FaceDetection(
                model_selection=1, min_detection_confidence=self.min_confidence)
        return self._local.mesh, self._local.finder

    @staticmethod
    def _mesh(mesh, image: np.ndarray) -> list:
        result = mesh.process(np.ascontiguousarray(image))
        faces = []
        height, width = image.shape[:2]
        for face in result.multi_face_landmarks or ():
            faces.append(np.array([(p.x * width, p.y * height, p.z * width)
                                   for p in face.landmark], np.float64))
        return faces

    def meshes(self, image: np.ndarray) -> list:
        """The face mesh's (478, 3) points per face (x, y pixels; z depth in pixels, as
        MediaPipe scales it), largest faces first."""
        mesh, finder = self._graphs()
        faces = self._mesh(mesh, image)
        if not faces:
            faces = self._via_boxes(mesh, finder, image)
        return sorted(faces, key=lambda f: -landmark_extent(f[:, :2]))

    def __call__(self, image: np.ndarray) -> list:
        return [mesh_to_68(face) for face in self.meshes(image)]

    def _via_boxes(self, mesh, finder, image: np.ndarray) -> list:
        height, width = image.shape[:2]
        result = finder.process(np.ascontiguousarray(image))
        faces = []
        for detection in (result.detections or ())[: self.max_faces]:
            box = detection.location_data.relative_bounding_box
            cx = (box.xmin + box.width / 2) * width
            cy = (box.ymin + box.height / 2) * height
            side = 2.5 * max(box.width * width, box.height * height)
            crop, scale, (x0, y0) = crop_square(image, cx, cy, side, 384)
            for face in self._mesh(mesh, crop)[:1]:
                faces.append(face / scale + np.array([x0, y0, 0.0]))
        return faces


DLIB_PREDICTOR_ENV = "MOFA_DLIB_PREDICTOR"
_DLIB_INSTALL = "pip install 'mofa[dlib]' (dlib-bin and face-recognition-models)"


def dlib_predictor_path(path: Optional[str] = None) -> str:
    """dlib's 68-point shape predictor file: `path`, else $MOFA_DLIB_PREDICTOR, else the
    one inside the `face-recognition-models` package (found without importing it: its
    import needs setuptools' pkg_resources)."""
    import importlib.util
    import os

    path = path or os.environ.get(DLIB_PREDICTOR_ENV)
    if not path:
        spec = importlib.util.find_spec("face_recognition_models")
        if spec is None or not spec.submodule_search_locations:
            raise FileNotFoundError(
                f"the dlib detector needs dlib's 68-point predictor: {_DLIB_INSTALL}, or set "
                f"{DLIB_PREDICTOR_ENV} to a shape_predictor_68_face_landmarks.dat")
        path = os.path.join(list(spec.submodule_search_locations)[0], "models",
                            "shape_predictor_68_face_landmarks.dat")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"dlib's 68-point predictor: no such file {path}")
    return path


class DlibDetector:
    """MediaPipe finds the faces; dlib's 68-point shape predictor places the landmarks.

    dlib's predictor (Kazemi & Sullivan's regression trees in `face-recognition-models`,
    trained on iBUG 300-W, whose licence excludes commercial use: opt-in, never the
    default) was trained on the 68-point semantics annotators use, where MediaPipe's
    mesh, mapped to 68 points, puts the jaw and nose elsewhere (README, "Stop 51:
    dlib's 68-point landmarks, opt-in"). The predictor starts from its own HOG detector's box, so
    each MediaPipe face is cropped (`CONTEXT` x its landmark extent, resized to
    `CROP_PX`, where the face spans ~120 px) and the HOG detector's most confident box
    near the crop's centre is taken, at a low threshold (a greyscale or turned face
    scores below dlib's default 0); the predictor reads the crop in that box.
    A face the HOG detector misses keeps MediaPipe's landmarks (`misses` counts them),
    or is dropped with `fallback=False` (calibration on renders).
    """

    CROP_PX = 300
    CONTEXT = 2.5
    HOG_THRESHOLD = -1.0
    # A box further than this fraction of the crop from its centre is another face.
    MAX_OFFSET = 0.2

    @staticmethod
    def tag(max_faces: int = 4, min_confidence: float = 0.5) -> str:
        """Identifies the detector's results in caches (bump on changes)."""
        return f"dlib68-v1-on-{MediaPipeDetector.tag(max_faces, min_confidence)}"

    def __init__(self, max_faces: int = 4, min_confidence: float = 0.5,
                 predictor: Optional[str] = None, fallback: bool = True):
        try:
            import dlib
        except ImportError as err:  # pragma: no cover - depends on the install
            raise ImportError(f"the dlib detector needs dlib: {_DLIB_INSTALL}") from err
        self._dlib = dlib
        self.predictor_path = dlib_predictor_path(predictor)
        self.finder = MediaPipeDetector(max_faces, min_confidence)
        self.cache_tag = self.tag(max_faces, min_confidence)
        self.fallback = fallback
        self.misses = 0
        self._local = threading.local()  # one predictor and HOG detector per thread

    def _models(self):
        if not hasattr(self._local, "predictor"):
            self._local.predictor = self._dlib.shape_predictor(self.predictor_path)
            self._local.hog = self._dlib.get_frontal_face_detector()
        return self._local.predictor, self._local.hog

    def refine(self, image: np.ndarray, landmarks: np.ndarray) -> Optional[np.ndarray]:
        """(68, 2) the predictor's points for the face at `landmarks` (MediaPipe's), in
        mofa's pixel convention, or None where the HOG detector finds no box."""
        predictor, hog = self._models()
        low, high = landmarks.min(0), landmarks.max(0)
        cx, cy = (low + high) / 2.0
        crop, scale, origin = crop_square(image, cx, cy, self.CONTEXT * landmark_extent(
            landmarks), self.CROP_PX)
        crop = np.ascontiguousarray(crop)
        rects, scores, _ = hog.run(crop, 0, self.HOG_THRESHOLD)
        centre, best = self.CROP_PX / 2.0, None
        for rect, score in zip(rects, scores):
            offset = np.hypot((rect.left() + rect.right()) / 2.0 - centre,
                              (rect.top() + rect.bottom()) / 2.0 - centre)
            if offset < self.MAX_OFFSET * self.CROP_PX and (best is None or score > best[1]):
                best = (rect, score)
        if best is None:
            return None
        # On the crop, where the face spans ~120 px: on 4 annotated photos the same box
        # read at full resolution scored median NME 0.041 against 0.035 here.
        shape = predictor(crop, best[0])
        points = np.array([(p.x + 0.5, p.y + 0.5) for p in shape.parts()], np.float64)
        return (points / scale + np.asarray(origin, np.float64)).astype(np.float32)

    def __call__(self, image: np.ndarray) -> list:
        image = np.ascontiguousarray(image)
        found = []
        for mesh in self.finder.meshes(image):
            # The crop from the mesh's own vertices at the 68 points (`crop_points`).
            points = self.refine(image, crop_points(mesh))
            if points is None:
                self.misses += 1
                if self.fallback:
                    found.append(mesh_to_68(mesh))
            else:
                found.append(points)
        return found


DETECTORS = ("mediapipe", "dlib")


def make_detector(name: str = "mediapipe", max_faces: int = 4, **options) -> Detector:
    """The named face detector (`DETECTORS`), with its own keyword options."""
    if name not in DETECTORS:
        raise ValueError(f"unknown detector {name!r}: expected one of {', '.join(DETECTORS)}")
    kind = MediaPipeDetector if name == "mediapipe" else DlibDetector  # looked up per call
    return kind(max_faces=max_faces, **options)


# ---------------------------------------------------------------------------
# Crops.


def landmark_extent(landmarks: np.ndarray) -> float:
    """The larger side of the landmarks' bounding box, pixels."""
    span = landmarks.max(axis=0) - landmarks.min(axis=0)
    return float(max(span[0], span[1]))


# Framing of photo crops, matched to the synthetic data (mofa.data.synthetic):
# the crop side is CROP_SCALE x the landmarks' larger extent, its centre
# CROP_SHIFT_Y x side above the landmark box centre (the landmarks start at
# the brows, so their box centre sits below the face's centre).
CROP_SCALE = 1.7
CROP_SHIFT_Y = 0.06


def face_box(landmarks: np.ndarray, scale: float = CROP_SCALE,
             shift_y: float = CROP_SHIFT_Y) -> tuple:
    """(centre x, centre y, side) of the square crop around one face's landmarks."""
    low, high = landmarks.min(axis=0), landmarks.max(axis=0)
    side = scale * float(max(high[0] - low[0], high[1] - low[1]))
    cx, cy = (low + high) / 2.0
    return float(cx), float(cy - shift_y * side), side


def _mirror(index: np.ndarray, n: int) -> np.ndarray:
    """Indices reflected into [0, n) (... 1 0 | 0 1 ... n-1 | n-1 n-2 ...), any distance."""
    index = np.mod(index, 2 * n)
    return np.where(index >= n, 2 * n - 1 - index, index)


def crop_square(image: np.ndarray, cx: float, cy: float, side: float, size: int):
    """Square crop of `side` px centred at (cx, cy), resized to size x size.

    Parts outside the image are mirrored in (no black frames or streaks, which
    the synthetic data never shows). Returns (crop uint8, scale,
    (x0, y0)): crop pixel = (image pixel - (x0, y0)) * scale.
    """
    side_i = max(1, int(round(side)))
    x0 = int(round(cx - side_i / 2.0))
    y0 = int(round(cy - side_i / 2.0))
    height, width = image.shape[:2]
    if 0 <= x0 and x0 + side_i <= width and 0 <= y0 and y0 + side_i <= height:
        patch = image[y0:y0 + side_i, x0:x0 + side_i]  # inside: a view, no gather
    else:
        patch = image[_mirror(np.arange(y0, y0 + side_i), height)[:, None],
                      _mirror(np.arange(x0, x0 + side_i), width)[None, :]]
    resized = np.asarray(Image.fromarray(patch).resize((size, size), Image.BICUBIC,
                                                          reducing_gap=3.0))
    return resized, size / side_i, (x0, y0)


def face_crop_with_transform(image: np.ndarray, landmarks: np.ndarray, size: int) -> tuple:
    """(example, scale, origin): the face crop example and crop pixel = (pixel - origin) * scale."""
    from mofa.data.synthetic import decode_srgb8
    cx, cy, side = face_box(landmarks)
    crop, scale, origin = crop_square(image, cx, cy, side, size)
    origin = np.asarray(origin, np.float32)
    local = ((landmarks - origin) * scale).astype(np.float32)
    inside = np.all((local >= 0.0) & (local < size), axis=-1)
    example = {
        "image": decode_srgb8(crop),
        "landmarks": local,
        "landmark_weight": inside.astype(np.float32),
    }
    return example, float(scale), origin


def face_crop(image: np.ndarray, landmarks: np.ndarray, size: int) -> dict:
    """One batch-contract example: the face crop, its landmarks and their weights."""
    return face_crop_with_transform(image, landmarks, size)[0]


MIN_FACE_SIZE = 32


def usable_faces(faces: Sequence[np.ndarray], max_faces: int = 1) -> tuple[list, Optional[str]]:
    """Largest-first faces of at least MIN_FACE_SIZE px, or ([], reason)."""
    faces = sorted((np.asarray(f, np.float32) for f in faces), key=lambda f: -landmark_extent(f))
    for face in faces:
        if face.shape != (68, 2) or not np.all(np.isfinite(face)):
            return [], f"detector returned landmarks of shape {face.shape}, expected (68, 2)"
    if not faces:
        return [], "no face found"
    big = [f for f in faces if landmark_extent(f) >= MIN_FACE_SIZE]
    if not big:
        return [], (f"face too small ({landmark_extent(faces[0]):.0f} px, need "
                    f"{MIN_FACE_SIZE})")
    return big[:max_faces], None
