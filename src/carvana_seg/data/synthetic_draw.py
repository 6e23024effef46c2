"""Drawing for the synthetic Carvana data: procedurally built cars photographed on a studio turntable.

A car is a few convex solids in its own frame (x forward, y left, z up, metres, floor at z=0): a chamfered
body prism, a cabin frustum, four wheel cylinders and, for one outlier kind, two open doors. A view turns the
car on the turntable, projects it with a pinhole camera and paints the faces that look at the camera (back-face
culling is exact for a convex solid, so a solid's visible faces never overlap). The mask is filled from the
very same polygons, so it is exactly the car's pixels (body, cabin, windows, wheels, doors) and never the
floor shadow. Everything is vectorised OpenCV drawing: no per-pixel Python.
"""

from __future__ import annotations

import cv2
import numpy as np

REF_W, REF_H = 1918, 1280
PX_PER_M = 330.0  # image scale at the turntable centre, at the reference size
CAM_DIST, CAM_Z, LOOK_Z = 10.0, 1.9, 0.75  # camera distance and height, height of the aim point (m)
LIGHT = np.array([-0.35, -0.55, 1.0]) / np.linalg.norm([-0.35, -0.55, 1.0])  # studio key light, world frame
SHIFT = 3  # sub-pixel bits for cv2.fillPoly
OUTLIER_KINDS = ("van", "tiny", "open_doors")
LIGHT_PAINTS = [(236, 236, 234), (206, 208, 211), (218, 217, 212), (228, 226, 220)]  # white, silver, greys
PAINTS = [(22, 22, 24), (38, 52, 96), (150, 22, 28), (70, 72, 76), (30, 90, 160), (28, 70, 45),
          (110, 78, 50), (180, 120, 20), (95, 30, 40), (105, 110, 118)]
U = np.linspace(0.0, 2 * np.pi, 28, endpoint=False)


def sample_car(rng: np.random.Generator, kind: str = "normal") -> dict:
    """Random car dimensions and colours; ``kind`` is ``normal`` or one of OUTLIER_KINDS."""
    style = ("sedan", "hatch", "suv")[int(rng.choice(3, p=[0.45, 0.3, 0.25]))]
    suv = style == "suv"
    L, W = rng.uniform(4.1, 4.9), rng.uniform(1.72, 1.88)
    clear = rng.uniform(0.2, 0.26) if suv else rng.uniform(0.13, 0.19)
    belt = clear + rng.uniform(0.62, 0.74) + (0.08 if suv else 0.0)
    roof = belt + rng.uniform(0.46, 0.56)
    r = rng.uniform(0.35, 0.39) if suv else rng.uniform(0.30, 0.35)
    f_hood, f_shield, f_rear = rng.uniform(0.26, 0.31), rng.uniform(0.13, 0.17), rng.uniform(0.13, 0.18)
    f_back = rng.uniform(*{"sedan": (0.11, 0.15), "hatch": (0.05, 0.08), "suv": (0.02, 0.04)}[style])  # rear glass run
    if kind == "van":  # tall box: much higher roof and belt, cabin over the whole length
        style, L, W, clear, r = "van", rng.uniform(4.9, 5.3), rng.uniform(1.95, 2.02), 0.2, 0.36
        belt, roof = clear + rng.uniform(0.82, 0.9), rng.uniform(2.2, 2.35)
        f_hood, f_shield, f_back = 0.8 / L, 0.45 / L, 0.01
    light = rng.random() < 0.25
    palette = LIGHT_PAINTS if light else PAINTS
    paint = np.clip(np.array(palette[int(rng.integers(len(palette)))]) + rng.uniform(-6, 6, 3), 0, 255)
    xf = L / 2 - L * f_hood
    xr = -L / 2 + (L * f_rear if style == "sedan" else 0.06)
    glass = rng.uniform(35, 80)
    return dict(
        kind=kind, style=style, L=L, W=W, clear=clear, belt=belt, roof=roof, r=r, xf=xf, xft=xf - L * f_shield,
        xr=xr, xrt=xr + L * f_back, axles=(L / 2 - rng.uniform(0.8, 0.95), -L / 2 + rng.uniform(0.8, 1.0)),
        paint=paint, ambient=0.8 if light else 0.5, glass=np.array([glass, glass + 5, glass + 12]),
        rim=rng.uniform(140, 205), light=light,
        scale=1 / 3 if kind == "tiny" else 1.0,
        door=np.radians(rng.uniform(65, 80)) if kind == "open_doors" else None,
    )


