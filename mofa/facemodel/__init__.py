"""Face models: one `FaceModel` pytree for every source, loaded by `load(SPEC)`.

SPEC is one of `builtin`, `ict` (ICT-FaceKit downloaded at a pinned commit on first
use, `ict.fetch`), `ict:PATH` (a clone of it), `bfm2009:PATH`, `bfm2017:PATH`, `flame:PATH`, or
`npz:PATH` for a model saved with `save_npz` (e.g. a converted or cut-down model).
"""

from __future__ import annotations

import hashlib
import os

from mofa.facemodel.model import (
    NUM_LANDMARKS,
    FaceModel,
    albedo,
    components,
    decimate,
    dot_last,
    from_numpy,
    linear_combination,
    load_npz,
    safe_normalize,
    sample_codes,
    save_npz,
    shape,
    vertex_normals,
    vertex_subset,
)

KINDS = ("builtin", "ict", "bfm2009", "bfm2017", "flame", "npz")


def cache_dir() -> str:
    """Where converted models are cached ($MOFA_CACHE_DIR, default ~/.cache/mofa)."""
    path = os.environ.get("MOFA_CACHE_DIR") or os.path.join(
        os.path.expanduser("~"), ".cache", "mofa")
    os.makedirs(path, exist_ok=True)
    return path


def cache_path(kind: str, source: str, *options) -> str:
    """A cache file name keyed by the source's absolute path, mtime/size and options.

    Also by the builtin model's version: converted models borrow its albedo space or
    landmarks by correspondence with its mean face (transfer.default_source)."""
    from mofa.facemodel import builtin  # here: builtin imports this package
    stamp = [kind, os.path.abspath(source), f"builtin-{builtin.VERSION}"]
    if os.path.exists(source):
        st = os.stat(source)
        stamp += [str(st.st_mtime_ns), str(st.st_size)]
    stamp += [str(o) for o in options]
    digest = hashlib.sha1("|".join(stamp).encode()).hexdigest()[:16]
    return os.path.join(cache_dir(), f"{kind}-{digest}.npz")


def load(spec: str, **options) -> FaceModel:
    """Loads a face model from SPEC (see module docstring); options go to the loader."""
    kind, sep, path = spec.partition(":")
    if kind not in KINDS:
        raise ValueError(f"unknown face model spec {spec!r}: expected one of "
                         + ", ".join(k if k == "builtin" else f"{k}:PATH" for k in KINDS))
    if kind == "builtin":
        if sep:
            raise ValueError(f"face model spec {spec!r}: 'builtin' takes no path")
        from mofa.facemodel import builtin
        return builtin.load(**options)
    if kind == "ict" and not path:  # downloaded at a pinned commit on first use
        from mofa.facemodel import ict
        return ict.load(ict.fetch(), **options)
    if not path:
        raise ValueError(f"face model spec {spec!r}: '{kind}' needs a path, as {kind}:PATH")
    path = os.path.expanduser(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"face model {kind}: no such file or folder: {path}")
    if kind == "npz":
        return load_npz(path)
    if kind == "ict":
        from mofa.facemodel import ict
        return ict.load(path, **options)
    if kind == "bfm2009":
        from mofa.facemodel import bfm
        return bfm.load_bfm2009(path, **options)
    if kind == "bfm2017":
        from mofa.facemodel import bfm
        return bfm.load_bfm2017(path, **options)
    from mofa.facemodel import flame
    return flame.load(path, **options)


__all__ = [
    "NUM_LANDMARKS", "FaceModel", "albedo", "cache_dir", "cache_path", "components", "decimate",
    "dot_last",
    "from_numpy", "linear_combination", "load", "load_npz", "safe_normalize", "sample_codes",
    "save_npz", "shape", "vertex_normals", "vertex_subset",
]
