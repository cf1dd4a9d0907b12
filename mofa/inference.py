"""Inference: face crops -> FaceCodes (encoder estimate and/or analysis-by-synthesis
fitting) and their renders, for `mofa reconstruct`, FineNet's coarse codes and any
script. `load_reconstructor` builds one from a training workdir or a face model.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from mofa import facemodel, fitting, losses, programs, render
from mofa.code import DEFAULT_FOV_DEGREES, FaceCode
from mofa.data import faces as faces_lib

# One compilation per shape for every caller.
render_face = jax.jit(render.render_face)


@jax.jit
def _render_on_crops(model: facemodel.FaceModel, code: FaceCode, camera: render.Camera,
                     images: jax.Array) -> tuple[render.RenderOutput, jax.Array]:
    """The codes rendered over their crops, and each face's photometric residual there
    (`fitting.fit_errors`'s, from the same render)."""
    out = render.render_face(model, code, camera, background=images)
    return out, losses.photometric_per_face(out.image, images, out.mask, out.region)


@jax.jit
def _meshes(model: facemodel.FaceModel, code: FaceCode) -> tuple[jax.Array, ...]:
    return (facemodel.shape(model, code.identity, code.expression),
            facemodel.albedo(model, code.reflectance),
            facemodel.shape(model, code.identity, jnp.zeros_like(code.expression)))


def crop_face(image: np.ndarray, landmarks: np.ndarray, size: int) -> dict:
    """`faces.face_crop` plus its transform: crop pixel = (image pixel - origin) * scale."""
    example, scale, origin = faces_lib.face_crop_with_transform(image, landmarks, size)
    return {**example, "scale": scale, "origin": origin, "detected": landmarks}


def pad_rows(array: np.ndarray, size: int) -> np.ndarray:
    """Repeats the first row up to `size` rows: every batch has one shape (one compile)."""
    if len(array) == size:
        return array
    return np.concatenate([array, np.repeat(array[:1], size - len(array), axis=0)])


class TrainedEncoder:
    """A trained encoder as `Reconstructor.encoder`: crops (B, S, S, 3) linear RGB ->
    FaceCode (the 3DMM level; `train.encode`, with the config's landmark refinement).
    Crops of another size than `input_size` are resized (antialiased) to it first: the
    same field of view frames the same face. Its variables and decoder are the program's
    arguments, so `mofa.programs` can keep the traced program on disk (keyed by the
    network's definition, the refinement and the sizes)."""

    def __init__(self, state, decoder, refine_steps: int, input_size: int):
        from mofa import train

        apply_fn = state.apply_fn

        @jax.jit
        def encode(params, batch_stats, decoder, images):
            if images.shape[-2] != input_size:
                shape = images.shape[:-3] + (input_size, input_size, images.shape[-1])
                images = jax.image.resize(images, shape, "linear", antialias=True)
            return train.encode(params, batch_stats, apply_fn, images, decoder,
                                refine_steps=refine_steps)[0]

        self._encode = encode
        self._arguments = (state.params, state.batch_stats, decoder)
        self._static = (repr(apply_fn), refine_steps, input_size)

    def __call__(self, images: jax.Array) -> FaceCode:
        return programs.call("encoder", self._encode, (*self._arguments, images),
                             static=self._static)


@dataclasses.dataclass
class Reconstructor:
    """Crops -> FaceCodes: encoder estimate (optional) then `fit_steps` of fitting."""

    model: facemodel.FaceModel
    camera: render.Camera
    batch_size: int = 8
    fit_steps: int = fitting.DEFAULT_FIT_STEPS
    encoder: Optional[Callable] = None  # images (B, S, S, 3) linear -> FaceCode
    detail: Optional[Callable] = None  # `detail.load_refiner`: per-face FineNet refinement
    # None: `fitting.FitOptions()` with the landmark weight derived from the calibrated
    # detector noise where the model has a landmark table, and the model's measured
    # priors (`fitting.MODEL_PRIORS`); from an encoder's estimate, its refining split
    # (`FitOptions.refining`).
    options: Optional[fitting.FitOptions] = None
    # Jaw landmarks slide onto the model's silhouette (`fitting.contour_candidates`):
    # a detector puts them on the occluding contour, not on fixed vertices.
    contour: bool = True
    # The detector's landmarks as measured model vertices, inverse-variance weighted
    # (`landmark_calibration`), where the model has a shipped table for `detector`.
    calibrated_landmarks: bool = True
    # The 2D landmark detector (`faces.DETECTORS`) whose table the fit uses and which
    # `reconstruct.run` runs unless given another.
    detector: str = "mediapipe"
    # An encoder's code is posed on the detector's landmarks (`fitting.place`) before
    # any fit: trained on rendered faces, its pose is what photos shake most.
    place_encoder: bool = True
    # Batches `codes` fits at once, each in a thread of its own: at batch 8 XLA's CPU ops
    # leave part of 2 cores idle, and two ICT fits side by side took 0.78x the time of
    # one after the other (a batch of 16 gained nothing; README, issue 10's speed).
    parallel_batches: int = 2

    def __post_init__(self):
        from mofa import landmark_calibration

        table = (landmark_calibration.table_for(self.model, self.detector)
                 if self.calibrated_landmarks else None)
        # The model the fit sees: the detector's landmark vertices; outputs keep the
        # model's own landmark definition.
        self.fit_model = self.model if table is None else self.model.replace(
            landmark_indices=jnp.asarray(table.vertices, jnp.int32))
        self._landmark_weights = None if table is None else jnp.asarray(table.weights())
        if self.options is None:
            options = (fitting.FitOptions() if table is None
                       else fitting.FitOptions().with_landmark_noise(
                           table.crop_sigma(), table.independent_fraction(),
                           table.identity_shrink, table.expression_shrink))
            options = options.for_model(self.model.name)
            self.options = options.refining() if self.encoder is not None else options
        self._contour = (jnp.asarray(fitting.contour_candidates(self.fit_model))
                         if self.contour else None)
        self._coarse_meshes = {}
        self._compiled = False

    def coarse_mesh(self):
        """`fitting.coarse_render_model` for the current options, once per cell size."""
        mm = self.options.coarse_mesh_mm
        if mm not in self._coarse_meshes:
            self._coarse_meshes[mm] = fitting.coarse_render_model(self.fit_model, self.options)
        return self._coarse_meshes[mm]

    def fit_errors(self, code: FaceCode, crops: list[dict],
                   photometric: Optional[np.ndarray] = None) -> dict:
        """`fitting.fit_errors` of codes on their crops, with the fit's own landmark
        vertices and contour (so "landmarks" are the points the fit matched); the
        photometric residual too where the fit read the image (`fit_steps` > 0), taken
        from `photometric` where given (`render`'s, the same number) instead of rendering
        the faces again."""
        render_here = self.fit_steps > 0 and photometric is None
        parts = []
        for n, chunk, stacked in self._batches(code, crops, ("landmarks", "landmark_weight",
                                                             "image")):
            errors = fitting.fit_errors(
                self.fit_model, self.camera, chunk, stacked["landmarks"],
                stacked["landmark_weight"], images=stacked["image"] if render_here else None,
                contour=self._contour)
            parts.append({k: np.asarray(v)[:n] for k, v in errors.items()})
        errors = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        if self.fit_steps > 0 and photometric is not None:
            errors["photometric"] = np.asarray(photometric)
        return errors

    def landmark_weights(self, weight: jax.Array) -> jax.Array:
        """Detector confidences (B, 68) times the calibrated per-landmark weights."""
        return weight if self._landmark_weights is None else weight * self._landmark_weights

    @property
    def image_size(self) -> int:
        return self.camera.width

    def codes(self, crops: list[dict], init: Optional[FaceCode] = None, fixed: tuple = (),
              steps: Optional[int] = None, landmarks_only: bool = False,
              known: Optional[dict] = None) -> FaceCode:
        """Codes of any number of crops, in batches of `batch_size` (padded).

        landmarks_only: refine with `fitting.fit_landmarks` (pose, identity,
        expression; far cheaper) instead of the photometric `fitting.fit`.
        known: {field: (N, ...) values} set in the starting code of every crop (with
        `fixed`, kept: e.g. a video track's identity).
        """
        steps = self.fit_steps if steps is None else steps

        def batch_code(start: int):
            chunk = crops[start:start + self.batch_size]
            rows = slice(start, start + len(chunk))
            pad = lambda x: jnp.asarray(pad_rows(np.asarray(x), self.batch_size))  # noqa: E731
            stack = lambda k: pad(np.stack([c[k] for c in chunk]))  # noqa: E731
            pixels, lm = stack("image"), stack("landmarks")
            weight = self.landmark_weights(stack("landmark_weight"))
            if init is not None:
                start_code = jax.tree.map(lambda x: pad(np.asarray(x)[rows]), init)
            elif self.encoder is not None:
                start_code = self.encoder(pixels)
                if self.place_encoder:
                    start_code = fitting.place(self.fit_model, self.camera, lm, weight,
                                               self.options, self._contour, start_code)
            elif steps == 0:  # the mean face, posed from the landmarks
                start_code = fitting.place(self.fit_model, self.camera, lm, weight,
                                           self.options, self._contour)
            else:
                start_code = fitting.initial_code(self.fit_model, self.camera, lm, weight)
            if known:
                start_code = start_code.replace(**{
                    f: pad(np.asarray(v, np.float32)[rows]) for f, v in known.items()})
            code = start_code
            if steps > 0 and landmarks_only:
                code = fitting.fit_landmarks(self.fit_model, self.camera, lm, weight, steps=steps,
                                             init_code=start_code, options=self.options,
                                             fixed=fixed, contour=self._contour)
            elif steps > 0:
                options = self.options

                def fit(model, camera, pixels, lm, weight, start_code, contour, coarse_mesh):
                    return fitting.fit(model, camera, pixels, lm, weight, start_code,
                                       steps=steps, options=options, fixed=fixed,
                                       contour=contour, coarse_mesh=coarse_mesh)

                # Kept on disk where enabled (`mofa.programs`): a new process skips its trace.
                code = programs.call("fit", fit, (self.fit_model, self.camera, pixels, lm, weight,
                                                  start_code, self._contour, self.coarse_mesh()),
                                     static=(steps, options, fixed))
            return jax.tree.map(lambda x: np.asarray(x)[:len(chunk)], code)

        starts = list(range(0, len(crops), self.batch_size))
        self.coarse_mesh()  # decimated once, not by two threads at once
        parts = []
        if not self._compiled:  # the first batch alone compiles what the others reuse
            parts.append(batch_code(starts.pop(0)))
            self._compiled = True
        if self.parallel_batches > 1 and len(starts) > 1:
            with concurrent.futures.ThreadPoolExecutor(self.parallel_batches) as pool:
                parts += list(pool.map(batch_code, starts))
        else:
            parts += [batch_code(start) for start in starts]
        return jax.tree.map(lambda *xs: np.concatenate(xs), *parts)

    def _batches(self, code: FaceCode, crops: list[dict], keys: tuple):
        """(n, code, {key: stacked crops[key]}) per batch of `batch_size` crops, padded
        to one shape (one compile); n rows are real."""
        pad = lambda x: jnp.asarray(pad_rows(np.asarray(x), self.batch_size))  # noqa: E731
        for start in range(0, len(crops), self.batch_size):
            chunk = crops[start:start + self.batch_size]
            rows = slice(start, start + len(chunk))
            yield (len(chunk), jax.tree.map(lambda x: pad(np.asarray(x)[rows]), code),  # noqa: B023
                   {k: pad(np.stack([c[k] for c in chunk])) for k in keys})

    def meshes(self, code: FaceCode, crops: list[dict]) -> tuple[np.ndarray, ...]:
        """Every face's mesh (model space, mm; (N, V, 3)), linear albedo (N, V, 3) and
        neutral mesh (its identity at zero expression, the glTF rig's base; (N, V, 3)),
        batched like `codes`."""
        parts = [tuple(np.asarray(x)[:n] for x in _meshes(self.model, chunk))
                 for n, chunk, _ in self._batches(code, crops, ())]
        return tuple(np.concatenate(p) for p in zip(*parts))

    def render(self, code: FaceCode, crops: list[dict]):
        """Per-face render outputs (numpy) of `code` over the crops, batched like `codes`,
        and "photometric", each face's residual on its crop (`fit_errors`')."""
        outs = []
        for n, chunk, stacked in self._batches(code, crops, ("image",)):
            out, photometric = _render_on_crops(self.model, chunk, self.camera,
                                                stacked["image"])
            outs.append({k: np.asarray(getattr(out, k))[:n] for k in (
                "mask", "depth", "normals", "screen_vertices", "vertex_visibility",
                "landmarks")})
            outs[-1]["photometric"] = np.asarray(photometric)[:n]
        return {k: np.concatenate([o[k] for o in outs]) for k in outs[0]}

def load_reconstructor(checkpoint: Optional[str] = None, face_model: Optional[str] = None,
                       image_size: Optional[int] = None, fit_steps: Optional[int] = None,
                       batch_size: int = 8,
                       warn: Callable[[str], None] = print,
                       detector: str = "mediapipe") -> Reconstructor:
    """A Reconstructor from an encoder (`checkpoint`: a training workdir or an encoder
    file, refined by `fit_steps`, default its config's test-time fit
    `encoder.fit_steps`) or from a face model alone (fitting from the mean face,
    default `fitting.DEFAULT_FIT_STEPS`). checkpoint None: the encoder shipped for the
    face model (`pretrained.SHIPPED`, crops at 128 px) where there is one, else the face
    model alone; "none": the face model alone. FineNet refinement: set `.detail =
    detail.load_refiner(WORKDIR, reconstructor.camera)`."""
    from mofa import pretrained

    encoder = None
    default_steps = fitting.DEFAULT_FIT_STEPS
    # "ict" and "ict:PATH" alike: the kind of model, not where its files are.
    shipped = pretrained.shipped_encoder((face_model or "builtin").split(":")[0])
    if checkpoint is None and shipped:
        checkpoint, image_size = shipped, image_size or 128
    if checkpoint == "none":
        checkpoint = None
    if checkpoint:
        from mofa.train import config_fit_steps, config_refine_steps, load_trained

        config, state, decoder, _ = load_trained(checkpoint, face_model)
        model, camera = decoder.face_model, decoder.camera
        if "corrective" in state.params:
            warn("the checkpoint has a corrective level; meshes and codes are exported at "
                 "the 3DMM level")
        encoder = TrainedEncoder(state, decoder, config_refine_steps(config), config.image_size)
        default_steps = config_fit_steps(config)
        if image_size and image_size != config.image_size:
            # Crops (and the fit) at `image_size`, the encoder on them resized to its own
            # size: the same field of view frames the same face, so its code holds.
            camera = render.Camera.from_fov(config.get("fov_degrees", DEFAULT_FOV_DEGREES),
                                            image_size, image_size)
    else:
        model = facemodel.load(face_model or "builtin")
        size = image_size or 128
        camera = render.Camera.from_fov(DEFAULT_FOV_DEGREES, size, size)
    steps = fit_steps if fit_steps is not None else default_steps
    if steps < 0 or batch_size < 1:
        raise ValueError(f"fit_steps={steps} must be >= 0 and batch_size={batch_size} >= 1")
    return Reconstructor(model, camera, batch_size=batch_size, fit_steps=steps,
                         encoder=encoder, detector=detector)
