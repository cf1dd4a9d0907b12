"""Traced programs kept on disk (`jax.export`), so a new process skips tracing them.

JAX's persistent compilation cache (`mofa.enable_compilation_cache`) keeps compiled
programs, but every process still traces and lowers each jitted function before it can
look one up: for `mofa reconstruct`'s fit that is 1.5-2 s of a warm 10 s run. `call`
instead keeps the function's exported StableHLO (`jax.export`), keyed by everything
that shapes the program: its name and static arguments, the arguments' tree, shapes and
dtypes, mofa's own source, JAX's version and the backend. A process that finds the file
deserializes it (tens of ms) and the compilation cache supplies the executable.

Only where `enable` was called (`mofa.enable_compilation_cache` does, for the CLI and the
training launcher): elsewhere, in the tests, say, `call` is the function itself, which
shares its compiled programs with every other caller in the process.
"""

from __future__ import annotations

import hashlib
import logging
import os
import pickle
import tempfile
import threading
from typing import Any, Callable, Optional

import jax
import numpy as np

log = logging.getLogger(__name__)

_folder: Optional[str] = None
_lock = threading.Lock()
_programs: dict[str, Callable] = {}
_source_digest: Optional[str] = None


def enable(folder: str) -> None:
    """Keeps programs in `folder` from now on."""
    global _folder
    os.makedirs(folder, exist_ok=True)
    _folder = folder


def disable() -> None:
    global _folder
    _folder = None
    with _lock:
        _programs.clear()


def _source() -> str:
    """A digest of mofa's Python source: any change of the code makes new programs."""
    global _source_digest
    if _source_digest is None:
        digest = hashlib.sha256()
        root = os.path.dirname(os.path.abspath(__file__))
        for folder, subfolders, files in os.walk(root):
            subfolders.sort()
            for name in sorted(files):
                if name.endswith(".py"):
                    path = os.path.join(folder, name)
                    digest.update(os.path.relpath(path, root).encode())
                    with open(path, "rb") as f:
                        digest.update(f.read())
        _source_digest = digest.hexdigest()
    return _source_digest


def _key(name: str, static: Any, in_tree, leaves: list) -> str:
    parts = [name, repr(static), str(in_tree), jax.__version__, jax.default_backend(),
             str(jax.local_device_count()), _source()]
    parts += [f"{x.shape}{x.dtype}{getattr(x, 'weak_type', False)}" for x in leaves]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:32]


def call(name: str, function: Callable, args: tuple, static: Any = ()) -> Any:
    """`function(*args)`, through a program kept on disk where `enable`d.

    function: a pure function of the array pytrees `args` (close any static argument
    over it and pass the same values as `static`, which keys the program). A program
    that cannot be exported or read back (a custom call the backend does not export,
    say) is logged and run as a jitted function."""
    if _folder is None:
        return function(*args)
    leaves, in_tree = jax.tree.flatten(args)
    leaves = [x if isinstance(x, jax.Array) else np.asarray(x) for x in leaves]
    key = _key(name, static, in_tree, leaves)
    with _lock:  # one export or read per program, also with batches in threads
        program = _programs.get(key)
        if program is None:
            program = _programs[key] = _load_or_export(name, key, function, in_tree, leaves)
    return program(leaves)


def _load_or_export(name: str, key: str, function: Callable, in_tree, leaves: list):
    path = os.path.join(_folder, f"{name}-{key}.jaxexport")
    try:
        if os.path.exists(path):
            with open(path, "rb") as f:
                out_tree, serialized = pickle.load(f)
            exported = jax.export.deserialize(bytearray(serialized))
        else:
            out_trees = []

            def flat(*flat_args):
                out = function(*jax.tree.unflatten(in_tree, flat_args))
                out_leaves, tree = jax.tree.flatten(out)
                out_trees.append(tree)
                return out_leaves

            exported = jax.export.export(jax.jit(flat))(*leaves)
            out_tree = out_trees[0]
            # Written whole or not at all: another process may be reading the folder.
            handle, scratch = tempfile.mkstemp(dir=_folder, suffix=".tmp")
            with os.fdopen(handle, "wb") as f:
                pickle.dump((out_tree, bytes(exported.serialize())), f)
            os.replace(scratch, path)
    except Exception as err:  # noqa: BLE001  (any failure: the jitted function still runs)
        log.warning("program %s not kept on disk (%s: %s); tracing it in this process",
                    name, type(err).__name__, err)
        jitted = jax.jit(function)
        return lambda flat_args: jitted(*jax.tree.unflatten(in_tree, flat_args))
    run = jax.jit(exported.call)
    return lambda flat_args: jax.tree.unflatten(out_tree, run(*flat_args))
