"""Encoders as one file: `write_encoder` packs an encoder (its training config,
parameters and batch statistics, float16) into a msgpack file (`train.export_encoder`
does it for a workdir); `read_encoder` reads it back for `train.load_trained`, so
anything that takes a workdir (`mofa reconstruct --checkpoint`, `mofa evaluate
synthetic --checkpoint`) also takes the file. The encoder
shipped inside mofa for the builtin model (`SHIPPED`) is such a file, trained by
`experiments/configs/builtin_encoder.py`.
"""

from __future__ import annotations

import json
import os
from typing import Optional

import jax
import ml_collections
import numpy as np
from flax import serialization

from mofa import facemodel

FORMAT = "mofa-encoder/1"
ASSETS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets")
# Face model name -> the encoder shipped for it.
SHIPPED = {"builtin": os.path.join(ASSETS, "builtin_encoder.msgpack")}


def model_signature(model: facemodel.FaceModel) -> dict:
    """What an encoder's outputs depend on: the model's name, sizes and landmark count
    (and for the builtin, its generator's version: its bases change between versions)."""
    from mofa.facemodel import builtin

    signature = {"name": model.name, "num_vertices": int(model.num_vertices),
                 "num_identity": int(model.num_identity),
                 "num_expression": int(model.num_expression),
                 "num_albedo": int(model.num_albedo),
                 "num_landmarks": int(len(model.landmark_indices))}
    if model.name == "builtin":
        signature["builtin_version"] = builtin.VERSION
    return signature


def write_encoder(out: str, config: ml_collections.ConfigDict, params, batch_stats,
                  step: int, model: facemodel.FaceModel, dtype: str = "float16") -> dict:
    """Writes an encoder (its training config, parameters and batch statistics stored
    as `dtype`) as one file at `out`, atomically. Returns its metadata: format,
    training step, face model signature, parameter count and file size."""
    cast = lambda x: np.asarray(x, dtype)  # noqa: E731
    meta = {"format": FORMAT, "step": int(step), "face_model": config.face_model,
            "model": model_signature(model), "dtype": dtype,
            "num_parameters": int(sum(np.size(x) for x in jax.tree.leaves(params)))}
    payload = {"meta": json.dumps(meta), "config": json.dumps(config.to_dict()),
               "params": jax.tree.map(cast, serialization.to_state_dict(params)),
               "batch_stats": jax.tree.map(cast, serialization.to_state_dict(batch_stats))}
    data = serialization.msgpack_serialize(payload)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    partial = out + ".partial"
    with open(partial, "wb") as f:
        f.write(data)
    os.replace(partial, out)
    return {**meta, "bytes": len(data)}


def read_encoder(path: str) -> tuple[ml_collections.ConfigDict, dict, dict]:
    """(config, {"params", "batch_stats"} as float32 numpy trees, metadata) of a file
    written by `export_encoder`; a clear error naming the file otherwise."""
    try:
        with open(path, "rb") as f:
            payload = serialization.msgpack_restore(f.read())
        meta = json.loads(payload["meta"])
        config = ml_collections.ConfigDict(json.loads(payload["config"]))
    except FileNotFoundError:
        raise
    except Exception as err:  # msgpack, json and key errors alike: not our file
        raise ValueError(f"{path} is not a mofa encoder file (written by `mofa "
                         f"export-encoder`): {type(err).__name__}: {err}") from None
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path}: encoder file format {meta.get('format')!r}, this mofa "
                         f"reads {FORMAT!r}")
    to32 = lambda x: np.asarray(x, np.float32)  # noqa: E731
    variables = {k: jax.tree.map(to32, payload[k]) for k in ("params", "batch_stats")}
    return config, variables, meta


def check_model(meta: dict, model: facemodel.FaceModel, path: str) -> None:
    """Refuses a face model other than the one the packaged encoder was trained on."""
    expected, actual = meta["model"], model_signature(model)
    if expected != actual:
        changed = {k: (expected.get(k), actual.get(k)) for k in set(expected) | set(actual)
                   if expected.get(k) != actual.get(k)}
        raise ValueError(f"{path} was trained on a different face model: "
                         + ", ".join(f"{k} {a!r} in the file, {b!r} here"
                                     for k, (a, b) in sorted(changed.items())))


def shipped_encoder(model_name: str) -> Optional[str]:
    """The path of the encoder shipped for a face model, None where there is none."""
    path = SHIPPED.get(model_name)
    return path if path and os.path.exists(path) else None
