"""Coarse-to-fine face detail (Richardson et al. 2017, "Learning detailed face reconstruction
from a single image").

CoarseNet is the existing encoder + face model: its code renders to a depth map and
an albedo map in image space. FineNet, a small fully convolutional U-Net, refines
that depth with a per-pixel residual (mm). It trains in two phases:

  1. supervised, on synthetic faces with wrinkle-like detail added to the rendered
     depth (`detailed_batch`): masked L1 depth + normal angular loss;
  2. unsupervised shape-from-shading: the image against the albedo (re-rendered
     from the coarse code under ambient light) shaded under the coarse code's SH
     light with FineNet's normals, plus fidelity to the coarse depth and a
     Laplacian smoothness term on the residual.

Normals come from depth by `normals_from_depth` (differentiable), so training,
shading and evaluation all see the same geometry. `refine` and `detail_mesh`
turn a coarse render into a refined depth map, normal map and mesh.

Modules: `geometry` (depth and image operators), `synthetic` (synthetic detail,
coarse inputs), `model` (FineNet), `losses` (both phases' losses, the train
step), `data` (cached coarse codes of photos, the photo source), `evaluation`,
`training` (`train_detail` on `trainer.run_steps`), `outputs` (refined depth,
normal maps, meshes). Their public names are importable from `mofa.detail`.

"""

from mofa.detail.geometry import (
    backproject, image_laplacian, normals_from_depth, shading_ratio)
from mofa.detail.synthetic import (
    albedo_render, camera_for, coarse_inputs, detailed_batch, shade, skin_weight,
    wrinkle_field)
from mofa.detail.model import (
    FineNet, NUM_FEATURES, apply_fine, fine_features)
from mofa.detail.losses import (
    DetailWeights, detail_losses, masked_mean, normal_angle_cost, train_step)
from mofa.detail.data import (
    CoarseCodes, CoarseSource)
from mofa.detail.evaluation import (
    angle_degrees, depth_normal_errors, evaluate_photos, evaluate_synthetic)
from mofa.detail.training import (
    create_state, load_detail, train_detail)
from mofa.detail.outputs import (
    detail_mesh, load_refiner, refine, write_detail)

__all__ = [
    "CoarseCodes", "CoarseSource", "DetailWeights", "FineNet", "NUM_FEATURES",
    "albedo_render", "angle_degrees", "apply_fine", "backproject", "camera_for",
    "coarse_inputs", "create_state", "depth_normal_errors", "detail_losses",
    "detail_mesh", "detailed_batch", "evaluate_photos", "evaluate_synthetic",
    "fine_features", "image_laplacian", "load_detail", "load_refiner", "masked_mean",
    "normal_angle_cost", "normals_from_depth", "refine", "shade", "shading_ratio",
    "skin_weight", "train_detail", "train_step", "wrinkle_field", "write_detail"
]
