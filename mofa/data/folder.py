"""A user's folder of photos as face crops with 68 landmarks (the batch contract).

The first pass over a folder decodes every image and detects faces (MediaPipe
face mesh, ~5 ms an image plus decoding) in worker threads, with a progress bar;
results are cached per image in a small JSON file keyed by path, mtime and size,
so later runs only re-detect new or changed files, and processes that share the
cache folder split the first pass between them. Images that cannot be used
(unreadable, truncated, not an image, too small, no face) are skipped: each is
logged once with its reason and listed in `dataset.skipped`, and the run goes on.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from typing import Iterator, Optional

import numpy as np

from mofa.data import common
from mofa.data import faces as faces_lib

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset({
    ".jpg", ".jpeg", ".jpe", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm",
    ".pgm", ".pnm", ".jfif",
})
CACHE_FOLDER = ".mofa_cache"


def find_images(root: str) -> list[str]:
    """Image files under root (recursive, sorted; hidden folders such as caches skipped)."""
    found = []
    for folder, subfolders, files in os.walk(root, followlinks=True):
        subfolders[:] = sorted(d for d in subfolders if not d.startswith("."))
        for name in sorted(files):
            if os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS and not name.startswith("."):
                found.append(os.path.join(folder, name))
    return found


class LandmarkCache:
    """One small JSON file per key in a folder; unreadable entries count as missing."""

    def __init__(self, folder: str):
        self.folder = folder
        os.makedirs(folder, exist_ok=True)

    def _path(self, key: str) -> str:
        return os.path.join(self.folder, hashlib.sha1(key.encode()).hexdigest() + ".json")

    def get(self, key: str) -> Optional[dict]:
        try:
            with open(self._path(key)) as f:
                entry = json.load(f)
        except (OSError, ValueError):
            return None
        return entry if entry.get("key") == key else None

    def put(self, key: str, entry: dict) -> None:
        path = self._path(key)
        tmp = f"{path}.tmp{os.getpid()}"
        try:
            with open(tmp, "w") as f:
                json.dump(dict(entry, key=key), f)
            os.replace(tmp, path)
        except OSError as err:  # a read-only cache must not stop the run
            log.warning("cannot write landmark cache %s: %s", path, err)


def default_cache_dir(root: str) -> str:
    """<root>/.mofa_cache if writable, else a folder under $MOFA_CACHE_DIR / ~/.cache/mofa."""
    local = os.path.join(root, CACHE_FOLDER)
    try:
        os.makedirs(local, exist_ok=True)
        if os.access(local, os.W_OK):
            return local
    except OSError:
        pass
    from mofa.facemodel import cache_dir
    digest = hashlib.sha1(os.path.abspath(root).encode()).hexdigest()[:16]
    return os.path.join(cache_dir(), "folders", digest)


def detector_tag(detector) -> str:
    """What a cached detection depends on besides the file."""
    tag = getattr(detector, "cache_tag", None)
    if tag:
        return str(tag)
    name = getattr(detector, "__qualname__", type(detector).__qualname__)
    return f"{getattr(detector, '__module__', None) or type(detector).__module__}.{name}"


class DetectedFaces:
    """Face items (source, 68 landmarks in source pixels) plus the skipped sources.

    Subclasses provide `_load(source) -> uint8 image`; `example(i)` crops item i.
    """

    def __init__(self, image_size: int, max_faces_per_image: int = 1,
                 scan_workers: Optional[int] = None, scan_shard: tuple = (0, 1)):
        if image_size < 16:
            raise ValueError(f"image_size must be at least 16, got {image_size}")
        index, count = scan_shard
        if not 0 <= index < count:
            raise ValueError(f"scan_shard={scan_shard}: expected (index, count) with "
                             "0 <= index < count")
        self.image_size = image_size
        self.max_faces_per_image = max_faces_per_image
        self.scan_workers = scan_workers
        self.scan_shard = (int(index), int(count))
        self.items: list[tuple] = []  # (source, (68, 2) float32 landmarks)
        self.skipped: list[tuple] = []  # (source name, reason)

    def __len__(self) -> int:
        return len(self.items)

    def _skip(self, source, reason: str) -> None:
        self.skipped.append((source, reason))
        log.warning("skipping %s: %s", source, reason)

    def _load(self, source) -> np.ndarray:
        raise NotImplementedError

    def _workers(self) -> int:
        """Detection threads: one per core (at most 8) for a thread-safe detector such as
        the default MediaPipe (1.9-2.0x the images/s of one thread on 2 cores, README
        "The first detection pass"); another runs in this thread unless `scan_workers`
        says otherwise."""
        if self.scan_workers is not None:
            return max(int(self.scan_workers), 0)
        thread_safe = self._detector is None or getattr(self._detector, "thread_safe", False)
        return min(os.cpu_count() or 1, 8) if thread_safe else 0

    def _scan_sources(self, sources: list, key_of, name_of, detect, desc: str,
                      progress: bool) -> None:
        """Fills `items` (and `skipped`) in the order of `sources`, detecting faces in
        every source the cache does not hold (`key_of(source)`: its cache key, OSError if
        unreadable; `detect(source)`: a detection record).

        This process (`scan_shard` = (index, count)) starts at its own share of the
        sources and reads the cache again right before each detection, so processes
        sharing the cache folder (a multi-host run's photos on a shared filesystem) each
        detect about 1/count of a new folder; with separate caches each detects all.
        """
        from tqdm.auto import tqdm

        index, count = self.scan_shard
        start = len(sources) * index // count
        order = list(range(start, len(sources))) + list(range(start))

        def look(i):
            try:
                key = key_of(sources[i])
            except OSError as err:
                return i, {"error": f"cannot read file: {err}"}
            entry = self.cache.get(key)
            if entry is None:
                entry = detect(sources[i])
                if not entry.get("retry"):  # detector crashes are retried next time
                    self.cache.put(key, entry)
            return i, entry

        entries: list = [None] * len(sources)
        workers = self._workers()
        if self._detector is None and workers > 1:
            self.detector  # noqa: B018 - mediapipe imported once, before the threads
        with tqdm(total=len(sources), desc=desc, unit="image",
                  disable=not progress or not sources) as bar:
            for i, entry in common.ordered_map(look, order, workers):
                entries[i] = entry
                bar.update()
        for source, entry in zip(sources, entries):
            if "error" in entry:
                self._skip(name_of(source), entry["error"])
                continue
            for face in entry["faces"][: self.max_faces_per_image]:
                self.items.append((source, np.asarray(face, np.float32)))

    def _detection_record(self, load) -> dict:
        """{"faces": [...]} or {"error": reason} for `load() -> (image, scale)`.

        "retry" marks errors not to cache (a detector crash may not recur).
        """
        try:
            image, scale = load()
            found = [np.asarray(f, np.float32) / np.float32(scale) for f in self.detector(image)]
        except faces_lib.ImageError as err:
            return {"error": str(err)}
        except ImportError:
            raise
        except Exception as err:  # a detector crash on one image must not stop the scan
            return {"error": f"face detection failed: {type(err).__name__}: {err}",
                    "retry": True}
        faces, reason = faces_lib.usable_faces(found, self.max_faces_per_image)
        if reason:
            return {"error": reason}
        return {"faces": [f.tolist() for f in faces]}

    def example(self, index: int) -> dict:
        """Item `index` as a batch-contract example (image, landmarks, landmark_weight)."""
        source, landmarks = self.items[index]
        return faces_lib.face_crop(self._load(source), landmarks, self.image_size)

    def batches(self, batch_size: int, shuffle: bool = True, seed: int = 0,
                repeat: bool = True, drop_remainder: bool = True,
                num_workers: int = 4, rows: slice = slice(None)) -> Iterator[dict]:
        """Batches of the batch contract; an item that fails to load now is skipped.

        num_workers threads decode and crop ahead (PIL decodes without the GIL).
        rows: this process's part of every global batch of `batch_size`; only its
        items are decoded (an item that fails is replaced by the next of this part).
        """
        if not self.items:
            raise ValueError(f"no usable face images ({len(self.skipped)} skipped)")
        failed = set()

        def load(i):
            try:
                return i, self.example(i)
            except faces_lib.ImageError as err:
                return i, err

        def examples():
            order = (i for i in common.rows_of_batches(
                common.index_order(len(self.items), shuffle, seed, repeat), batch_size, rows)
                if i not in failed)
            for i, result in common.ordered_map(load, order, num_workers):
                if isinstance(result, faces_lib.ImageError):
                    # Changed or removed since the scan: skip it from now on.
                    if i not in failed:
                        failed.add(i)
                        self._skip(self.items[i][0], str(result))
                    if len(failed) == len(self.items):
                        return
                    continue
                yield result

        return common.batch_examples(examples(), len(common.rows_range(batch_size, rows)),
                                     drop_remainder)


class FolderDataset(DetectedFaces):
    """Face crops from every image under `root` (recursive).

    detector: callable(image uint8 (H, W, 3)) -> list of (68, 2) pixel landmark
      arrays; default MediaPipe's face mesh (`faces.MediaPipeDetector`).
    max_faces_per_image: the largest faces of each image that become items.
    scan_workers: threads detecting faces in the first pass (default: one per core, at
      most 8, for a detector whose `thread_safe` is true, as MediaPipe's; else 0: this
      thread).
    scan_shard: (this process's index, process count) of a multi-process run: the
      share of a new folder this process detects first (`DetectedFaces._scan_sources`).
    """

    def __init__(self, root: str, image_size: int, cache_dir: Optional[str] = None,
                 detector=None, max_faces_per_image: int = 1, progress: bool = True,
                 scan_workers: Optional[int] = None, scan_shard: tuple = (0, 1)):
        super().__init__(image_size, max_faces_per_image, scan_workers, scan_shard)
        if not os.path.isdir(root):
            raise FileNotFoundError(f"photo folder not found: {root}")
        self.root = root
        self.cache = LandmarkCache(cache_dir or default_cache_dir(root))
        self._detector = detector
        self.files = find_images(root)
        self._scan(progress)

    @property
    def detector(self):
        if self._detector is None:
            self._detector = faces_lib.MediaPipeDetector(max_faces=max(4, self.max_faces_per_image))
        return self._detector

    def _load(self, path: str) -> np.ndarray:
        return faces_lib.load_rgb8(path)

    def example(self, index: int) -> dict:
        path, landmarks = self.items[index]
        # Big JPEGs decode at a reduced size that still leaves the crop >= 1.5x image_size.
        _, _, side = faces_lib.face_box(landmarks)
        image, scale = faces_lib.open_rgb8(path, min(1.0, 1.5 * self.image_size / side))
        return faces_lib.face_crop(image, landmarks * np.float32(scale), self.image_size)

    def _key(self, path: str) -> str:
        stat = os.stat(path)
        return "|".join([os.path.abspath(path), str(stat.st_mtime_ns), str(stat.st_size),
                         self._tag, str(self.max_faces_per_image)])

    @property
    def _tag(self) -> str:
        # The default detector's tag is known without loading mediapipe.
        if self._detector is None:
            return faces_lib.MediaPipeDetector.tag(max(4, self.max_faces_per_image))
        return detector_tag(self._detector)

    def _detect(self, path: str) -> dict:
        # Detection needs no more than ~1024 px on the short side.
        return self._detection_record(lambda: faces_lib.open_rgb8(path, max_short_side=1024))

    def _scan(self, progress: bool) -> None:
        self._scan_sources(self.files, self._key, str, self._detect,
                           f"finding faces in {self.root}", progress)
        if not self.items:
            log.warning("no usable face images under %s (%d files, %d skipped)",
                        self.root, len(self.files), len(self.skipped))
