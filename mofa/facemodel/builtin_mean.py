"""The builtin model's mean identity code: its procedural mean face registered to
ICT-FaceKit's mean face, then moved by the average code of random ICT identities
(seeds 101,202, 90 each, ridge 0.3). Written by

    python third_party/ict_facekit/register_builtin_mean.py --ict PATH --ridge 3.0

(NoW median of the builtin mean against ICT's mean: 2.12 mm procedural,
0.48 mm registered.) Derived from ICT-FaceKit, MIT License, (c) 2020 USC
Institute for Creative Technologies (third_party/README.md). Coefficients of
`builtin._identity`'s basis, in mm (basis rows have unit norm).
"""

MEAN_IDENTITY = (
    -83.44, -117.59, 18.68, -33.55, 35.67, 194.28, -200.54, -255.76, -76.85, -321.13,
    -145.36, 77.31, -99.08, -2.42, -19.98, 69.26, -86.80, -31.78, 132.14, -18.79,
    -132.72, 9.32, 10.93, 109.15, -14.11, 85.34, -24.66, -139.53, 17.30, 157.27,
    43.67, -20.36, -0.25, -5.28, -36.67, -53.20, 109.44, -76.91, 25.84, 30.71,
    71.16, 70.07, -42.54, -26.79, 28.11, 23.29, -1.83, 79.84, 23.72, 44.13,
    -24.42, 17.65, 0.36, 75.40, 13.68, 33.66, -57.89, 49.14, 45.62, 21.81,
    -16.51, 7.85, -22.43, 32.84, 34.13, 8.16, 1.96, -15.15, -3.72, -38.99,
    -8.88, -11.27, -40.68, -4.08, 36.89, -16.61, 15.90, -13.21, -4.75, 25.92,
    -3.44, -26.65, 20.87, 12.78, 15.72, -14.20, 17.38, 27.18, 23.11, -29.10,
    33.46, 16.52, -14.33, 7.45, -4.96, 18.32, 18.03, -0.57, 6.75, -15.97,
)
