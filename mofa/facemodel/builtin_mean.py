"""The builtin model's mean identity code: its procedural mean face registered to
ICT-FaceKit's mean face. Written by

    python third_party/ict_facekit/register_builtin_mean.py --ict PATH --ridge 3.0

(NoW median of the builtin mean against ICT's mean: 2.12 mm procedural,
0.54 mm registered.) Derived from ICT-FaceKit, MIT License, (c) 2020 USC
Institute for Creative Technologies (third_party/README.md). Coefficients of
`builtin._identity`'s basis, in mm (basis rows have unit norm).
"""

MEAN_IDENTITY = (
    -19.17, -105.28, 6.84, -16.51, 62.41, 69.13, -151.87, -231.80, -19.63, -187.24,
    -109.20, 71.25, 7.65, 4.03, 28.48, 43.76, -51.23, -25.70, 98.74, -43.97,
    -98.44, 9.71, -37.95, 64.51, -4.82, 71.60, 13.59, -92.95, 47.57, 140.86,
    26.29, -26.17, -8.07, -1.12, -14.25, -25.62, 82.23, -57.63, 2.05, 45.47,
    38.43, 60.91, -23.80, -21.30, 20.31, 18.84, 6.85, 65.41, 13.67, 24.52,
    -27.66, 4.55, -11.89, 56.82, -5.14, 26.83, -26.93, 48.32, 23.46, 23.43,
    -9.75, 14.62, -22.52, 19.46, 22.08, -2.03, 9.02, -18.11, -2.22, -11.63,
    5.05, -5.37, -22.52, -12.24, 23.15, -16.00, 5.30, -8.17, -3.32, 10.73,
    -4.65, -11.07, 1.81, 5.92, 11.55, -10.19, 14.04, 14.20, 6.79, -22.43,
    17.59, 9.63, -9.81, 4.30, -7.66, 7.55, 3.07, -2.48, 9.38, -3.52,
)