class View:
    """Turntable angle + pinhole camera: projects car-frame points to pixels."""

    def __init__(self, width: int, height: int, theta_deg: float, scale: float = 1.0):
        k = min(width / REF_W, height / REF_H)
        self.f, self.c, self.s = PX_PER_M * CAM_DIST * k, np.array([width / 2, height * 0.53]), scale
        phi = np.radians(theta_deg - 90.0)  # theta 0: the car's front faces the camera
        self.R = np.array([[np.cos(phi), -np.sin(phi), 0], [np.sin(phi), np.cos(phi), 0], [0, 0, 1.0]])
        self.cam = np.array([0.0, -CAM_DIST, CAM_Z])
        fwd = np.array([0.0, 0.0, LOOK_Z]) - self.cam
        fwd /= np.linalg.norm(fwd)
        self.axes = np.stack([np.array([1.0, 0, 0]), np.cross([1.0, 0, 0], fwd), fwd])  # right, up, forward
        self.cam_car = self.R.T @ self.cam / scale
        self.light_car = self.R.T @ LIGHT

    def project(self, p: np.ndarray) -> np.ndarray:
        q = (np.asarray(p, float) * self.s @ self.R.T - self.cam) @ self.axes.T
        return np.c_[self.c[0] + self.f * q[:, 0] / q[:, 2], self.c[1] - self.f * q[:, 1] / q[:, 2]]

    def facing(self, n, p) -> bool:
        return float(np.dot(n, self.cam_car - np.asarray(p, float))) > 0


class Canvas:
    """The photo (uint8 RGB) and the mask (uint8 0/1) drawn together from 3-D polygons."""

    def __init__(self, img: np.ndarray, view: View):
        self.img, self.view = img, view
        self.mask = np.zeros(img.shape[:2], np.uint8)

    def poly(self, p3, colour, mask: bool = True, hull: bool = False) -> None:
        pts = np.round(self.view.project(p3) * (1 << SHIFT)).astype(np.int32)
        if hull:
            pts = cv2.convexHull(pts)[:, 0]
        cv2.fillPoly(self.img, [pts], tuple(float(c) for c in colour), cv2.LINE_AA, SHIFT)
        if mask:
            cv2.fillPoly(self.mask, [pts], 1, cv2.LINE_8, SHIFT)

    def shade(self, colour, n, lo: float = 0.5) -> np.ndarray:
        return np.clip(np.asarray(colour) * (lo + (1 - lo) * max(0.0, float(n @ self.view.light_car))), 0, 255)


def _normal(face: np.ndarray, centre: np.ndarray) -> np.ndarray:
    n = np.cross(face, np.roll(face, -1, axis=0)).sum(axis=0)  # Newell's method
    n /= np.linalg.norm(n)
    return n if n @ (face.mean(axis=0) - centre) >= 0 else -n


def _clip(poly: np.ndarray, axis: int, lo: float, hi: float) -> np.ndarray | None:
    """Sutherland-Hodgman clip of a planar 3-D polygon to lo <= coordinate[axis] <= hi."""
    for sign, bound in ((1.0, lo), (-1.0, hi)):
        out, d = [], sign * (poly[:, axis] - bound)
        for i in range(len(poly)):
            j = (i + 1) % len(poly)
            if d[i] >= 0:
                out.append(poly[i])
            if d[i] * d[j] < 0:
                out.append(poly[i] + (poly[j] - poly[i]) * (d[i] / (d[i] - d[j])))
        if len(out) < 3:
            return None
        poly = np.array(out)
    return poly


