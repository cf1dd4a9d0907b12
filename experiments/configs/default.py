"""Defaults every experiment config starts from (MoFA's image formation and losses)."""

import ml_collections

from mofa import losses


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    # What experiments/main.py runs: mofa (the autoencoder, `mofa.train`), bootstrap
    # (InverseFaceNet's rounds, `mofa.bootstrap`) or detail (FineNet, `mofa.detail`).
    config.task = "mofa"
    config.seed = 0
    config.face_model = "builtin"  # builtin | ict:PATH | bfm2009:PATH | bfm2017:PATH | flame:PATH
    config.image_size = 128
    config.fov_degrees = 12.6

    config.data = ml_collections.ConfigDict()
    config.data.source = "synthetic"  # synthetic | synthetic_tfds | folder | tfds
    config.data.face_model = ""  # SPEC the synthetic faces come from ("" = config.face_model)
    config.data.path = ""  # folder of photos (source=folder)
    config.data.name = ""  # tfds dataset name (source=tfds), e.g. "celeb_a"
    config.data.data_dir = ""  # tfds data_dir ("" = tfds default)
    config.data.num_train = 10_000  # synthetic_tfds split sizes
    config.data.num_test = 512
    # Photo sources (folder, tfds): score the rendered faces' landmarks as the detector
    # reports them, from its calibrated table where the model has one (the measured
    # vertices, inverse-variance weights, sliding jaw contour and the detector's lean
    # toward the average face; `landmark_calibration.detector_landmarks`), as `mofa
    # reconstruct` fits them. False: the model's own landmark vertices, equally weighted.
    config.data.calibrated_landmarks = True
    # Overrides of `mofa.data.synthetic.Framing` for source=synthetic: pose ranges,
    # expression scale, light strength, views_per_person (> 1: multi-view batches
    # with "person_id"), e.g. {"max_yaw_degrees": 60.0}.
    config.data.framing = ml_collections.ConfigDict()

    config.encoder = ml_collections.ConfigDict()
    config.encoder.backbone = "alexnet"  # alexnet | resnet18 | resnet50
    config.encoder.width = 64
    config.encoder.hidden = 1024  # AlexNet's fully connected width
    config.encoder.dtype = "float32"
    # Locate the 68 landmarks by heatmaps (integral regression) and feed their layout
    # to the head (`networks.FaceEncoder.num_landmarks`).
    config.encoder.landmark_head = True
    # Give the head each image's brightness and contrast (`FaceEncoder.exposure_inputs`).
    config.encoder.exposure_inputs = True
    # > 0: the code is refined by this many landmark-fit steps to the encoder's own
    # heatmap landmarks, differentiably, in training and evaluation (`train.encode`).
    config.encoder.refine_steps = 0
    # > 0: evaluation and inference then fit the code photometrically to the image for
    # this many steps (analysis by synthesis at test time, `train.fit_code`); training
    # never runs it. eval.json scores encoder and fit, eval_encoder.json the encoder.
    config.encoder.fit_steps = 0

    # The multi-level model's learned corrective space (`mofa.corrective`): sizes of
    # the corrective shape / albedo coefficients, 0 = off.
    config.corrective = ml_collections.ConfigDict()
    config.corrective.shape_dim = 0
    config.corrective.albedo_dim = 0

    # MoFA's loss: dense photometric (face-region skin) + landmarks + statistical
    # prior, weighted by the observation noise of each term (derivation:
    # `mofa.losses.NoiseModel`): photometric 1.92, prior 5.3e-4, landmarks 161.
    config.loss = ml_collections.ConfigDict()
    config.loss.photometric = losses.PHOTOMETRIC_WEIGHT
    config.loss.vertex_photometric = 0.0
    config.loss.landmark = losses.LANDMARK_WEIGHT
    config.loss.landmark_head = losses.LANDMARK_WEIGHT  # with encoder.landmark_head
    config.loss.prior_identity = losses.PRIOR_WEIGHT
    config.loss.prior_expression = losses.PRIOR_WEIGHT
    config.loss.prior_reflectance = losses.PRIOR_WEIGHT
    config.loss.prior_illumination = losses.PRIOR_WEIGHT  # the synthetic faces' light
    config.loss.model_space = 0.0
    config.loss.parameter = 0.0
    # Corrective-level regularizers and identity consistency across images of a person.
    config.loss.corrective_shape_smoothness = 0.0
    config.loss.corrective_albedo_smoothness = 0.0
    config.loss.corrective_shape_magnitude = 0.0
    config.loss.corrective_albedo_magnitude = 0.0
    config.loss.corrective_shape_symmetry = 0.0
    config.loss.corrective_albedo_symmetry = 0.0
    config.loss.identity_consistency = 0.0

    config.batch_size = 32
    config.num_steps = 100_000
    config.learning_rate = 1e-4
    config.warmup_steps = 1_000
    config.grad_clip = 1.0

    config.log_every = 50
    config.image_every = 1_000
    config.checkpoint_every = 1_000
    config.checkpoint_keep = 3
    config.eval_every = 0  # > 0: also evaluate every that many steps (learning curves)
    config.eval_before_training = True  # the untrained encoder's metrics (eval_initial.json)
    config.eval_batches = 8  # test batches of each evaluation; 0: train only
    config.eval_batch_size = 32
    config.progress = True
    return config
