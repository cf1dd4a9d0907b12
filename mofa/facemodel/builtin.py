"""A procedurally generated morphable face model that needs no download.

The mean face is a regular (u, v) grid mapped onto a superquadric head and
sculpted with smooth analytic features (brow ridge, eye sockets with eyeballs
and lids, nose, lips, chin, cheekbones, jaw line). The identity space is a
Gaussian-process morphable model (Luethi et al. 2017): a sum of multi-scale,
mirror-symmetric, spatially weighted RBF kernels (one over the head, one per
facial feature) whose leading eigenfunctions are computed on a subsample and
Nystroem-interpolated to every vertex. Expressions are hand-made localized
displacement fields with ARKit-like names; albedo components cover skin tone,
regional colour and smooth spatial variation.

The procedural mean is then moved by one identity code (builtin_mean.py) that
registers it to ICT-FaceKit's population of scanned people: ICT's mean face, then the
average code of 180 random ICT identities; 2.12 mm NoW median from ICT's mean face
before, 0.48 mm after (third_party/ict_facekit/register_builtin_mean.py).

Neither identity nor expression components contain a similarity transform
(rigid motion or uniform scale) of the face mask: that is head pose and camera
distance, which an image cannot tell from shape (model.remove_similarity).

Every basis row (V, 3) has unit Frobenius norm, so a component's std is the
Frobenius norm (mm, or linear-RGB units for albedo) of its field at code 1.
"""

from __future__ import annotations

import os

import numpy as np
from scipy.interpolate import PchipInterpolator
from scipy.linalg import eigh

from mofa.facemodel.builtin_mean import MEAN_IDENTITY
from mofa.facemodel.model import FaceModel, from_numpy, load_npz, remove_similarity, save_npz

VERSION = "5"  # 4: the mean face registered to ICT-FaceKit's mean (builtin_mean.py);
# 5: moved on by the average code of 180 random ICT identities (README, "Stop 50")

_NU, _NV = 121, 101  # grid columns (azimuth) x rows (height): 12,221 vertices
_THETA_MAX = np.deg2rad(105.0)  # past the jaw angle towards the ears
_Y_RANGE = (-100.0, 100.0)  # below the chin to the hairline, mm
_SUPERQUADRIC = 2.6  # > 2 flattens the front of the head like a real face

# Feature anchors (mm); the subject's left eye is at +x.
_EYE = np.array([31.5, 30.0])  # pupil centre; interocular distance 63 mm
_EYE_HALF_LENGTH = 14.5
_CORNEA_Z = -11.0
_EYEBALL_AXES = np.array([17.0, 13.0, 11.0])  # flattened in x: corners wrap the globe
_MOUTH_Y = -42.0
_MOUTH_HALF_WIDTH = 25.0


def _gauss(x, sigma):
    return np.exp(-0.5 * (x / sigma) ** 2)