def _shrink(poly: np.ndarray, k: float) -> np.ndarray:
    c = poly.mean(axis=0)
    return c + (poly - c) * k


def _extrude(p3: np.ndarray, offset) -> list[np.ndarray]:
    """Faces of the prism swept by a convex planar polygon along ``offset``: the two caps first, then the sides."""
    q = p3 + np.asarray(offset, float)
    n = len(p3)
    return [p3, q] + [np.array([p3[i], p3[(i + 1) % n], q[(i + 1) % n], q[i]]) for i in range(n)]


def _quad(x, y0, y1, z0, z1) -> np.ndarray:  # a rectangle in a plane x = const
    return np.array([[x, y0, z0], [x, y1, z0], [x, y1, z1], [x, y0, z1]], float)


def _body(cv: Canvas, c: dict) -> None:
    h, cl, b, W = c["L"] / 2, c["clear"], c["belt"], c["W"]
    rr, rd = (0.25, 0.08) if c["style"] == "sedan" else (0.06, 0.03)
    prof = [(-h + 0.15, cl), (h - 0.2, cl), (h, cl + 0.14), (h, b - 0.12), (h - 0.45, b), (-h + rr, b),
            (-h, b - rd), (-h, cl + 0.12)]
    p3 = np.array([(x, -W / 2, z) for x, z in prof])
    centre = np.array([0.0, 0.0, (cl + b) / 2])
    zs = cl + (b - cl) * np.array([0.0, 0.35, 0.62, 0.72, 1.0])
    bands = [(0.78, 0.0), (1.0, 0.0), (1.0, 0.45), (1.06, 0.0)]  # (brightness, specular) per height band
    for face in _extrude(p3, (0, W, 0)):
        n = _normal(face, centre)
        if not cv.view.facing(n, face.mean(axis=0)):
            continue
        cv.poly(face, cv.shade(c["paint"], n, c["ambient"]), mask=True)
        base = cv.shade(c["paint"], n, c["ambient"])
        for (gain, spec), lo, hi in zip(bands, zs[:-1], zs[1:]):
            part = _clip(face, 2, lo, hi)
            if part is not None:
                cv.poly(part, np.clip(base * gain * (1 - spec) + 255 * spec, 0, 255), mask=False)
    for sign, x in ((1, h + 0.004), (-1, -h - 0.004)):  # lights, grille, plate, bumper lip
        if not cv.view.facing((sign, 0, 0), (x, 0, (cl + b) / 2)):
            continue
        lamp = (235, 235, 222) if sign > 0 else (175, 22, 28)
        for s in (1, -1):
            cv.poly(_quad(x, s * (W / 2 - 0.42), s * (W / 2 - 0.08), b - 0.28, b - 0.15), lamp, mask=False)
        if sign > 0:
            cv.poly(_quad(x, -0.38, 0.38, cl + 0.3, b - 0.2), (34, 34, 37), mask=False)
        cv.poly(_quad(x, -W / 2 + 0.1, W / 2 - 0.1, cl + 0.14, cl + 0.2), (40, 40, 42), mask=False)
        cv.poly(_quad(x, -0.26, 0.26, cl + 0.21, cl + 0.33), (228, 228, 222), mask=False)


