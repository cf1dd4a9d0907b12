"""Analysis-by-synthesis fitting of FaceCodes to images and 2D landmarks, batched and jitted.

The usual coarse-to-fine schedule of model-based fitting:
  1. rigid: rotation and translation from the 68 landmarks (translation starts
     from a closed-form estimate: landmark centroid and scale vs the mean face);
  2. shape: pose, identity and expression from the landmarks plus the prior;
  3. appearance: everything, with the dense photometric term added (reflectance
     and SH illumination only get gradients from it); its first
     `coarse_fraction` of steps on the images at half resolution, drawing the
     model decimated to `coarse_mesh_mm` cells, where a step costs about a
     quarter as much; the rest at full size, each step scoring one of the four
     2x2 pixel sub-grids of the image (`subgrid_views`) with the full mesh.
Each stage is one `jax.lax.scan` of Adam steps, so a whole fit compiles once
per (batch size, image size, step counts). Faces in a batch are fitted
independently: every loss is a per-face mean and Adam scales per parameter,
so a face's fit does not depend on the others in the batch.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Optional

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax

from mofa import facemodel, losses
from mofa.code import DEFAULT_DISTANCE_MM, FIELDS, FaceCode
from mofa.facemodel import NUM_LANDMARKS, FaceModel
from mofa.render import Camera, render_face
from mofa.render import camera as camera_lib
from mofa.render import rasterizer as raster
from mofa.render import sh

_STAGE_FIELDS = {
    "rigid": ("rotation", "translation"),
    "shape": ("rotation", "translation", "identity", "expression"),
    "appearance": FIELDS,
}


# The noise model (`losses.NoiseModel`) the fitting weights are derived from: the
# photometric scale of training, and landmarks trusted to 0.6% of the crop (tighter
# than training's 1.5%: a fit sees each face's landmarks directly, where an encoder
# must generalize; the landmark-only stages then land within ~0.5 px of exact ones).
FIT_NOISE = losses.NoiseModel(photometric_scale=0.05, independent_patches=100.0,
                              landmark_sigma=0.006)
_FIT_PHOTOMETRIC = 20.0
_FIT_PRIOR = FIT_NOISE.prior_weight(_FIT_PHOTOMETRIC)  # 5e-3
# With landmarks weighted by their measured noise (`FitOptions.with_landmark_noise`)
# identity is held 2.5x more loosely than the derived prior: on rendered ICT faces
# a fit started at the true code drifts to a third of its identity under 5e-3, and
# 2e-3 and 1e-3 fit shape equally well, 2e-4 worse. With the uncalibrated landmark
# weight (which trusts a detector to 0.6% of the crop) the looser prior fits the
# detector's noise instead: worse, 1.61 -> 1.67 mm (README, "Accuracy on rendered
# ICT faces").
CALIBRATED_PRIOR_IDENTITY = 0.4 * _FIT_PRIOR
# Priors per model where the derived ones were measured to cost shape
# (`FitOptions.for_model`). The builtin's identity and expression spaces are not
# statistics of people (a Gaussian-process prior, hand-made expressions), so much of
# what a photo says along them is the model's own mismatch: on rendered ICT faces
# (benchmarks/ict_benchmark.py; a tuning set and README's set) the calibrated fit took
# the placed mean face from 1.42 / 1.93 to 1.66 / 2.38 mm (median / mean, every third
# scan vertex), with these 1.43 / 1.95, and it matched the true 2D landmarks better (NME 0.0775 -> 0.0758).
MODEL_PRIORS = {"builtin": {"prior_identity": 0.05, "prior_expression": 0.02}}
# The coarse appearance steps' smallest image: 64 px fits nearly as well as 128 px
# (README), smaller was not measured, so crops under 128 px fit at full size only.
MIN_COARSE_SIZE = 64
# Steps of a fit from the mean face (`fit`, `mofa reconstruct`): 125 rigid, 75 shape,
# 150 coarse and 150 full-size (sub-grid) appearance steps (README, "A coarse mesh
# for the coarse steps", "Full-size steps on pixel sub-grids").
DEFAULT_FIT_STEPS = 500
# `_landmark_term` is in percent of the image size squared (1e4 x `landmark_alignment`).
_FIT_LANDMARK = FIT_NOISE.landmark_weight(_FIT_PHOTOMETRIC) / 1e4  # 0.94


@dataclasses.dataclass(frozen=True)
class FitOptions:
    """Loss weights, Adam step sizes (per field, in the field's units) and stage split.

    The landmark term is the mean squared distance in percent of the image
    size (1 px at 128 px = 0.61), the photometric term the robust l2,1 colour
    distance in linear RGB over the face region's skin, the priors the squared
    standardized codes; the weights are derived from `FIT_NOISE`.
    """

    landmark: float = _FIT_LANDMARK
    photometric: float = _FIT_PHOTOMETRIC
    prior_identity: float = _FIT_PRIOR
    prior_expression: float = _FIT_PRIOR
    prior_reflectance: float = _FIT_PRIOR
    # The synthetic faces' light (`losses.statistical_prior`): off for photos, whose
    # light it does not describe; on rendered ICT faces it cost shape (0.81 -> 0.84 mm
    # median at 5e-3). The encoder's test-time fit (`train.FIT_OPTIONS`) uses it.
    prior_illumination: float = 0.0
    lr_rotation: float = 0.02  # rad
    lr_translation: float = 2.0  # mm
    lr_code: float = 0.05  # standardized units
    lr_illumination: float = 0.02
    # The pose's step sizes in the appearance stage, as a fraction of the landmark
    # stages'. Pose and identity trade against each other in the photometric term;
    # smaller pose steps there (0.1-0.25) fit identity better on rendered faces with
    # exact landmarks but left the ICT benchmark unchanged, so the default keeps 1
    # (README, "Does the fit reach the objective's minimum?").
    appearance_pose_lr: float = 1.0
    # A learned detector's landmarks lean toward the average face: measured on renders,
    # MediaPipe's sit this fraction of the way from the true face's landmarks toward
    # those of the same face with the mean identity / the neutral expression
    # (`landmark_calibration.shrinkage`). The landmark term compares the detections with
    # the fitted face so shrunk, not with the fitted face itself, which would otherwise
    # be pulled toward the mean. 0 for exact landmarks (renders, an encoder's own).
    landmark_identity_shrink: float = 0.0
    landmark_expression_shrink: float = 0.0
    rigid_fraction: float = 0.25  # of the steps; the rest is split below
    # Of `fit`'s steps (fit_landmarks gives it the rest). Short: with calibrated
    # landmark weights the shape comes mostly from the photometric stage.
    shape_fraction: float = 0.15
    # Of the appearance stage, run first on 2x2-averaged images (`coarse_ok`) and the
    # decimated mesh (`coarse_mesh_mm`): a quarter of a full-size step's cost (README,
    # "Accuracy on rendered ICT faces", "A coarse mesh for the coarse steps"). Half:
    # with the full-size steps on pixel sub-grids, more of them fit shape better than
    # more coarse ones (README, "Full-size steps on pixel sub-grids").
    coarse_fraction: float = 0.5
    # Each face's photometric noise scale is estimated with its code, between this floor
    # and FIT_NOISE's scale (`profile_photometric`); 0 keeps FIT_NOISE's. The floor only
    # guards the division: on rendered ICT faces, whose residuals reach 0.008, 0.005
    # and 0.01 fitted alike (README, "The photometric noise of each face").
    residual_scale_floor: float = FIT_NOISE.photometric_scale / 5
    # The coarse appearance steps render the model decimated to this cell size in mm
    # (`facemodel.decimate`, `coarse_render_model`; 0: the full mesh): at 64 px the
    # 2.6-2.8 mm edges of ICT and the builtin put several triangles in a pixel. 6 mm
    # keeps 28% of ICT's vertices and 17% of the builtin's; on rendered ICT faces it
    # fitted as well as the full mesh, 1.15-1.5x faster (8 mm: 0.02-0.03 mm worse;
    # README, "A coarse mesh for the coarse steps"). Landmarks, priors and the
    # full-size steps keep the full model.
    coarse_mesh_mm: float = 6.0
    # The full-size appearance steps each score one of the `full_size_subgrid`^2 pixel
    # sub-grids of the image (`subgrid_views`, cycled; 1: every pixel every step),
    # drawing the full mesh: every pixel's own colour, a quarter of them a step, at
    # 2.3-2.7x less time a step on ICT (README, "Full-size steps on pixel sub-grids").
    full_size_subgrid: int = 2
    # Rounds of `solve_appearance` (illumination, then reflectance, in closed form for
    # the geometry the landmark stages left) before the appearance steps; 0: none.
    appearance_solve_rounds: int = 0
    # Halvings of the coarse view the closed-form solve reads (each 4x fewer rows in its
    # normal equations, its costliest part), while the view's sides are even.
    appearance_solve_halvings: int = 0

    def with_landmark_noise(self, sigma: float, independent_fraction: float = 1.0,
                            identity_shrink: float = 0.0, expression_shrink: float = 0.0
                            ) -> "FitOptions":
        """These options with the landmark weight derived (`FIT_NOISE`) for detector noise
        of `sigma` x crop size per coordinate, of which `independent_fraction` of the
        136 coordinates are independent, and the detector's shrinkage toward the average
        face (a calibrated detector's, `landmark_calibration.LandmarkTable`): correlated
        errors carry less evidence. The identity prior becomes
        `CALIBRATED_PRIOR_IDENTITY`, measured with such weights only."""
        noise = dataclasses.replace(FIT_NOISE, landmark_sigma=sigma)
        weight = noise.landmark_weight(self.photometric) / 1e4 * independent_fraction
        return dataclasses.replace(self, landmark=weight,
                                   prior_identity=CALIBRATED_PRIOR_IDENTITY,
                                   landmark_identity_shrink=identity_shrink,
                                   landmark_expression_shrink=expression_shrink)

    def refining(self) -> "FitOptions":
        """These options for a fit that starts from an estimate already posed on the
        landmarks and shaped (an encoder's code after `place`): a tenth of the steps
        rigid, seven tenths landmark shape steps (nearly free), the light and skin solved
        in closed form (`solve_appearance`, one round on the coarse view halved again),
        then every appearance step coarse. From the shipped builtin encoder's 30 steps, the
        6 appearance steps this leaves scored shape as the 15 of a 0.4 shape fraction did
        on three sets of rendered ICT faces (README, "Stop 48: fewer photometric steps in
        the encoder's refinement"). The solve at a quarter of the crop's size, once, took
        half the fit's time off (0.23 -> 0.12 s CPU a batch of 8) and scored the same
        sets as two rounds at half size did (1.21 / 1.65, 1.28 / 1.71, 1.23 / 1.66 mm
        against 1.21 / 1.64, 1.28 / 1.71, 1.23 / 1.65; README, "Stop 53")."""
        return dataclasses.replace(self, rigid_fraction=0.1, shape_fraction=0.7,
                                   coarse_fraction=1.0, appearance_solve_rounds=1,
                                   appearance_solve_halvings=1)

    def for_model(self, name: str) -> "FitOptions":
        """These options with the model's measured priors (`MODEL_PRIORS`), if any."""
        return dataclasses.replace(self, **MODEL_PRIORS.get(name, {}))

    def learning_rates(self, stage: str = "shape") -> dict:
        pose = self.appearance_pose_lr if stage == "appearance" else 1.0
        return {"rotation": self.lr_rotation * pose, "translation": self.lr_translation * pose,
                "identity": self.lr_code, "expression": self.lr_code,
                "reflectance": self.lr_code, "illumination": self.lr_illumination}


def option_overrides(text: str) -> dict:
    """FitOptions overrides from "k=v,k=v" (a benchmark's --options), each value in its
    field's type; an unknown field or a bad value names itself."""
    defaults = FitOptions()
    names = sorted(f.name for f in dataclasses.fields(FitOptions))
    overrides = {}
    for item in filter(None, text.split(",")):
        name, sep, value = item.partition("=")
        if not sep or name not in names:
            raise ValueError(f"fit option {item!r}: expected name=value with a name among "
                             f"{names}")
        try:
            overrides[name] = type(getattr(defaults, name))(float(value))
        except ValueError:
            raise ValueError(f"fit option {name}: {value!r} is not a number") from None
    return overrides


def coarse_ok(camera: Camera) -> bool:
    """Whether a fit through `camera` runs coarse appearance steps: even sizes whose
    half is at least MIN_COARSE_SIZE (smaller was not measured)."""
    return (camera.height % 2 == 0 and camera.width % 2 == 0
            and min(camera.height, camera.width) >= 2 * MIN_COARSE_SIZE)


def stage_steps(steps: int, options: FitOptions, photometric: bool,
                coarse: bool = False) -> dict:
    """How `steps` splits into the rigid, shape (and coarse and full-size appearance)
    stages; `coarse`: whether the image allows coarse steps (`coarse_ok`)."""
    if steps < 0:
        raise ValueError(f"fit steps must be >= 0, got {steps}")
    rigid = int(round(steps * options.rigid_fraction))
    if not photometric:
        return {"rigid": rigid, "shape": steps - rigid, "appearance": 0}
    shape = int(round(steps * options.shape_fraction))
    appearance = steps - rigid - shape
    coarse = int(round(appearance * options.coarse_fraction)) if coarse else 0
    return {"rigid": rigid, "shape": shape, "coarse": coarse, "appearance": appearance - coarse}


def half_resolution(camera: Camera, images: jax.Array, landmarks: jax.Array):
    """The camera, images (2x2 means) and landmarks of the same view at half the size:
    pixel centres sit at +0.5, so every pixel coordinate simply halves."""
    batch, height, width, channels = images.shape
    if height % 2 or width % 2:
        raise ValueError(f"half resolution needs even image sizes, got {height}x{width}")
    coarse = images.reshape(batch, height // 2, 2, width // 2, 2, channels).mean((2, 4))
    half = Camera(focal=jnp.asarray(camera.focal) / 2, principal_point=camera.principal_point / 2,
                  height=height // 2, width=width // 2)
    return half, coarse, landmarks / 2


@flax.struct.dataclass
class Views:
    """`P` views of the same B faces, cycled through a stage's steps (step t sees view
    t mod P): the camera's fields, the images and the landmarks with a leading P."""

    camera: Camera  # focal (P,), principal_point (P, 2)
    images: Optional[jax.Array]  # (P, B, H, W, 3) or None (landmark stages)
    landmarks: jax.Array  # (P, B, 68, 2) pixels

    @classmethod
    def single(cls, camera: Camera, images: Optional[jax.Array], landmarks: jax.Array):
        add = lambda x: None if x is None else jnp.asarray(x)[None]
        return cls(camera=jax.tree.map(add, camera), images=add(images), landmarks=add(landmarks))

    def at(self, index) -> tuple:
        view = jax.tree.map(lambda x: x[index], self)
        return view.camera, view.images, view.landmarks


def subgrid_views(camera: Camera, images: jax.Array, landmarks: jax.Array, factor: int) -> Views:
    """The factor^2 pixel sub-grids of full-size images as views of their own: pixel
    (factor i + di, factor j + dj) of an image is pixel (i, j) of view (di, dj), whose
    camera (focal / factor, principal point shifted) puts its pixel centres exactly on
    those of the image. Rendering a view draws those pixels of the full-size rendering,
    so the views' objectives together score every pixel once. Views alternate
    diagonally ((0, 0), (1, 1), (0, 1), (1, 0) for 2) so consecutive steps see
    different rows and columns."""
    _, height, width, _ = images.shape
    if factor < 1 or height % factor or width % factor:
        raise ValueError(f"a {factor}x{factor} pixel sub-grid needs image sizes divisible by "
                         f"{factor}, got {height}x{width}")
    offsets = [(d, (d + s) % factor) for s in range(factor) for d in range(factor)]
    # x_view = (x - dx - 0.5) / factor + 0.5 maps pixel centres to pixel centres.
    shift = jnp.asarray([(dx, dy) for dy, dx in offsets], jnp.float32)  # (P, 2) as (x, y)
    to_view = lambda points: (points[None] - shift[:, None, None] - 0.5) / factor + 0.5
    cameras = Camera(focal=jnp.broadcast_to(jnp.asarray(camera.focal) / factor, (len(offsets),)),
                     principal_point=to_view(camera.principal_point[None])[:, 0, 0],
                     height=height // factor, width=width // factor)
    return Views(camera=cameras,
                 images=jnp.stack([images[:, dy::factor, dx::factor] for dy, dx in offsets]),
                 landmarks=to_view(landmarks))


@jax.jit
def initial_code(model: FaceModel, camera: Camera, landmarks: jax.Array,
                 weight: jax.Array) -> FaceCode:
    """Neutral frontal code translated so the mean face's landmarks match in centroid and scale."""
    batch = landmarks.shape[0]
    neutral = FaceCode.neutral(model, (batch,))
    points = model.mean_shape[model.landmark_indices]  # (68, 3) model space
    projected = camera_lib.project(points + neutral.translation[:, None, :], camera)[..., :2]
    w = weight[..., None]
    total = jnp.maximum(jnp.sum(w, axis=1), 1.0)
    centre_q = jnp.sum(landmarks * w, 1) / total
    centre_p = jnp.sum(projected * w, 1) / total

    def spread(points, centre):  # weighted RMS distance to the centre, pixels
        squared = jnp.sum((points - centre[:, None]) ** 2, -1)
        return jnp.sqrt(jnp.sum(squared * weight, 1) / total[:, 0])

    ratio = spread(landmarks, centre_q) / jnp.maximum(spread(projected, centre_p), 1e-3)
    # Landmark size in pixels goes as 1 / distance; fall back to the default without landmarks.
    depth = jnp.where(ratio > 0, DEFAULT_DISTANCE_MM / jnp.maximum(ratio, 1e-3),
                      DEFAULT_DISTANCE_MM)
    centroid = jnp.mean(points, axis=0)
    f = jnp.asarray(camera.focal)
    x = (centre_q[:, 0] - camera.principal_point[0]) * depth / f - centroid[0]
    y = -(centre_q[:, 1] - camera.principal_point[1]) * depth / f - centroid[1]
    translation = jnp.stack([x, y, -depth - centroid[2]], axis=-1)
    return neutral.replace(translation=translation)


# Adam steps of the pose-only landmark fit that places the mean face (`place`): the
# rotation's step is 0.02 rad, so a cosine-decayed 100 steps turn the face up to
# about 60 degrees.
PLACE_STEPS = 100


def place(model: FaceModel, camera: Camera, landmarks: jax.Array, weight: jax.Array,
          options: FitOptions = FitOptions(), contour: Optional[jax.Array] = None,
          init_code: Optional[FaceCode] = None) -> FaceCode:
    """A face posed on 2D landmarks (B, 68, 2): rotation and translation fitted to the
    landmarks, identity and expression kept. From `initial_code` (the mean face; what
    `mofa reconstruct --checkpoint none --fit-steps 0` returns) or from `init_code`
    (an encoder's code)."""
    return fit_landmarks(model, camera, landmarks, weight, steps=PLACE_STEPS, options=options,
                         init_code=init_code, fixed=("identity", "expression"),
                         contour=contour)


# The 17 jaw-line landmarks (Multi-PIE 0-16) lie on the occluding contour in a photo,
# not on fixed vertices; the chin (8) and its neighbours stay fixed.
CONTOUR_LANDMARKS = tuple(i for i in range(17) if i not in (7, 8, 9))
CONTOUR_CANDIDATES = 12
# Candidates in front of the vertex too: at 45 deg of yaw the far silhouette lies up to
# ~45 deg in front of the frontal one; 35 brings it within 2.6 mm of a candidate at 35
# deg of yaw (the tests) and the fitted jaw on annotated photos nearer (README, "Stop 52").
CONTOUR_FORWARD_DEGREES = 35.0


def contour_candidates(model: FaceModel, count: int = CONTOUR_CANDIDATES,
                       band_mm: float = 4.0) -> np.ndarray:
    """(len(CONTOUR_LANDMARKS), count) vertex indices: for each jaw landmark, its own
    vertex (first), then vertices of the mean face along its horizontal line around the
    cheek, from `CONTOUR_FORWARD_DEGREES` in front of the vertex (a turned face's far
    silhouette) backwards to the mesh's edge, evenly spaced by angle.

    The fit's landmark term then matches each detected jaw point to the candidate
    that projects nearest to it (landmark marching, as in 3DDFA and eos's contour
    fitting): on a turned face that is the silhouette, which is where a 2D detector
    puts the jaw line. Computed once per model, outside jit.
    """
    mean = np.asarray(model.mean_shape, np.float64)
    landmarks = np.asarray(model.landmark_indices)
    centre = mean[landmarks].mean(0)
    rows = []
    for j in CONTOUR_LANDMARKS:
        p = mean[landmarks[j]]
        side = 1.0 if p[0] > centre[0] else -1.0
        # Angle around the vertical axis through the face centre, 0 at the front.
        angle = lambda v: np.arctan2(side * (v[..., 0] - centre[0]), v[..., 2] - centre[2])  # noqa: E731
        start, around = angle(p), angle(mean)
        # At most 75 degrees further round: the jaw, not the neck below it; and up to
        # CONTOUR_FORWARD_DEGREES in front of the vertex, where a turned face's far
        # silhouette lies.
        band = ((np.abs(mean[:, 1] - p[1]) < band_mm)
                & (around > start - np.radians(CONTOUR_FORWARD_DEGREES))
                & (around < start + np.radians(75.0)))
        line = np.nonzero(band)[0]
        if not len(line):
            rows.append(np.full(count, landmarks[j]))
            continue
        line = line[np.argsort(around[line])]
        picks = np.linspace(0, len(line) - 1, count - 1).round().astype(int)
        rows.append(np.concatenate([[landmarks[j]], line[picks]]))
    return np.asarray(rows, np.int32)


def landmark_geometry(model: FaceModel, contour: Optional[jax.Array] = None) -> FaceModel:
    """The model cut to its 68 landmark vertices (then the `contour` candidates, if given):
    landmark-only steps skip the other thousands of vertices (its albedo and
    triangles are not meaningful)."""
    idx = model.landmark_indices
    if contour is not None:
        idx = jnp.concatenate([idx, jnp.asarray(contour).reshape(-1)])
    return model.replace(mean_shape=model.mean_shape[idx],
                         identity_basis=model.identity_basis[:, idx],
                         expression_basis=model.expression_basis[:, idx],
                         landmark_indices=jnp.arange(idx.shape[0], dtype=jnp.int32))


def project_landmarks(model: FaceModel, camera: Camera, code: FaceCode) -> jax.Array:
    """(B, 68, 2) pixel positions of the landmark vertices (`model` may be cut down)."""
    vertices = facemodel.shape(model, code.identity, code.expression)[:, model.landmark_indices]
    rotation = camera_lib.euler_to_matrix(code.rotation)
    return camera_lib.project(
        camera_lib.rigid_transform(vertices, rotation, code.translation), camera)[..., :2]


def fitted_landmarks(model: FaceModel, camera: Camera, code: FaceCode, landmarks: jax.Array,
                     contour: Optional[jax.Array] = None) -> jax.Array:
    """(B, 68, 2) the model's landmarks as the fit scores them against `landmarks`: with
    `contour` (`contour_candidates`), each jaw landmark is the candidate vertex that
    projects nearest to its detected point (the choice carries no gradient)."""
    projected = project_landmarks(landmark_geometry(model, contour), camera, code)
    return _slide_contour(projected, landmarks, None if contour is None else contour.shape)


def _slide_contour(projected: jax.Array, landmarks: jax.Array,
                   contour_shape: Optional[tuple]) -> jax.Array:
    """(B, 68, 2) from projected landmark vertices (B, 68 [+ J * C], 2) (then the contour
    candidates, `contour_shape` = (J, C)): each jaw landmark takes the candidate nearest
    to its detected point in `landmarks` (the choice carries no gradient)."""
    fixed = projected[:, :NUM_LANDMARKS]
    if contour_shape is None:
        return fixed
    jaw = jnp.asarray(CONTOUR_LANDMARKS)
    candidates = projected[:, NUM_LANDMARKS:].reshape(projected.shape[0], *contour_shape, 2)
    distance = jnp.sum((candidates - landmarks[:, jaw, None]) ** 2, -1)
    choice = jnp.argmin(jax.lax.stop_gradient(distance), -1)
    chosen = jnp.take_along_axis(candidates, choice[..., None, None], axis=2)[:, :, 0]
    return fixed.at[:, jaw].set(chosen)


@flax.struct.dataclass
class DetectorLandmarks:
    """A calibrated 2D detector's 68 points on a face model, for scoring rendered faces
    against its detections in training on photos: the measured vertices, then the
    jaw's contour candidates (`indices`), inverse-variance weights (mean 1), the model
    cut to those vertices, and the detector's lean toward the average face, as the fit
    models them (`FitOptions.landmark_identity_shrink`). Built from a shipped table by
    `landmark_calibration.detector_landmarks`."""

    indices: jax.Array  # (68 + J * C,) int32 vertex indices
    weights: jax.Array  # (68,)
    geometry: FaceModel  # `landmark_geometry` at `indices`
    contour_shape: tuple = flax.struct.field(pytree_node=False)  # (J, C)
    identity_shrink: float = flax.struct.field(pytree_node=False, default=0.0)
    expression_shrink: float = flax.struct.field(pytree_node=False, default=0.0)

    def points(self, camera: Camera, code: FaceCode, screen_vertices: jax.Array,
               detected: jax.Array) -> jax.Array:
        """(B, 68, 2) what the detector would report for rendered faces: their posed
        screen vertices (B, V, 3) (with any corrective offsets) at the measured
        vertices, moved as the detector leans toward the mean face, the jaw points
        sliding onto the silhouette nearest the `detected` ones (B, 68, 2)."""
        projected = screen_vertices[:, self.indices, :2]
        if self.identity_shrink or self.expression_shrink:
            lean = as_detected(self.geometry, code, self.identity_shrink, self.expression_shrink)
            projected = projected + (project_landmarks(self.geometry, camera, lean)
                                     - project_landmarks(self.geometry, camera, code))
        return _slide_contour(projected, detected, self.contour_shape)


def as_detected(model: FaceModel, code: FaceCode, identity_shrink: float = 0.0,
                expression_shrink: float = 0.0) -> FaceCode:
    """The code whose landmarks a detector that shrinks toward the average face reports
    for `code`: identity and expression moved these fractions toward the mean identity
    and the neutral expression (linear in the shape, so exactly the shrunk landmarks)."""
    if not identity_shrink and not expression_shrink:
        return code
    rest = model.expression_bounds[0] if model.blendshapes else 0.0
    return code.replace(
        identity=code.identity * (1.0 - identity_shrink),
        expression=rest + (code.expression - rest) * (1.0 - expression_shrink))


def _landmark_term(model, camera, code, landmarks, weight, contour, options):
    detected = as_detected(model, code, options.landmark_identity_shrink,
                           options.landmark_expression_shrink)
    projected = fitted_landmarks(model, camera, detected, landmarks, contour)
    return 1e4 * losses.landmark_alignment(projected, landmarks, weight, float(camera.width))


def profile_photometric(residual: jax.Array, floor: float) -> jax.Array:
    """Per-face photometric terms (B,) with each face's noise scale estimated with its code.

    The term P / b0 is the Laplace likelihood of the residual P at FIT_NOISE's scale b0
    (`losses.NoiseModel`), the noise a fit leaves on photos. A face whose image the
    model explains better than that carries more evidence than b0 credits it with, so
    the scale b is fitted jointly with the code, within [floor, b0]: minimising
    N (P / b + log b) over b gives b = P and, up to constants, b0 (1 + log(P / b0)),
    whose gradient is the fixed-scale one times b0 / P. Above b0 (photos: hair,
    beards, what the model cannot draw) the fixed scale is kept; below the floor the
    scale stops shrinking. Continuous with a continuous derivative, so a fit's
    objective values stay comparable between codes.
    """
    b0 = FIT_NOISE.photometric_scale
    if not 0.0 < floor <= b0:
        raise ValueError(f"residual_scale_floor={floor} must be in (0, {b0}]")
    inside = b0 * (1.0 + jnp.log(jnp.clip(residual, floor, b0) / b0))
    below = b0 * (residual - floor) / floor
    return jnp.where(residual > b0, residual, inside + jnp.minimum(below, 0.0))


def objective(model: FaceModel, camera: Camera, code: FaceCode, images: Optional[jax.Array],
              landmarks: jax.Array, weight: jax.Array, options: FitOptions = FitOptions(),
              contour: Optional[jax.Array] = None,
              render_model: Optional[FaceModel] = None) -> jax.Array:
    """The fitting objective of codes: landmarks (jaw points sliding along `contour`
    candidates where given) + priors, and with `images` the photometric term (the
    appearance stage's objective), rendered with `render_model` (the model decimated,
    `coarse_render_model`) where given."""
    photometric = images is not None
    prior = losses.statistical_prior(code, model.expression_bounds)
    total = (options.landmark * _landmark_term(model, camera, code, landmarks, weight, contour,
                                                options)
             + options.prior_identity * prior["prior_identity"]
             + options.prior_expression * prior["prior_expression"])
    if photometric:
        out = render_face(model if render_model is None else render_model, code, camera,
                          background=images)
        per_face = losses.photometric_per_face(out.image, images, out.mask, out.region)
        if options.residual_scale_floor:
            per_face = profile_photometric(per_face, options.residual_scale_floor)
        total += (options.photometric * jnp.mean(per_face)
                  + options.prior_reflectance * prior["prior_reflectance"]
                  + options.prior_illumination * prior["prior_illumination"])
    return total


def _objective(model, options, photometric, params, frozen, camera, images, landmarks, weight,
               contour, render_model):
    return objective(model, camera, FaceCode(**params, **frozen),
                     images if photometric else None, landmarks, weight, options, contour,
                     render_model)


def coarse_render_model(model: FaceModel, options: FitOptions) -> Optional[FaceModel]:
    """The model the coarse appearance steps render (`FitOptions.coarse_mesh_mm`), None
    for the full mesh. Numpy: `model` must be concrete, not traced under jit or vmap."""
    if not options.coarse_mesh_mm:
        return None
    try:
        return facemodel.decimate(model, options.coarse_mesh_mm)
    except jax.errors.TracerArrayConversionError:
        raise ValueError("a fit of a traced model (under jit or vmap) cannot decimate it: "
                         "pass coarse_mesh=fitting.coarse_render_model(model, options) from "
                         "outside, or options with coarse_mesh_mm=0") from None


def _spd_solve(matrix: jax.Array, rhs: jax.Array) -> jax.Array:
    """x with matrix x = rhs for symmetric positive definite matrices (..., n, n) and
    rhs (..., n): Gauss-Jordan elimination without pivoting (safe for SPD), in plain
    XLA operations. jnp.linalg.solve's LAPACK call hung a reconstruction whose two
    batches were fitted in threads at once."""
    n = matrix.shape[-1]
    augmented = jnp.concatenate([matrix, rhs[..., None]], -1)  # (..., n, n + 1)
    rows = jnp.arange(n)[:, None]

    def eliminate(i, augmented):
        # The pivot row replaced by a select, not an in-place row update: one fused
        # elementwise pass per step (8x faster at batch 8, n = 54, on a CPU).
        row = jax.lax.dynamic_index_in_dim(augmented, i, -2)  # (..., 1, n + 1)
        row = row / jax.lax.dynamic_index_in_dim(row, i, -1)
        column = jax.lax.dynamic_index_in_dim(augmented, i, -1)  # (..., n, 1)
        return jnp.where(rows == i, row, augmented - column * row)

    return jax.lax.fori_loop(0, n, eliminate, augmented)[..., -1]


def solve_appearance(model: FaceModel, camera: Camera, code: FaceCode, images: jax.Array,
                     options: FitOptions = FitOptions(), render_model: Optional[FaceModel] = None,
                     rounds: int = 2, fixed: tuple = ()) -> FaceCode:
    """`code` with its SH illumination and reflectance solved in closed form for its
    geometry on `images` (B, H, W, 3), linear RGB: the rendered colour is linear in each
    of them given the other (albedo x irradiance), so each is a weighted linear
    least-squares problem, solved in turn `rounds` times, the illumination first.

    The objective is the appearance stage's: the robust l2,1 colour distance over the
    skin the render covers, as iteratively reweighted least squares (each pixel weighted
    1 / (2 x its current distance), so outliers such as occluders count as in the
    l2,1 term), with each face's profiled noise scale (`profile_photometric`) and the
    reflectance prior; the illumination's prior is not used (photos' light is off the
    synthetic faces' statistics). Visibility, normals and geometry are those of `code`
    (rendered with `render_model`, e.g. the coarse mesh, where given) and stay fixed.
    Fields in `fixed` keep their values.
    """
    m = model if render_model is None else render_model
    code = jax.tree.map(jax.lax.stop_gradient, code)
    out = render_face(m, code, camera)
    bary = raster.barycentrics(out.screen_vertices, m.triangles, out.triangle_id)
    # Per-pixel albedo mean (B, H, W, 3) and reflectance basis, the basis scaled by its
    # standard deviations (the code is standardized). The basis's table is channel-major
    # per vertex, (V, 3, K), so the pixels come out as (B, N, K) with N = (pixel, channel)
    # contiguous: the normal equations are then one batched product over N. In the
    # (B, H, W, K, 3) layout XLA copied the basis into place for every product (5.8x the
    # time at batch 8, 64 px, the builtin's K = 54).
    num_albedo, num_vertices = m.num_albedo, m.num_vertices
    scaled = m.albedo_basis * m.albedo_std[:, None, None]  # (K, V, 3)
    table = jnp.concatenate(
        [m.albedo_mean, jnp.transpose(scaled, (1, 2, 0)).reshape(num_vertices, -1)], -1)
    pixels = raster.interpolate(jnp.broadcast_to(table, (images.shape[0],) + table.shape),
                                m.triangles, out.triangle_id, bary)
    batch = images.shape[0]
    mean = pixels[..., :3]
    basis = pixels[..., 3:].reshape(batch, -1, num_albedo)  # (B, N, K)
    sh_terms = (sh.sh_basis(out.normals) * jnp.asarray(sh.BAND_FACTORS) / jnp.pi)  # (B,H,W,9)
    sh_rows = sh_terms.reshape(batch, -1, sh.NUM_SH)  # (B, P, 9)
    region = out.region
    count = jnp.maximum(jnp.sum(region, (1, 2)), 1.0)  # (B,)
    b0 = FIT_NOISE.photometric_scale
    floor = options.residual_scale_floor or b0
    per_pixel = lambda x: x.reshape(batch, -1, 3)  # noqa: E731  (B, H, W, 3) -> (B, P, 3)
    per_entry = lambda x: x.reshape(batch, -1)  # noqa: E731  (B, H, W, 3) -> (B, N)

    def albedo_of(reflectance):
        return mean + jnp.einsum("bnk,bk->bn", basis, reflectance).reshape(images.shape)

    def shading_of(illumination):
        return jnp.einsum("bhwj,bjc->bhwc", sh_terms, illumination)

    def weights(albedo, shading):
        """IRLS weights (B, H, W, 1): the l2,1 term's curvature at the current colours."""
        distance = jnp.sqrt(jnp.sum((albedo * shading - images) ** 2, -1) + 1e-8)
        per_face = jnp.sum(distance * region, (1, 2)) / count
        # The profiled scale: the term's gradient is the fixed-scale one x b0 / P below b0.
        profile = b0 / jnp.clip(per_face, floor, b0)
        scale = options.photometric * profile / (batch * count)
        return (region * scale[:, None, None]
                / (2.0 * jnp.maximum(distance, 0.25 * floor)))[..., None]

    illumination, reflectance = code.illumination, code.reflectance
    ridge = 1e-6
    for _ in range(rounds):
        if "illumination" not in fixed:
            albedo = albedo_of(reflectance)
            w = weights(albedo, shading_of(illumination))
            # Per colour c: sum over pixels of w a_c^2 Y_j Y_l and w a_c I_c Y_j.
            normal = jnp.einsum("bpc,bpj,bpl->bcjl", per_pixel(w * albedo**2), sh_rows, sh_rows)
            rhs = jnp.einsum("bpc,bpj->bcj", per_pixel(w * albedo * images), sh_rows)
            normal = normal + ridge * (jnp.trace(normal, axis1=-2, axis2=-1)[..., None, None]
                                       + 1e-6) * jnp.eye(sh.NUM_SH)
            illumination = jnp.moveaxis(_spd_solve(normal, rhs), 1, 2)
        if "reflectance" not in fixed:
            shading = shading_of(illumination)
            w = weights(albedo_of(reflectance), shading)
            target = images - mean * shading
            normal = jnp.einsum("bn,bnk,bnl->bkl", per_entry(w * shading**2), basis, basis)
            rhs = jnp.einsum("bn,bnk->bk", per_entry(w * shading * target), basis)
            prior = options.prior_reflectance / batch  # of the batch mean
            normal = normal + prior * jnp.eye(num_albedo)
            reflectance = _spd_solve(normal, rhs)
    return code.replace(illumination=illumination, reflectance=reflectance)


def _run_stage(model, views: Views, options, stage, steps, fixed, code, weight, contour=None,
               render_model=None):
    """`steps` Adam steps (cosine-decayed) on the stage's free fields, as one scan; step t
    scores view t mod P of `views`."""
    return _run_stages(model, views, options, ((stage, steps),), fixed, code, weight, contour,
                       render_model)


def _run_stages(model, views: Views, options, stages, fixed, code, weight, contour=None,
                render_model=None):
    """Stages of one objective, `stages` ((name, steps), ...) in turn, as ONE scan: each
    stage is `steps` Adam steps (cosine-decayed) on its free fields from a fresh optimizer
    state, the other fields held: the updates of one scan per stage, to float rounding;
    step t scores view t mod P of `views`. One scan body instead of one per stage for the rigid and
    shape stages of every landmark fit: a training step with its refinement (a landmark
    fit differentiated through) traced, lowered and compiled in 13.2-14.0 s against
    14.5-19.2 s as two scans (three alternated runs, the tests' XLA flags)."""
    stages = tuple((name, steps) for name, steps in stages if steps > 0)
    if not stages:
        return code
    if len({name == "appearance" for name, _ in stages}) > 1:
        raise ValueError(f"stages {stages} mix the photometric and the landmark objective")
    free_in = [[f for f in _STAGE_FIELDS[name] if f not in fixed] for name, _ in stages]
    free = [f for f in FIELDS if any(f in fields for fields in free_in)]
    values = code.as_dict()
    params = {f: values[f] for f in free}
    frozen = {f: values[f] for f in FIELDS if f not in free}
    # optax.adam is scale_by_adam, then the learning rate: here the rate of the step's
    # stage and field (0 where the stage holds the field), its schedule on the stage's
    # own step count.
    adam = optax.scale_by_adam()
    schedules = [{f: optax.cosine_decay_schedule(options.learning_rates(name)[f], steps,
                                                 alpha=0.05) for f in fields}
                 for (name, steps), fields in zip(stages, free_in)]
    starts = np.cumsum([0] + [steps for _, steps in stages])
    loss = functools.partial(_objective, model, options, stages[0][0] == "appearance")
    grad = jax.grad(loss)
    num_views = views.landmarks.shape[0]

    def rates(index):
        """Each field's learning rate at step `index` and whether its stage moves it."""
        rate = {f: jnp.zeros((), jnp.float32) for f in free}
        moves = {f: jnp.zeros((), bool) for f in free}
        for k, schedule in enumerate(schedules):
            active = (index >= starts[k]) & (index < starts[k + 1])
            for f, value in schedule.items():
                rate[f] = jnp.where(active, value(index - starts[k]), rate[f])
                moves[f] = moves[f] | active
        return rate, moves

    def step(carry, index):
        params, opt_state = carry
        rate, moves = rates(index)
        if len(stages) > 1:  # a new stage starts with a new optimizer state
            fresh = jnp.isin(index, jnp.asarray(starts[1:-1], jnp.int32))
            opt_state = jax.tree.map(lambda zero, now: jnp.where(fresh, zero, now),
                                     adam.init(params), opt_state)
        camera, images, landmarks = views.at(index % num_views)
        direction, opt_state = adam.update(grad(params, frozen, camera, images, landmarks,
                                                weight, contour, render_model), opt_state)
        params = {f: params[f] - rate[f] * direction[f] for f in free}
        if "expression" in params and model.blendshapes:  # projected: weights stay in range
            clipped = jnp.clip(params["expression"], *model.expression_bounds)
            params["expression"] = jnp.where(moves["expression"], clipped,
                                             params["expression"])
        return (params, opt_state), None

    total = int(starts[-1])
    (params, _), _ = jax.lax.scan(step, (params, adam.init(params)), jnp.arange(total))
    return FaceCode(**params, **frozen)


def _check_inputs(camera, landmarks, weight, images=None):
    if landmarks.ndim != 3 or landmarks.shape[1:] != (facemodel.NUM_LANDMARKS, 2):
        raise ValueError(f"landmarks have shape {tuple(landmarks.shape)}, expected (B, 68, 2)")
    if weight.shape != landmarks.shape[:2]:
        raise ValueError(f"landmark weights have shape {tuple(weight.shape)}, expected "
                         f"{tuple(landmarks.shape[:2])}")
    if images is not None and images.shape != (landmarks.shape[0], camera.height,
                                               camera.width, 3):
        raise ValueError(f"images have shape {tuple(images.shape)}, expected "
                         f"({landmarks.shape[0]}, {camera.height}, {camera.width}, 3) "
                         "to match the landmarks and the camera")


@functools.partial(jax.jit, static_argnames=("steps", "options", "fixed"))
def fit_landmarks(model: FaceModel, camera: Camera, landmarks: jax.Array, weight: jax.Array,
                  steps: int = 300, init_code: Optional[FaceCode] = None,
                  options: FitOptions = FitOptions(), fixed: tuple = (),
                  contour: Optional[jax.Array] = None) -> FaceCode:
    """Pose, identity and expression of B faces from 2D landmarks (B, 68, 2) in pixels.

    weight: (B, 68) per-landmark confidence (0 ignores a point). Without
    `init_code` the fit starts from `initial_code`. `fixed` names FaceCode
    fields kept at their initial value (e.g. ("identity",) for video frames).
    contour: `contour_candidates(model)` to let the jaw landmarks slide onto the
    silhouette (for detected landmarks); None keeps fixed vertices.
    """
    _check_inputs(camera, landmarks, weight)
    if init_code is None:
        init_code = initial_code(model, camera, landmarks, weight)
    split = stage_steps(steps, options, photometric=False)
    views = Views.single(camera, None, landmarks)
    return _run_stages(model, views, options, (("rigid", split["rigid"]),
                                               ("shape", split["shape"])),
                       fixed, init_code, weight, contour)


def fit(model: FaceModel, camera: Camera, images: jax.Array, landmarks: jax.Array,
        landmark_weight: jax.Array, init_code: Optional[FaceCode] = None,
        steps: int = DEFAULT_FIT_STEPS,
        options: FitOptions = FitOptions(), fixed: tuple = (),
        contour: Optional[jax.Array] = None,
        coarse_mesh: Optional[FaceModel] = None) -> FaceCode:
    """Fits B faces to linear-RGB images (B, H, W, 3) and their 68 landmarks (pixels).

    Rigid and shape stages on the landmarks, then all fields with the dense
    photometric term (see the module docstring); `steps` is the total; `contour`
    as in `fit_landmarks`. The coarse steps render `coarse_mesh`, by default
    `coarse_render_model(model, options)` (pass it to decimate once for many calls).
    """
    if coarse_mesh is None and coarse_ok(camera):
        coarse_mesh = coarse_render_model(model, options)
    return _fit(model, camera, images, landmarks, landmark_weight, init_code, steps, options,
                fixed, contour, coarse_mesh)


@functools.partial(jax.jit, static_argnames=("steps", "options", "fixed"))
def _fit(model, camera, images, landmarks, landmark_weight, init_code, steps, options, fixed,
         contour, coarse_mesh):
    _check_inputs(camera, landmarks, landmark_weight, images)
    if init_code is None:
        init_code = initial_code(model, camera, landmarks, landmark_weight)
    split = stage_steps(steps, options, photometric=True, coarse=coarse_ok(camera))
    code = init_code
    full_size = Views.single(camera, images, landmarks)
    code = _run_stages(model, full_size, options, (("rigid", split["rigid"]),
                                                   ("shape", split["shape"])),
                       fixed, code, landmark_weight, contour)
    if split["coarse"]:
        half = half_resolution(camera, images, landmarks)
        if options.appearance_solve_rounds:
            solve_view = half
            for _ in range(options.appearance_solve_halvings):
                if solve_view[0].height % 2 or solve_view[0].width % 2:
                    break
                solve_view = half_resolution(*solve_view)
            code = solve_appearance(model, solve_view[0], code, solve_view[1], options,
                                    coarse_mesh, options.appearance_solve_rounds, fixed)
        code = _run_stage(model, Views.single(*half), options, "appearance", split["coarse"],
                          fixed, code, landmark_weight, contour, coarse_mesh)
    elif split["appearance"] and options.appearance_solve_rounds:
        code = solve_appearance(model, camera, code, images, options, None,
                                options.appearance_solve_rounds, fixed)
    if coarse_ok(camera) and options.full_size_subgrid > 1:
        full_size = subgrid_views(camera, images, landmarks, options.full_size_subgrid)
    return _run_stage(model, full_size, options, "appearance", split["appearance"], fixed, code,
                      landmark_weight, contour)


@jax.jit
def fit_errors(model: FaceModel, camera: Camera, code: FaceCode, landmarks: jax.Array,
               weight: jax.Array, images: Optional[jax.Array] = None,
               contour: Optional[jax.Array] = None) -> dict:
    """Per-face errors (B,): landmark_px (weighted mean distance; jaw points on the
    `contour` as the fit scores them) and, with images, photometric (over the face
    region's skin); and "landmarks" (B, 68, 2), the fitted face's landmarks so scored."""
    projected = fitted_landmarks(model, camera, code, landmarks, contour)
    distance = jnp.linalg.norm(projected - landmarks, axis=-1)
    errors = {"landmarks": projected, "landmark_px": jnp.sum(distance * weight, 1) / jnp.maximum(jnp.sum(weight, 1), 1.0)}
    if images is not None:
        out = render_face(model, code, camera, background=images)
        # Over the face region's skin, the pixels the objective scores.
        errors["photometric"] = losses.photometric_per_face(out.image, images, out.mask,
                                                            out.region)
    return errors
