"""Slow, obviously-correct references the fast code is tested against."""

import numpy as np


def rasterize_brute_force(screen_vertices, triangles, height, width, cull_backfaces=True):
    """Per-pixel loop-free test of every triangle: (H, W) triangle ids, -1 background."""
    sv = np.asarray(screen_vertices, np.float64)
    tri = np.asarray(triangles)
    cx, cy = np.meshgrid(np.arange(width) + 0.5, np.arange(height) + 0.5)
    best_depth = np.full((height, width), np.inf)
    best_id = np.full((height, width), -1)
    for t, (i, j, k) in enumerate(tri):
        (x0, y0, z0), (x1, y1, z1), (x2, y2, z2) = sv[i], sv[j], sv[k]
        area = (x1 - x0) * (y2 - y0) - (y1 - y0) * (x2 - x0)
        if min(z0, z1, z2) <= 1e-3 or (area >= 0 if cull_backfaces else area == 0):
            continue
        e0 = (x2 - x1) * (cy - y1) - (y2 - y1) * (cx - x1)
        e1 = (x0 - x2) * (cy - y2) - (y0 - y2) * (cx - x2)
        e2 = (x1 - x0) * (cy - y0) - (y1 - y0) * (cx - x0)
        s = np.sign(area)
        inside = (e0 * s >= 0) & (e1 * s >= 0) & (e2 * s >= 0)
        depth = area / (e0 / z0 + e1 / z1 + e2 / z2 + 1e-300)
        closer = inside & (depth < best_depth)
        best_depth[closer] = depth[closer]
        best_id[closer] = t
    return best_id, np.where(np.isfinite(best_depth), best_depth, 0.0)