def _cabin(cv: Canvas, c: dict) -> None:
    b, t, W = c["belt"], c["roof"], c["W"]
    wb, wt = 0.47 * W, 0.39 * W
    lo = np.array([[c["xr"], -wb, b], [c["xf"], -wb, b], [c["xf"], wb, b], [c["xr"], wb, b]])
    hi = np.array([[c["xrt"], -wt, t], [c["xft"], -wt, t], [c["xft"], wt, t], [c["xrt"], wt, t]])
    centre = np.r_[lo, hi].mean(axis=0)
    faces = [(hi, None), (np.array([lo[1], lo[2], hi[2], hi[1]]), 0.88), (np.array([lo[3], lo[0], hi[0], hi[3]]), 0.86),
             (np.array([lo[0], lo[1], hi[1], hi[0]]), 0.8), (np.array([lo[2], lo[3], hi[3], hi[2]]), 0.8)]
    xm = (c["xf"] + c["xr"]) / 2 + 0.1
    for i, (face, win) in enumerate(faces):
        n = _normal(face, centre)
        if not cv.view.facing(n, face.mean(axis=0)):
            continue
        cv.poly(face, cv.shade(c["paint"], n, c["ambient"]))
        if win is not None:
            cv.poly(_shrink(face, win), cv.shade(c["glass"], n, 0.75), mask=False)
            pillar = _clip(face, 0, xm - 0.06, xm + 0.06) if i >= 3 else None
            if pillar is not None:
                cv.poly(pillar, cv.shade(c["paint"] * 0.5, n, c["ambient"]), mask=False)


def _wheel(cv: Canvas, c: dict, xa: float, s: int, near: bool) -> None:
    r, W, cl = c["r"], c["W"], c["clear"]
    ring = lambda y, rad: np.c_[xa + rad * np.cos(U), np.full(len(U), y), r + rad * np.sin(U)]  # noqa: E731
    yo = s * (W / 2 - 0.03)
    if near:  # the wheel well: a dark arch on the body side, then only the tyre below the body shows its width
        a0 = np.arcsin(np.clip((cl - r) / (1.12 * r), -1, 1))
        ang = np.linspace(a0, np.pi - a0, 20)
        cv.poly(np.c_[xa + 1.12 * r * np.cos(ang), np.full(20, s * W / 2 + s * 0.003), r + 1.12 * r * np.sin(ang)],
                (24, 24, 26), mask=False)
    inner = ring(yo - s * 0.22, r)
    tyre = np.r_[ring(yo, r), inner[inner[:, 2] < cl] if near else inner]
    cv.poly(tyre, (30, 30, 32), hull=True)
    if cv.view.facing((0, s, 0), (xa, yo, r)):
        y = yo + s * 0.01
        cv.poly(ring(y, 0.64 * r), cv.shade(np.full(3, c["rim"]), np.array([0, s, 0.0]), 0.7), mask=False)
        for k in range(5):
            a = 2 * np.pi * k / 5
            hole = ring(y, 0.12 * r) + [0.38 * r * np.cos(a), 0, 0.38 * r * np.sin(a)]
            cv.poly(hole, (45, 45, 48), mask=False)
        cv.poly(ring(y, 0.16 * r), (70, 70, 74), mask=False)


def _door(cv: Canvas, c: dict, s: int) -> None:
    alpha, W, b = c["door"], c["W"], c["belt"]
    hinge, dl = np.array([c["xf"] + 0.1, s * W / 2, 0.0]), 1.05
    d, e = np.array([-np.cos(alpha), s * np.sin(alpha), 0]), np.array([-np.sin(alpha), -s * np.cos(alpha), 0])
    prof = [(0, c["clear"] + 0.08), (dl, c["clear"] + 0.08), (dl, c["roof"] - 0.06), (0.3 * dl, c["roof"] - 0.06),
            (0, b + 0.05)]
    p3 = np.array([hinge + u * d + [0, 0, z] for u, z in prof])
    faces = _extrude(p3, 0.07 * e)
    centre = np.r_[faces[0], faces[1]].mean(axis=0)
    for i, face in enumerate(faces):
        n = _normal(face, centre)
        if cv.view.facing(n, face.mean(axis=0)):
            cv.poly(face, cv.shade(c["paint"], n, c["ambient"]))
            win = _clip(face, 2, b + 0.06, c["roof"]) if i < 2 else None
            if win is not None:
                cv.poly(_shrink(win, 0.85), cv.shade(c["glass"], n, 0.75), mask=False)


