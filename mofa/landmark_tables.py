"""Measured MediaPipe-68 landmark tables of the shipped face models (`landmark_calibration`).

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
    # 160 faces; median sigma (inter-ocular): model's own vertices 0.0416, calibrated 0.0300;
    # independent coordinates 12.1 of 136
    # pose_noise and shrinkage: python -m mofa.landmark_calibration --face-model ict:PATH
    #   --render-region face_and_head --pose-range-only
    "ict-facekit:face": {
        "vertices": [
            1184, 1769, 2140, 1777, 1780, 770, 1672, 801, 966, 2571, 3879, 3011, 3983, 3980, 4333,
            3972, 3402, 267, 287, 482, 1416, 2006, 4206, 3630, 2723, 2527, 2672, 1358, 4527, 4839,
            4777, 4870, 2088, 4558, 4282, 5328, 983, 688, 638, 896, 594, 859, 3137, 2879, 2928,
            3204, 3100, 2813, 5653, 5665, 2081, 0, 4276, 2374, 6158, 6312, 6480, 5518, 6004, 5807,
            5585, 5685, 5522, 6190, 6106, 6471, 5515, 5967
        ],
        "sigma": [
            0.0681, 0.0659, 0.0766, 0.0739, 0.0589, 0.0396, 0.0406, 0.0389, 0.0457, 0.039, 0.0352,
            0.0368, 0.059, 0.0777, 0.0801, 0.0688, 0.0719, 0.0277, 0.0274, 0.0247, 0.0233, 0.0189,
            0.0193, 0.0246, 0.0251, 0.0299, 0.0298, 0.0193, 0.0262, 0.0278, 0.0316, 0.0257, 0.024,
            0.0237, 0.0251, 0.0259, 0.0267, 0.0278, 0.0262, 0.0213, 0.0411, 0.0475, 0.0208, 0.025,
            0.0272, 0.0255, 0.0473, 0.042, 0.0265, 0.0276, 0.0278, 0.0301, 0.0302, 0.031, 0.0301,
            0.0312, 0.0352, 0.0361, 0.0345, 0.0267, 0.0288, 0.0251, 0.0268, 0.0282, 0.0311,
            0.0345, 0.0345, 0.0313
        ],
        "num_vertices": 9409,
        "independent": 12.14,
        "pose_noise": 1.578,
        "identity_shrink": 0.268,
        "expression_shrink": 0.29,
    },
}