def _smoothstep(lo, hi, x):
    t = np.clip((x - lo) / (hi - lo), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _pchip(points):
    points = np.asarray(sorted(points), dtype=np.float64)
    return PchipInterpolator(points[:, 0], points[:, 1], extrapolate=True)


def _warp(n, lo, hi, density):
    """n samples of [lo, hi] spaced inversely to `density` (detail where it is high)."""
    t = np.linspace(lo, hi, 4001)
    cdf = np.concatenate([[0.0], np.cumsum(0.5 * (density(t[1:]) + density(t[:-1])))])
    return np.interp(np.linspace(0.0, cdf[-1], n), cdf, t)


# Head outline: half-width, front-midline depth and how far the sides recede, by height y.
_HALF_WIDTH = _pchip([(-115, 40), (-90, 38), (-75, 45), (-60, 53), (-40, 61), (0, 69),
                      (20, 70), (45, 67), (75, 63), (100, 58)])
_FRONT_Z = _pchip([(-115, -70), (-100, -48), (-94, -32), (-88, -18), (-77, -7), (-62, -15),
                   (-50, -9), (-35, -7), (-20, -7), (0, -7), (20, -6), (30, -5), (45, -1),
                   (60, -1), (80, -7), (100, -20)])
_SIDE_DEPTH = _pchip([(-115, 45), (-90, 55), (-50, 72), (0, 80), (50, 80), (100, 75)])


def _grid():
    """(theta, y) of every vertex on the _NV x _NU grid, denser at eyes, nose and mouth."""
    theta = _warp(_NU, -_THETA_MAX, _THETA_MAX, lambda t: 1.0 + 1.2 * _gauss(t, 0.45))
    y = _warp(_NV, *_Y_RANGE, lambda t: 1.0 + 2.0 * _gauss(t - _MOUTH_Y, 5.0)
              + 1.3 * _gauss(t - _EYE[1], 8.0) + 0.6 * _gauss(t + 15.0, 9.0))
    theta, y = np.meshgrid(theta, y)
    # Stop the sides just under the jaw instead of trailing down the neck.
    bottom = _Y_RANGE[0] + 35.0 * _smoothstep(np.deg2rad(40.0), _THETA_MAX, np.abs(theta))
    top = _Y_RANGE[1]
    return theta, top - (top - y) * (top - bottom) / (top - _Y_RANGE[0])


def _base_head(theta, y):
    e = 2.0 / _SUPERQUADRIC
    s, c = np.sin(theta), np.cos(theta)
    x = _HALF_WIDTH(y) * np.sign(s) * np.abs(s) ** e
    z = _FRONT_Z(y) - _SIDE_DEPTH(y) * (1.0 - np.sign(c) * np.abs(c) ** e)
    return np.stack([x, y, z], axis=-1)


def _grid_normals(p):
    """Outward unit normals of a (_NV, _NU, 3) grid surface (u towards +x, v up)."""
    du = np.gradient(p, axis=1)
    dv = np.gradient(p, axis=0)
    n = np.cross(du, dv)
    return n / np.linalg.norm(n, axis=-1, keepdims=True)


def _nose(x, y):
    """Height (mm, along +z) of the nose over the face plane."""
    height = _pchip([(33, 0), (28, 2.5), (20, 6.5), (10, 11.5), (0, 17.5), (-6, 22.5),
                     (-10, 26), (-13, 27), (-16, 25.5), (-19, 20), (-22, 11), (-24, 4.5),
                     (-26, 1.2), (-28, 0)])
    half = _pchip([(33, 5), (20, 6), (5, 7.5), (-8, 8.5), (-14, 9), (-20, 7), (-26, 7)])
    yy = np.clip(y, -28, 33)
    h = height(yy) * _gauss(x, half(yy)) * (y > -28) * (y < 33)
    h = h + 2.5 * _gauss(x, 6.5) * _gauss(y + 11.0, 4.5)  # rounded tip lobule
    ax = np.abs(x)
    h = h + 8.0 * _gauss(ax - 13.0, 4.5) * _gauss(y + 17.0, 4.5)  # alar wings
    ring = np.hypot(ax - 13.5, y + 16.5)
    h = h - 1.5 * _gauss(ring - 7.0, 1.2) * (ax > 10.0)  # alar-facial groove
    return h


def _mouth_line(x):
    return _MOUTH_Y - 0.0015 * x ** 2


def _lips(x, y):
    ym = _mouth_line(x)
    across = np.exp(-(np.abs(x) / (_MOUTH_HALF_WIDTH - 4.0)) ** 4)
    bow = 0.8 * _gauss(np.abs(x) - 5.0, 3.0)  # cupid's bow peaks
    upper = (7.0 + bow) * across * _gauss(y - ym - 3.5 - 0.5 * bow, 3.0)
    lower = 7.5 * across * _gauss(y - ym + 5.0, 3.6)
    muzzle = 5.0 * _gauss(x, 22.0) * _gauss(y - ym - 2.0, 14.0)  # maxilla/teeth bulge
    corners = 2.0 * _gauss(np.abs(x) - _MOUTH_HALF_WIDTH - 1.0, 3.0) * _gauss(y - ym, 3.0)
    line = 4.0 * np.exp(-(np.abs(x) / _MOUTH_HALF_WIDTH) ** 6) * _gauss(y - ym, 1.0)
    philtrum = 1.0 * _gauss(x, 2.5) * _smoothstep(-30, -34, -y) * _smoothstep(-24, -28, y)
    return upper + lower + muzzle - line - philtrum - corners


def _face_relief(x, y):
    """Brow ridge, eye sockets, nose, lips and chin along +z."""
    ax = np.abs(x)
    brow = 4.0 * _gauss(y - 45.0 + 0.002 * x ** 2, 6.5) * _gauss(x, 38.0)
    glabella = 2.0 * _gauss(x, 9.0) * _gauss(y - 41.0, 7.0)
    socket = -7.0 * _gauss(ax - _EYE[0], 13.0) * _gauss(y - _EYE[1] + 2.0, 8.0)
    chin = 5.0 * _gauss(x, 13.0) * _gauss(y + 77.0, 8.0)
    return brow + glabella + socket + chin + _nose(x, y) + _lips(x, y)


def _side_relief(x, y, theta):
    """Cheekbones, cheeks, temples and jaw line along the head normal."""
    ax = np.abs(x)
    front = np.cos(theta) > 0.0
    malar = 6.0 * _gauss(ax - 46.0, 12.0) * _gauss(y - 12.0, 11.0) * front
    cheek = 4.0 * _gauss(ax - 36.0, 12.0) * _gauss(y + 22.0, 14.0) * front
    fold = ax - 17.0 - 0.4 * (-14.0 - y)  # from the ala down to the mouth corner
    nasolabial = -1.5 * _gauss(fold, 2.5) * (y < -12.0) * (y > -50.0) * front
    temple = -4.0 * _gauss(ax - 60.0, 10.0) * _gauss(y - 48.0, 14.0)
    deg = np.rad2deg(np.abs(theta))
    jaw_y = np.interp(deg, [0, 30, 60, 85, 100, 115], [-86, -82, -72, -60, -45, -25])
    jaw = -16.0 * _smoothstep(0.0, 14.0, jaw_y - y)
    return malar + cheek + nasolabial + temple + jaw


def _lid_margins(ex):
    """Heights y of the upper and lower lid margins at ex = |x| - pupil x."""
    t = np.clip(ex / _EYE_HALF_LENGTH, -1.0, 1.0)
    axis = _EYE[1] + 0.06 * ex  # lateral canthus slightly higher
    upper = 5.8 * (1.0 - t ** 2) ** 0.8 * (1.0 - 0.15 * t)  # peak a little medial
    lower = -4.0 * (1.0 - t ** 2) ** 0.9
    return axis + upper, axis + lower


def _eye_opening(x, y):
    """Signed distance-like value (mm) to the lens-shaped eye opening (< 0 inside)."""
    ex = np.abs(x) - _EYE[0]
    upper, lower = _lid_margins(ex)
    return np.maximum.reduce([y - upper, lower - y, np.abs(ex) - _EYE_HALF_LENGTH])


def _ellipsoid_z(x, y, inflate):
    ex = np.abs(x) - _EYE[0]
    ey = y - _EYE[1]
    ax, ay, az = (axis + inflate for axis in _EYEBALL_AXES)
    r = 1.0 - (ex / ax) ** 2 - (ey / ay) ** 2
    return _CORNEA_Z - _EYEBALL_AXES[2] + az * np.sqrt(np.clip(r, 0.0, None))


def _eyes(x, y, z):
    """Replaces z around each orbit by eyeball, cornea and lids; returns (z, eyeball weight)."""
    d = _eye_opening(x, y)
    lid = 1.8 * _smoothstep(-0.3, 1.2, d)  # lid margin thickness over the globe
    lid_z = _ellipsoid_z(x, y, lid)
    ex, ey = np.abs(x) - _EYE[0], y - _EYE[1]
    cornea = 1.3 * _gauss(np.hypot(ex, ey), 3.2)
    above = y > _EYE[1]
    crease = -0.7 * _gauss(d - 4.5, 0.9) * above
    lid_z = lid_z + cornea * (d < 0.5) + crease
    reach = np.where(above, 13.0, 9.0)
    w = 1.0 - _smoothstep(3.0, reach, d)
    w = w * (np.abs(ex) < 26.0)
    return (1.0 - w) * z + w * lid_z, _smoothstep(0.3, -0.5, d)


def _mean_grid():
    """Mean-face vertex grid (_NV, _NU, 3) and per-vertex eyeball weight."""
    theta, y = _grid()
    base = _base_head(theta, y)
    normal = _grid_normals(base)
    x = base[..., 0]
    front = _smoothstep(0.2, 0.6, np.cos(theta))
    p = base + _side_relief(x, y, theta)[..., None] * normal
    p[..., 2] += front * _face_relief(x, y)
    z, eyeball = _eyes(x, y, p[..., 2])
    p[..., 2] = front * z + (1.0 - front) * p[..., 2]
    return p, eyeball * front


def _grid_triangles(rows: int = _NV, columns: int = _NU):
    """Two counter-clockwise (seen from outside) triangles per quad of a rows x columns
    vertex grid, with the diagonals mirrored across the midline so the mesh itself is
    symmetric."""
    idx = np.arange(rows * columns).reshape(rows, columns)
    half = (columns - 1) // 2
    a, b = idx[:-1, :-1], idx[:-1, 1:]
    c, d = idx[1:, :-1], idx[1:, 1:]
    right = [np.stack(t, -1)[:, :half] for t in ((a, b, d), (a, d, c))]
    left = [np.stack(t, -1)[:, half:] for t in ((a, b, c), (b, d, c))]
    return np.concatenate([t.reshape(-1, 3) for t in right + left])


def _vertex_normals(v, tri):
    fn = np.cross(v[tri[:, 1]] - v[tri[:, 0]], v[tri[:, 2]] - v[tri[:, 0]])
    n = np.zeros_like(v)
    for corner in range(3):
        np.add.at(n, tri[:, corner], fn)
    return n / np.linalg.norm(n, axis=1, keepdims=True)


def _mirror_index():
    """Vertex index of each vertex's mirror partner (the grid is symmetric in theta)."""
    return np.arange(_NV * _NU).reshape(_NV, _NU)[:, ::-1].reshape(-1)


_MIRROR = np.array([-1.0, 1.0, 1.0])


class _Face:
    """Per-vertex quantities of the mean face that every component is built from."""

    def __init__(self):
        grid, eyeball = _mean_grid()
        theta, _ = _grid()
        self.v = grid.reshape(-1, 3)
        self.theta = theta.reshape(-1)
        self.x, self.y, self.z = self.v.T
        self.eyeball = eyeball.reshape(-1)
        self.triangles = _grid_triangles()
        self.normals = _vertex_normals(self.v, self.triangles)
        self.mirror = _mirror_index()
        self.front = _smoothstep(0.3, 0.6, np.cos(self.theta))
        deg = np.rad2deg(np.abs(self.theta))
        jaw_y = np.interp(deg, [0, 30, 60, 85, 100, 115], [-86, -82, -72, -60, -45, -25])
        self.above_jaw = _smoothstep(8.0, 0.0, jaw_y - self.y)
        ym = _mouth_line(self.x)
        across = np.exp(-(np.abs(self.x) / _MOUTH_HALF_WIDTH) ** 6)
        self.mouth_line = across * _gauss(self.y - ym, 1.2)
        ellipse = np.hypot(self.x / 66.0, (self.y - 5.0) / 94.0)
        self.face_region = _smoothstep(1.0, 0.8, ellipse) * self.front * self.above_jaw
        self.skin = 1.0 - self.eyeball
        # The model's face_mask: skin of the face region, not the eyeballs or mouth slit.
        self.mask = self.face_region * self.skin * (1.0 - self.mouth_line)

    def mirrored(self, field):
        """The mirror image of a (V, 3) field: M f(mirror(p))."""
        return field[self.mirror] * _MIRROR


# ---------------------------------------------------------------------------
# Identity: a Gaussian-process morphable model.

# The identity covariance is a sum of independent Gaussian processes (Luethi et al.
# 2017): one over the whole head for the proportions of the face, and one per
# anatomical feature, weighted by a smooth bump around it, so that the strongest
# components are the shape changes that tell people apart (face width, nose,
# chin, cheekbones, brow ridge, jaw) rather than a smooth wobble of everything.
# Per term: (length mm, std mm) scales, each length half the previous one so every
# kernel is a power of the widest; per-axis std factors (x, y, z); eigenfields per
# axis. Amplitudes are set so that a random identity moves the face-mask vertices
# by ~4 mm RMS after removing its similarity part, like ICT-FaceKit's identity
# space (4.1 mm; benchmarks/identity_spectrum.py).
_ID_TERMS = {
    "head": (((80.0, 2.3), (40.0, 1.4), (20.0, 0.5), (10.0, 0.2)), (1.0, 0.9, 1.15), 60),
    "nose": (((20.0, 6.0), (10.0, 1.2)), (0.9, 0.7, 1.3), 15),
    "chin": (((40.0, 6.0), (20.0, 1.2)), (0.6, 1.0, 1.2), 12),
    "cheekbones": (((40.0, 5.5), (20.0, 1.2)), (0.9, 0.6, 1.2), 12),
    "brow_ridge": (((40.0, 4.5), (20.0, 1.0)), (0.4, 0.7, 1.2), 12),
    "jaw": (((40.0, 6.5), (20.0, 1.5)), (1.2, 0.8, 0.8), 12),
    "lips": (((20.0, 3.0), (10.0, 0.8)), (0.7, 0.8, 1.0), 12),
}
_ID_COMPONENTS = 100
_ID_RIM = 0.15  # identity variation at the rim and behind the jaw, relative to the face


def _identity_weights(face):
    """{term: (V,) amplitude weight} of the identity GP terms (all mirror symmetric)."""
    ax, y = np.abs(face.x), face.y
    front = _smoothstep(0.0, 0.5, np.cos(face.theta))
    deg = np.rad2deg(np.abs(face.theta))
    return {
        # Full variation on the face, about a third of it at the rim and behind the jaw.
        "head": 0.35 + 0.65 * _smoothstep(0.0, 0.8, face.face_region + 0.3 * face.front),
        "nose": _gauss(face.x, 11.0) * _gauss(y + 2.0, 20.0) * front,
        "chin": _gauss(face.x, 22.0) * _gauss(y + 78.0, 13.0) * front,
        "cheekbones": _gauss(ax - 46.0, 13.0) * _gauss(y - 8.0, 13.0) * front,
        "brow_ridge": _gauss(face.x, 34.0) * _gauss(y - 45.0, 9.0) * front,
        "jaw": _gauss(deg - 68.0, 16.0) * _gauss(y + 64.0, 18.0),
        "lips": _gauss(face.x, 20.0) * _gauss(y - _MOUTH_Y, 9.0) * front,
    }


def _identity_fade(face):
    """1 over the face region, falling to _ID_RIM at the rim of the mesh."""
    return _ID_RIM + (1.0 - _ID_RIM) * _smoothstep(0.0, 0.5, face.face_region)


def _rbf(a, b, scales):
    """Sum of Gaussian kernels whose length scales halve ((length, std) pairs).

    exp(-d2 / (2 (l/2)^2)) is the 4th power of exp(-d2 / (2 l^2)), so one exp and
    repeated squaring evaluate every scale.
    """
    d2 = np.sum(a * a, 1)[:, None] + np.sum(b * b, 1)[None, :] - 2.0 * a @ b.T
    e = np.exp(-np.maximum(d2, 0.0) / (2.0 * scales[0][0] ** 2))
    total = np.zeros_like(e)
    for _, amplitude in scales:
        total += amplitude * amplitude * e
        e = np.square(np.square(e))
    return total


def _symmetric_eigenfields(face, weight, scales, rank):
    """Leading eigenfunctions of the mirror-symmetrized weighted RBF kernel.

    With M = diag(-1, 1, 1), k_sym(p, q) = k(p, q) + k(p, mirror(q)) M splits into a
    scalar kernel k - k o mirror for x displacements and k + k o mirror for y and z,
    so two small eigenproblems on a subsample replace one 3N x 3N problem. Returns
    {sign: (eigenvalues (rank,), Nystroem-extended eigenfunctions (V, rank))}.
    """
    sub = np.arange(_NV * _NU).reshape(_NV, _NU)[::3, ::3].reshape(-1)
    sub = sub[weight[sub] > 1e-3]  # zero-weight points add only null directions
    pts, w = face.v[sub], weight[sub]
    mirrored = pts * _MIRROR
    k_direct = _rbf(pts, pts, scales)
    k_mirror = _rbf(pts, mirrored, scales)
    v_direct = _rbf(face.v, pts, scales)
    v_mirror = v_direct[face.mirror]  # k(p, mirror(q)) = k(mirror(p), q)
    out = {}
    for sign in (-1.0, 1.0):
        k = w[:, None] * (k_direct + sign * k_mirror) * w[None, :]
        lam, u = eigh(k, subset_by_index=[len(sub) - rank, len(sub) - 1], driver="evx")
        lam, u = lam[::-1], u[:, ::-1]
        # Nystroem: phi(p) = k(p, X) u / lambda, equal to u on the subsample.
        ext = weight[:, None] * ((v_direct + sign * v_mirror) * w[None, :]) @ (u / lam)
        out[sign] = (lam, ext)
    return out


def _orthonormal_components(fields, count, x):
    """SVD of component fields (n, V, 3) at code 1: orthonormal basis, std decreasing.

    `x` (V,): the vertices' x coordinates, for a sign convention that does not hinge on
    rounding (below)."""
    flat = fields.reshape(fields.shape[0], -1)
    # Eigenvectors of the small Gram matrix give the left singular vectors cheaply.
    s2, u = np.linalg.eigh(flat @ flat.T)
    s2, u = s2[::-1][:count], u[:, ::-1][:, :count]
    s = np.sqrt(s2)
    basis = ((u.T @ flat) / s[:, None]).reshape(count, -1, 3)
    # Fix each direction's sign so the largest entry is positive (determinism). A
    # left/right symmetric field has equal and opposite x displacements at mirrored
    # vertices, so the largest entry is a near-tie of opposite signs that rounding
    # decides; flipping the x entries of the subject's right half (-x) makes mirrored
    # entries equal, and the sign depends on the field alone. The builtin mean's
    # identity code (builtin_mean.py) relies on these signs.
    canonical = basis * np.stack([np.sign(x), np.ones_like(x), np.ones_like(x)], -1)
    flat = canonical.reshape(count, -1)
    signs = np.sign(flat[np.arange(count), np.argmax(np.abs(flat), axis=1)])
    return basis * signs[:, None, None], s[:count]


def _identity(face):
    """Orthonormal identity basis (100, V, 3) and std: the leading eigenfields of every
    term per displacement axis (x odd, y and z even in x, so every identity is
    left/right symmetric), their similarity part removed, re-diagonalized."""
    weights = _identity_weights(face)
    fields = []
    for term, (scales, axis_std, rank) in _ID_TERMS.items():
        eig = _symmetric_eigenfields(face, weights[term], scales, rank)
        for axis, sign in ((0, -1.0), (1, 1.0), (2, 1.0)):
            lam, ext = eig[sign]
            f = np.zeros((lam.size, face.v.shape[0], 3))
            f[:, :, axis] = (ext * (axis_std[axis] * np.sqrt(lam))).T
            fields.append(f)
    # Rigid motion and uniform scale of the face are pose and distance to a camera,
    # not identity: keep only what is left after the best similarity transform of
    # the face mask. Off the face that leaves the transform's lever arm (a degree
    # of pitch moves the back of the head by millimetres), so the remainder fades
    # out there, and a second, now small, removal makes the fields exactly
    # similarity-free over the mask again.
    fields = remove_similarity(np.concatenate(fields), face.v, face.mask)
    fields *= _identity_fade(face)[None, :, None]
    fields = remove_similarity(fields, face.v, face.mask)
    return _orthonormal_components(fields, _ID_COMPONENTS, face.x)


# ---------------------------------------------------------------------------
# Expressions: localized displacement fields (mm at code 1), ARKit-like names.


def _blob(face, cx, cy, sx, sy=None):
    """Smooth bump weight centred at (cx, cy) in the frontal plane, on the front only."""
    sy = sx if sy is None else sy
    return _gauss(face.x - cx, sx) * _gauss(face.y - cy, sy) * face.front


def _lower_face(face):
    """1 on the jaw-driven lower face (lower lip and below), 0 above the mouth line."""
    ym = _mouth_line(face.x)
    soft = 1.2 + 18.0 * _smoothstep(8.0, 45.0, np.abs(face.x))  # sharp at the lips only
    w = _smoothstep(ym + soft, ym - soft, face.y)
    return w * _smoothstep(115.0, 70.0, np.rad2deg(np.abs(face.theta)))


def _lid_slide(face, side, lift):
    """Upper-lid motion of eye `side` (+1 left): `lift` mm up, or None to shut the eye.

    Shutting slides the lid down over the globe to the lower lid and squeezes the
    visible eyeball into the lid line, so no folded eyeball triangles show through.
    """
    x = face.x * side
    ex = x - _EYE[0]
    upper, lower = _lid_margins(ex)
    near = np.abs(ex) < _EYE_HALF_LENGTH + 4.0
    eyeball = face.eyeball * near
    on_lid = _smoothstep(-1.5, -0.3, face.y - upper) * _smoothstep(8.0, 0.0, face.y - upper)
    on_lid = on_lid * near * (1.0 - face.eyeball)
    if lift is None:
        shut = lower - 0.1 * (upper - lower)  # where lid margin and eyeball end up
        dy = (shut - upper) * on_lid + (shut - face.y) * eyeball
    else:
        dy = lift * on_lid
    inflate = 1.8 * (1.0 - face.eyeball)
    dz = _ellipsoid_z(x, face.y + dy, inflate) - _ellipsoid_z(x, face.y, inflate)
    if lift is None:
        dz = dz - 1.5 * eyeball  # tuck the squeezed eyeball behind the shut lids
    return np.stack([np.zeros_like(dy), dy, dz], -1) * face.front[:, None]


def _jaw_rotation(face, degrees):
    """Rotation of the lower face about the jaw hinge axis (x axis through the TMJ)."""
    a = np.deg2rad(degrees)
    py, pz = face.y - 2.0, face.z + 80.0
    d = np.stack([np.zeros_like(py), py * np.cos(a) - pz * np.sin(a) - py,
                  py * np.sin(a) + pz * np.cos(a) - pz], -1)
    return d * _lower_face(face)[:, None]


def _vec(w, dx=0.0, dy=0.0, dz=0.0):
    return w[:, None] * np.array([dx, dy, dz])


def _left_expressions(face):
    """Fields of the subject's left (+x) side; right ones are their mirror images."""
    corner = _blob(face, _MOUTH_HALF_WIDTH, _MOUTH_Y - 1.0, 9.0)
    upper_lip = _blob(face, 11.0, _MOUTH_Y + 4.0, 8.0, 4.0)
    lower_lip = _blob(face, 11.0, _MOUTH_Y - 6.0, 8.0, 5.0)
    cheek = _blob(face, 40.0, -12.0, 13.0)
    lower_cheek = _blob(face, 40.0, -30.0, 14.0)
    under_eye = _blob(face, 33.0, 18.0, 11.0, 5.0)
    brow_inner = _blob(face, 16.0, 45.0, 9.0, 10.0)
    brow_outer = _blob(face, 45.0, 44.0, 10.0, 10.0)
    brow = _blob(face, 28.0, 44.0, 16.0, 9.0)
    nose_side = _blob(face, 12.0, -8.0, 7.0, 10.0)
    n = face.normals
    return {
        "mouthSmile": _vec(corner, 4.0, 5.0, -2.0) + _vec(cheek, 0.5, 2.5, 1.5),
        "mouthFrown": _vec(corner, 1.0, -4.5, 0.0),
        "mouthStretch": _vec(corner, 4.5, -1.5, -1.5),
        "mouthDimple": _vec(corner, 1.5, 0.0, -3.0),
        "mouthPress": _vec(upper_lip + lower_lip, 0.0, 0.0, -2.0) + _vec(upper_lip, 0, -0.8)
        + _vec(lower_lip, 0, 0.8),
        "mouthUpperUp": _vec(upper_lip, 0.0, 3.5, 1.0),
        "mouthLowerDown": _vec(lower_lip, 0.0, -3.5, 0.5),
        "cheekPuff": lower_cheek[:, None] * 6.0 * n,
        "cheekSquint": _vec(under_eye + 0.5 * cheek, 0.0, 2.0, 0.8),
        "noseSneer": _vec(nose_side, 0.0, 3.0, 0.5) + _vec(brow_inner, -0.5, -1.5),
        "browInnerUp": _vec(brow_inner, 0.0, 5.0, 0.5),
        "browOuterUp": _vec(brow_outer, 0.0, 4.5, 0.0),
        "browDown": _vec(brow, -2.0, -4.0, 1.0),
        "eyeBlink": _lid_slide(face, 1.0, None),
        "eyeWide": _lid_slide(face, 1.0, 2.0) + _vec(brow, 0.0, 1.0),
        "eyeSquint": -0.25 * _lid_slide(face, 1.0, None) + _vec(under_eye, 0.0, 1.5, 0.5),
    }


def _central_expressions(face):
    lips = _blob(face, 0.0, _MOUTH_Y, 16.0, 7.0)
    upper = lips * (face.y > _mouth_line(face.x))
    lower = lips - upper
    mouth = _blob(face, 0.0, _MOUTH_Y, 22.0, 12.0)
    chin = _blob(face, 0.0, -72.0, 18.0, 12.0)
    lower_face = _lower_face(face)
    return {
        "jawOpen": _jaw_rotation(face, 7.0),
        "jawForward": _vec(lower_face, 0.0, 0.0, 4.0),
        "jawLeft": _vec(lower_face, 5.0),
        "mouthLeft": _vec(mouth, 4.5),
        "mouthPucker": _vec(lips, 0.0, 0.0, 5.0) - _vec(lips * face.x / 4.0, 1.0),
        "mouthFunnel": _vec(lips, 0.0, 0.0, 4.0) + _vec(upper, 0.0, 1.5) + _vec(lower, 0, -1.5),
        "mouthRollUpper": _vec(upper, 0.0, -1.2, -3.5),
        "mouthRollLower": _vec(lower, 0.0, 1.2, -3.5),
        "mouthShrugUpper": _vec(upper, 0.0, 2.0, 1.5),
        "mouthShrugLower": _vec(lower, 0.0, 2.0, 1.0) + _vec(chin, 0.0, 2.5, 1.0),
    }


def _expressions(face):
    """(names, unit-norm basis (K, V, 3), std (K,)) of the expression space."""
    names, fields = [], []
    for name, field in _central_expressions(face).items():
        names.append(name)
        fields.append(field)
        if name in ("jawLeft", "mouthLeft"):  # their mirror images move right
            names.append(name.replace("Left", "Right"))
            fields.append(face.mirrored(field))
    for name, field in _left_expressions(face).items():
        names += [f"{name}_L", f"{name}_R"]
        fields += [field, face.mirrored(field)]
    fields = remove_similarity(np.stack(fields), face.v, face.mask)
    std = np.linalg.norm(fields.reshape(len(names), -1), axis=1)
    return tuple(names), fields / std[:, None, None], std


# ---------------------------------------------------------------------------
# Albedo (linear RGB).

_SKIN = np.array([0.45, 0.30, 0.22])
_LIPS = np.array([0.40, 0.15, 0.12])
_BROW_HAIR = np.array([0.10, 0.065, 0.045])
_SCLERA = np.array([0.70, 0.66, 0.62])
_IRIS = np.array([0.10, 0.06, 0.035])
_PUPIL = np.array([0.01, 0.01, 0.01])
_MOUTH_INSIDE = np.array([0.06, 0.02, 0.02])
_NOSTRIL = np.array([0.12, 0.06, 0.045])


class _Regions:
    """Soft per-vertex weights of the regions that get their own colour."""

    def __init__(self, face):
        x, y, ax = face.x, face.y, np.abs(face.x)
        skin = face.skin * face.front
        ym = _mouth_line(x)
        across = np.exp(-(ax / (_MOUTH_HALF_WIDTH - 1.0)) ** 4)
        upper_border = ym + 6.5 + 1.0 * _gauss(ax - 5.0, 3.0) - 1.0 * _gauss(x, 2.0)
        self.lips = across * _smoothstep(upper_border + 0.8, upper_border - 0.8, y) \
            * _smoothstep(ym - 11.0, ym - 9.0, y) * skin
        t = np.clip((ax - 12.0) / 44.0, 0.0, 1.0)
        brow_y = 43.0 + 4.5 * np.sin(np.pi * t ** 0.8) - 2.0 * t
        self.brow = _smoothstep(5.0 - 2.0 * t, 1.5 - 0.8 * t, np.abs(y - brow_y)) \
            * _smoothstep(10.0, 15.0, ax) * _smoothstep(58.0, 52.0, ax) * skin
        self.eye_region = _gauss(ax - _EYE[0], 13.0) * _gauss(y - _EYE[1], 8.0) * skin
        self.cheeks = _gauss(ax - 40.0, 12.0) * _gauss(y + 5.0, 12.0) * skin
        self.beard = (_smoothstep(-14.0, -24.0, y) * _smoothstep(70.0, 50.0, ax)
                      * face.above_jaw * skin * (1.0 - self.lips))
        self.nostrils = _gauss(ax - 6.5, 2.5) * _gauss(y + 21.5, 1.6) * face.front
        r = np.hypot(ax - _EYE[0], y - _EYE[1])
        self.iris = face.eyeball * _smoothstep(6.0, 5.3, r)
        self.pupil = face.eyeball * _smoothstep(2.8, 2.2, r)
        self.skin = face.skin


def _albedo_mean(face, reg):
    rgb = np.tile(_SKIN, (face.v.shape[0], 1))
    rgb *= 1.0 - reg.eye_region[:, None] * np.array([0.12, 0.16, 0.14])
    rgb += reg.cheeks[:, None] * np.array([0.03, -0.01, -0.01])
    for weight, colour in ((reg.lips, _LIPS), (reg.brow * 0.75, _BROW_HAIR),
                           (reg.nostrils * 0.8, _NOSTRIL), (face.eyeball, _SCLERA),
                           (reg.iris, _IRIS), (reg.pupil, _PUPIL),
                           (face.mouth_line, _MOUTH_INSIDE)):
        rgb += weight[:, None] * (colour - rgb)
    return rgb


_ALBEDO_SCALES = ((40.0, 0.030), (20.0, 0.020), (10.0, 0.010))
_ALBEDO_COMPONENTS = 54  # the strongest of 9 interpretable + 180 GP fields


def _albedo_space(face, reg, mean):
    """Interpretable skin-tone and regional components, then GP-smooth colour noise."""
    skin = reg.skin * (1.0 - face.mouth_line)
    w = skin[:, None]
    fields = [
        # Melanin: relative darkening, strongest in blue, so +-2 std spans very light to
        # very dark skin while staying in [0, 1].
        -w * mean * np.array([0.33, 0.37, 0.41]),
        w * np.array([0.030, -0.008, -0.004]),  # hemoglobin / redness
        w * np.array([0.006, 0.010, -0.012]),  # yellow / olive
        reg.lips[:, None] * np.array([0.06, -0.03, -0.02]),
        reg.brow[:, None] * np.array([-0.10, -0.07, -0.05]),
        reg.eye_region[:, None] * np.array([-0.045, -0.04, -0.03]),
        reg.cheeks[:, None] * np.array([0.05, -0.012, -0.012]),
        reg.beard[:, None] * np.array([-0.08, -0.06, -0.04]),
        reg.iris[:, None] * np.array([0.12, 0.10, 0.05]),  # brown to hazel eyes
    ]
    # Colour noise is mostly luminance: eigenvectors of a correlated RGB covariance.
    colour_cov = np.array([[1.0, 0.8, 0.7], [0.8, 0.8, 0.65], [0.7, 0.65, 0.7]])
    c_val, c_vec = np.linalg.eigh(colour_cov)
    eig = _symmetric_eigenfields(face, skin, _ALBEDO_SCALES, 30)
    for sign in (-1.0, 1.0):
        lam, ext = eig[sign]
        # Even and odd eigenfunctions of (k +- k o mirror) / 2 together diagonalize k.
        for c in range(3):
            amp = np.sqrt(0.5 * lam * c_val[c])
            fields += list((ext * amp).T[:, :, None] * c_vec[:, c])
    fields = np.stack(fields)
    std = np.linalg.norm(fields.reshape(len(fields), -1), axis=1)
    keep = np.argsort(-std)[:_ALBEDO_COMPONENTS]
    return fields[keep] / std[keep, None, None], std[keep]


# ---------------------------------------------------------------------------
# Landmarks, mask and assembly.


def _contour_targets():
    """(theta, y) of the 17 jaw-contour landmarks, right ear (-x) to left ear."""
    y_up = np.array([22.0, 2.0, -18.0, -36.0])  # cheek contour in front of the ear
    jaw_deg = np.array([78.0, 66.0, 50.0, 28.0])  # then along the jaw line to the chin
    jaw_y = np.interp(jaw_deg, [0, 30, 60, 85], [-86, -82, -72, -60]) + 5.0
    theta = np.deg2rad(np.concatenate([np.full(4, 88.0), jaw_deg, [0.0]]))
    y = np.concatenate([y_up, jaw_y, [-84.0]])
    side = np.concatenate([-theta[:8], theta[8:], theta[:8][::-1]])
    return side, np.concatenate([y, y[:8][::-1]])


def _frontal_targets():
    """(x, y) of landmarks 17-67 in the frontal plane."""
    brow_x = np.array([52.0, 43.0, 34.0, 25.0, 15.0])
    brow_y = np.array([44.0, 47.5, 48.5, 47.5, 45.0])
    nose = [(0, 30), (0, 16), (0, 2), (0, -12),
            (-11, -19), (-5.5, -21.5), (0, -23.5), (5.5, -21.5), (11, -19)]
    # Right eye from the outer corner over the upper lid, then the lower lid back.
    eye_ex = np.array([_EYE_HALF_LENGTH, 5.0, -5.0, -_EYE_HALF_LENGTH, -5.0, 5.0])
    upper, lower = _lid_margins(eye_ex)
    corner_y = _EYE[1] + 0.06 * eye_ex
    eye_y = np.array([corner_y[0], upper[1], upper[2], corner_y[3], lower[4], lower[5]])
    right_eye = np.stack([-(_EYE[0] + eye_ex), eye_y], 1)
    left_eye = right_eye[[3, 2, 1, 0, 5, 4]] * _MIRROR[:2]
    ym = _mouth_line
    c = _MOUTH_HALF_WIDTH
    outer = [(-c, ym(c)), (-15, ym(15) + 6.5), (-5, ym(5) + 7.8), (0, ym(0) + 6.0),
             (5, ym(5) + 7.8), (15, ym(15) + 6.5), (c, ym(c)), (15, ym(15) - 8.5),
             (6, ym(6) - 10.5), (0, ym(0) - 11.0), (-6, ym(6) - 10.5), (-15, ym(15) - 8.5)]
    inner = [(-c + 3, ym(c - 3)), (-8, ym(8) + 1.0), (0, ym(0) + 1.0), (8, ym(8) + 1.0),
             (c - 3, ym(c - 3)), (8, ym(8) - 1.0), (0, ym(0) - 1.0), (-8, ym(8) - 1.0)]
    return np.concatenate([
        np.stack([-brow_x, brow_y], 1), np.stack([brow_x[::-1], brow_y[::-1]], 1),
        np.array(nose, float), right_eye, left_eye, np.array(outer, float),
        np.array(inner, float)])


def _landmarks(face):
    theta, y = _contour_targets()
    grid_ty = np.stack([face.theta, face.y], 1) * np.array([60.0, 1.0])  # theta as ~mm
    contour = [np.argmin(np.sum((grid_ty - np.array([t * 60.0, yy])) ** 2, 1))
               for t, yy in zip(theta, y)]
    frontal = np.flatnonzero(face.front > 0.9)
    xy = face.v[frontal, :2]
    inner = [frontal[np.argmin(np.sum((xy - p) ** 2, 1))] for p in _frontal_targets()]
    return np.array(contour + inner)


def build(registered_mean: bool = True) -> FaceModel:
    """Generates the builtin face model (deterministic, a few seconds on a CPU).

    registered_mean: move the procedural mean face by the identity code
    `builtin_mean.MEAN_IDENTITY`, which registers it to ICT-FaceKit's population of
    faces (False: the procedural mean, from which that code is derived).
    """
    face = _Face()
    regions = _Regions(face)
    id_basis, id_std = _identity(face)
    mean_shape = face.v
    if registered_mean:
        mean_shape = face.v + np.einsum("k,kvd->vd", np.asarray(MEAN_IDENTITY), id_basis)
    names, ex_basis, ex_std = _expressions(face)
    mean_albedo = _albedo_mean(face, regions)
    al_basis, al_std = _albedo_space(face, regions, mean_albedo)
    rows, cols = np.divmod(np.arange(_NV * _NU), _NU)
    uv = np.stack([cols / (_NU - 1), rows / (_NV - 1)], 1)
    return from_numpy(
        mean_shape=mean_shape, identity_basis=id_basis, identity_std=id_std,
        expression_basis=ex_basis, expression_std=ex_std,
        albedo_mean=mean_albedo, albedo_basis=al_basis, albedo_std=al_std,
        triangles=face.triangles, landmark_indices=_landmarks(face), face_mask=face.mask,
        uv_coords=uv, uv_triangles=face.triangles, name="builtin",
        license="Apache-2.0 (generated by mofa; mean registered to ICT-FaceKit's, MIT)",
        units="mm", expression_names=names)


def cache_file() -> str:
    from mofa.facemodel import cache_dir
    return os.path.join(cache_dir(), f"builtin-{VERSION}.npz")


def load() -> FaceModel:
    """The builtin model from the cache, building and caching it on first use."""
    path = cache_file()
    if not os.path.exists(path):
        save_npz(build(), path)
    return load_npz(path)