def draw_car(cv: Canvas, c: dict) -> None:
    """Paint the car far-to-near: hidden-side wheels and doors, body, cabin, then the side facing the camera."""
    W, b, cl = c["W"], c["belt"], c["clear"]
    near = {s: cv.view.facing((0, s, 0), (0, s * W / 2, (cl + b) / 2)) for s in (1, -1)}
    for s in (1, -1):
        if not near[s]:
            for xa in c["axles"]:
                _wheel(cv, c, xa, s, near=False)
            if c["door"] is not None:
                _door(cv, c, s)
    _body(cv, c)
    _cabin(cv, c)
    for s in (1, -1):
        if not near[s]:
            continue
        y = s * (W / 2 + 0.004)
        for x in (c["xf"] + 0.1, c["xf"] - 1.0, c["xr"] - 0.1):  # door seams
            p = cv.view.project(np.array([[x, y, cl + 0.1], [x, y, b - 0.03]])) * (1 << SHIFT)
            cv2.line(cv.img, *[tuple(int(v) for v in q) for q in p], (20, 20, 20), 1, cv2.LINE_AA, SHIFT)
        if c["door"] is not None:  # the open door shows the dark interior
            x0 = c["xf"] + 0.1
            hole = [[x0 - 1.05, y, cl + 0.1], [x0, y, cl + 0.1], [x0, y, b - 0.02], [x0 - 1.05, y, b - 0.02]]
            cv.poly(np.array(hole), (46, 44, 42), mask=False)
        for xa in c["axles"]:
            _wheel(cv, c, xa, s, near=True)
        if c["door"] is not None:
            _door(cv, c, s)


def studio(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """The seamless light-grey backdrop of one car's photo session (uint8 RGB): vertical gradient, mild noise."""
    y = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None]
    horizon = 0.6 + rng.uniform(-0.03, 0.03)
    top = rng.uniform(228, 242)
    prof = top + 6 * (1 - y) - 10 / (1 + np.exp(-(y - horizon) * 30)) + 6 * np.clip(y - horizon, 0, None)
    low = cv2.resize(rng.normal(0, 2.0, (6, 9)).astype(np.float32), (width, height), interpolation=cv2.INTER_CUBIC)
    fine = np.tile(rng.normal(0, 1.6, (64, 64)).astype(np.float32), (height // 64 + 1, width // 64 + 1))
    grey = prof + low + fine[:height, :width]
    tint = rng.uniform(-3, 3, 3).astype(np.float32)
    return np.clip(grey[:, :, None] + tint, 0, 255).astype(np.uint8)


def render_view(c: dict, bg: np.ndarray, theta_deg: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One photo (uint8 RGB) and its mask (uint8 0/1) of car ``c`` turned by ``theta_deg``."""
    height, width = bg.shape[:2]
    view = View(width, height, theta_deg, c["scale"])
    ds = 8  # the soft floor shadow is drawn at 1/8 resolution, blurred, and multiplied in
    small = np.ones((height // ds + 1, width // ds + 1), np.float32)
    for (ax, ay), val in (((0.35, 0.45), 0.75), ((0.0, 0.05), 0.5)):
        ring = np.c_[(c["L"] / 2 + ax) * np.cos(U), (c["W"] / 2 + ay) * np.sin(U), np.zeros(len(U))]
        cv2.fillPoly(small, [np.round(view.project(ring) / ds * 8).astype(np.int32)], val, cv2.LINE_AA, 3)
    small = cv2.GaussianBlur(small, (0, 0), max(1.0, 3.0 * min(width / REF_W, height / REF_H) * 8 / ds))
    shade = cv2.resize(small, (width, height), interpolation=cv2.INTER_LINEAR)
    img = cv2.multiply(bg, cv2.merge([shade] * 3), dtype=cv2.CV_8U)
    cv = Canvas(img, view)
    draw_car(cv, c)
    img = cv2.GaussianBlur(cv.img, (3, 3), 0.6)
    gain = rng.uniform(0.94, 1.05)
    lut = np.clip(np.arange(256) * gain + rng.uniform(-3, 3), 0, 255).astype(np.uint8)
    return cv2.LUT(img, lut), cv.mask
