"""Search for the 3D error-diffusion kernel, scan order and edge rule that render real MRI best.

    python scripts/search_dither3d.py [--out results.json] [--stage 1|2|3|all] [--quick]

Every volume is min-max rescaled to [0, 1] and laid out as (slice, row, column) = (z, y, x),
the order volbin's drivers scan (slices along z, rows along y, columns along x).  A candidate
turns it into 0/1 voxels; its quality is the RMS difference between the binary volume and the
grey volume after the same 3D Gaussian blur (sigma 1, 1.5 and 2 voxels), inside the head and
over the whole volume (reported x 1e-3).  Also measured: the mean density error in % (overall
and inside the head), the ones far from the head (more than 3 voxels outside it) next to the
number the input there explains (its sum), and for each of the 6 faces the ones on the face
minus the input's sum on it, in units of the binomial sigma ``sqrt(sum p (1 - p))``.

Stage 1 scores every 3D extension of every 2D kernel (next-slice share x spread x scan
order), Lou & Stucki's 3D kernel, a plain 4-tap loop, 2D per slice and 3D Bayer on the five
small real volumes.  Stage 2 takes a shortlist through the edge rules (`EDGES`), adding the
181x217x181 phantom.  Stage 3 checks the edge rules for 2D per-slice diffusion with all 8
kernels.  Stage 4 sweeps the next-slice share from 1/64 to 1/8.  Stage 5 runs the chosen
rules (1/16 straight below, boustrophedon scan, "scan-end" edge rule) for every kernel on every
volume and prints the acceptance checks.  The loops are self-contained numba code here (the
package is used only for its phantom); they scatter the error voxel by voxel in float32, which
with the "renorm" rule reproduces volbin's compiled loops bit for bit on the raster scans.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

try:
    from numba import njit
except ImportError:  # a research script: its own loops are numba; volbin itself does not use numba
    raise SystemExit("scripts/search_dither3d.py needs numba: pip install numba") from None
from scipy import ndimage

# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------

_ITK = "/usr/share/doc/insighttoolkit5-examples/examples/Data/KmeansTest_T1UCharRaw.nii.gz"


def _package_dir(name: str) -> Path | None:
    try:
        mod = __import__(name)
    except ImportError:
        return None
    return Path(os.path.dirname(mod.__file__))


def real_volumes() -> dict[str, str]:
    """Name -> path of the real volumes present on this machine."""
    paths = {"itk_t1": _ITK}
    dipy = _package_dir("dipy")
    if dipy is not None:
        paths["dipy_aniso"] = str(dipy / "data" / "files" / "aniso_vox.nii.gz")
        paths["dipy_s0"] = str(dipy / "data" / "files" / "S0_10slices.nii.gz")
    nib_dir = _package_dir("nibabel")
    if nib_dir is not None:
        paths["nib_anat"] = str(nib_dir / "tests" / "data" / "anatomical.nii")
        paths["nib_4d"] = str(nib_dir / "tests" / "data" / "example4d.nii.gz")
    return {k: v for k, v in paths.items() if os.path.exists(v)}


def _minmax_zyx(data: np.ndarray) -> np.ndarray:
    d = np.asarray(data, np.float64)
    while d.ndim > 3:  # first volume of 4D data
        d = d[..., 0]
    lo, hi = float(d.min()), float(d.max())
    r = ((d - lo) / (hi - lo)).astype(np.float32)
    return np.ascontiguousarray(r.transpose(2, 1, 0))  # (X, Y, Z) -> (z, y, x)


def load(name: str, path: str | None) -> np.ndarray:
    if name == "phantom":
        from volbin.phantom import phantom

        return _minmax_zyx(phantom((181, 217, 181), seed=0).intensity)
    import nibabel as nib

    return _minmax_zyx(np.asanyarray(nib.load(path).dataobj))


# --------------------------------------------------------------------------------------------
# Kernels
# --------------------------------------------------------------------------------------------

#: The 2D kernels of volbin (matrix, divisor), current pixel at row 0, column cols // 2.
MATRICES = {
    "floyd-steinberg": ([[0, 0, 7], [3, 5, 1]], 16),
    "jarvis-judice-ninke": ([[0, 0, 0, 7, 5], [3, 5, 7, 5, 3], [1, 3, 5, 3, 1]], 48),
    "stucki": ([[0, 0, 0, 8, 4], [2, 4, 8, 4, 2], [1, 2, 4, 2, 1]], 42),
    "burkes": ([[0, 0, 0, 8, 4], [2, 4, 8, 4, 2]], 32),
    "sierra": ([[0, 0, 0, 5, 3], [2, 4, 5, 4, 2], [0, 2, 3, 2, 0]], 32),
    "sierra-2row": ([[0, 0, 0, 4, 3], [1, 2, 3, 2, 1]], 16),
    "sierra-lite": ([[0, 0, 2], [1, 1, 0]], 4),
    "atkinson": ([[0, 0, 0, 1, 1], [0, 1, 1, 1, 0], [0, 0, 1, 0, 0]], 8),
}

SPREADS = {
    "straight": {(0, 0): 1.0},
    "plus": {(0, 0): 0.5, (-1, 0): 0.125, (1, 0): 0.125, (0, -1): 0.125, (0, 1): 0.125},
    "binomial": {
        (j - 1, i - 1): float(v) / 16 for (j, i), v in np.ndenumerate(np.outer([1, 2, 1], [1, 2, 1]))
    },
}

SHARES = {"1/8": 0.125, "1/6": 1 / 6, "1/4": 0.25, "1/3": 1 / 3, "3/8": 0.375, "0.4": 0.4, "1/2": 0.5}


def taps_2d(name: str) -> list[tuple[int, int, int, float]]:
    """(dz, dy, dx, w) taps of a named 2D kernel."""
    m, div = MATRICES[name]
    m = np.asarray(m, np.float64)
    c = m.shape[1] // 2
    return [(0, int(y), int(x) - c, float(m[y, x]) / div) for y, x in zip(*np.nonzero(m), strict=True)]


def share_value(label: str) -> float:
    if label in SHARES:
        return SHARES[label]
    num, den = label.split("/")
    return float(num) / float(den)


def taps_3d(name: str, share: float, spread: str) -> list[tuple[int, int, int, float]]:
    """A 2D kernel extended: 1 - share in-slice, share times the spread into the next slice."""
    t2 = taps_2d(name)
    total = sum(t[3] for t in t2)
    taps = [(0, y, x, w * (1 - share)) for _, y, x, w in t2]
    taps += [(1, y, x, v * share * total) for (y, x), v in SPREADS[spread].items()]
    return taps


#: Lou & Stucki's 3D kernel as VoxelFuse transcribes it (/21), (dz, dy, dx).
LOU_STUCKI = [
    (0, 0, 1, 4), (0, 0, 2, 1), (0, 1, 0, 4), (0, 2, 0, 1), (0, 1, 1, 1), (0, 1, -1, 1),
    (1, -1, 0, 1), (1, 0, -1, 1), (1, 1, 0, 1), (1, 0, 1, 1), (1, 0, 0, 4), (2, 0, 0, 1),
]  # fmt: skip
LOU_STUCKI = [(z, y, x, w / 21) for z, y, x, w in LOU_STUCKI]

#: The plain 4-tap loop: 0.3 right, 0.1 down-left, 0.2 down, 0.4 to the next slice.
PLAIN = [(0, 0, 1, 0.3), (0, 1, -1, 0.1), (0, 1, 0, 0.2), (1, 0, 0, 0.4)]

SCANS = {"raster": 0, "serp": 1, "serp-alt": 2, "serp-3d": 3}

#: Edge rules.  "in" taps are those whose target lies in the volume; `tbg` is the background
#: level (input <= tbg is background).
EDGES = {
    "renorm": 0,  # today: error of out-of-volume taps spread over the in-volume ones
    "drop": 1,  # classic: error of out-of-volume taps is lost
    "supp-renorm": 2,  # taps only to in-volume support voxels, renormalised; bg voxels drop
    "renorm-if-supp": 3,  # renormalise at the edges only when the current voxel is support
    "drop-into-bg": 4,  # renormalise at the edges; shares landing on background are lost
    "clamp": 5,  # renorm, with the diffused error clamped to [-0.5, 0.5]
    "drop-edge-bg": 6,  # shares to out-of-volume and background targets lost, no rescale
    "same-class": 7,  # taps only to voxels of the current voxel's class, renormalised
    "absorb": 8,  # renorm; a background voxel passes no error on
    "side-renorm": 9,  # renorm error leaving through the sides; drop it past the last row/slice
    "end-drop": 10,  # renorm; drop only error leaving past the end of the scan (see _diffuse)
    "end-drop-x": 11,  # end-drop; raster scans also drop error leaving past the end of a row
    "scan-end": 12,  # drop past the last slice, past the last row of every slice, past a raster row's end
}


# --------------------------------------------------------------------------------------------
# Loops
# --------------------------------------------------------------------------------------------


@njit(cache=True, nogil=True)
def _diffuse(vol, dz, dy, dx, w, scan, edge, tbg, out):
    """Error diffusion of `vol` (n, rows, cols) into `out`; see SCANS and EDGES."""
    n, rows, cols = vol.shape
    err = np.zeros((n, rows, cols), np.float32)
    ntap = len(w)
    wsum = np.float32(0)
    for k in range(ntap):
        wsum += w[k]
    half = np.float32(0.5)
    one = np.float32(1)
    twod = True
    for k in range(ntap):
        if dz[k] > 0:
            twod = False
    ok = np.empty(ntap, np.bool_)
    tzs = np.empty(ntap, np.int64)
    tys = np.empty(ntap, np.int64)
    txs = np.empty(ntap, np.int64)
    for z in range(n):
        ysgn = -1 if (scan == 3 and z % 2 == 1) else 1
        for r in range(rows):
            y = r if ysgn > 0 else rows - 1 - r
            if scan == 0:
                xs = 1
            elif scan == 1:
                xs = -1 if y % 2 == 1 else 1
            elif scan == 2:
                xs = -1 if (y + z) % 2 == 1 else 1
            else:
                xs = -1 if (z * rows + r) % 2 == 1 else 1
            for i in range(cols):
                x = i if xs > 0 else cols - 1 - i
                a = vol[z, y, x]
                v = a + err[z, y, x]
                b = v > half
                out[z, y, x] = b
                e = v - one if b else v
                if edge == 5:
                    e = min(max(e, -half), half)
                insup = a > tbg
                insum = np.float32(0)
                wfar = np.float32(0)
                allin = True
                for k in range(ntap):
                    tz = z + dz[k]
                    ty = y + ysgn * dy[k]
                    tx = x + xs * dx[k]
                    tzs[k] = tz
                    tys[k] = ty
                    txs[k] = tx
                    use = tz < n and 0 <= ty < rows and 0 <= tx < cols
                    if use and (edge == 2 or edge == 6):
                        use = vol[tz, ty, tx] > tbg
                    elif use and edge == 7:
                        use = (vol[tz, ty, tx] > tbg) == insup
                    ok[k] = use
                    if use:
                        insum += w[k]
                    else:
                        allin = False
                        past_row = (ysgn > 0 and ty >= rows) or (ysgn < 0 and ty < 0)
                        if edge == 9 and (tz >= n or past_row):
                            wfar += w[k]
                        elif edge == 10 and (tz >= n or (past_row and (twod or z == n - 1))):
                            wfar += w[k]
                        elif edge == 12 and (tz >= n or past_row or (scan == 0 and tx >= cols)):
                            wfar += w[k]
                        elif edge == 11 and (
                            tz >= n
                            or (past_row and (twod or scan == 0 or z == n - 1))
                            or (scan == 0 and tx >= cols)
                        ):
                            wfar += w[k]
                if edge == 1 or edge == 6 or (edge == 3 and not insup):
                    s = e
                elif (edge == 2 or edge == 8) and not insup:
                    s = np.float32(0)
                elif allin:
                    s = e
                elif edge >= 9:
                    s = np.float32(0)
                    if insum > 0:
                        s = np.float32(np.float64(e) * (np.float64(wsum - wfar) / np.float64(insum)))
                elif insum > 0:
                    s = np.float32(np.float64(e) * (np.float64(wsum) / np.float64(insum)))
                else:
                    s = np.float32(0)
                for k in range(ntap):
                    if ok[k]:
                        if edge == 4 and not vol[tzs[k], tys[k], txs[k]] > tbg:
                            continue
                        err[tzs[k], tys[k], txs[k]] += np.float32(w[k] * s)


def diffuse(vol, taps, scan="raster", edge="drop", tbg=0.02):
    dz = np.array([t[0] for t in taps], np.int64)
    dy = np.array([t[1] for t in taps], np.int64)
    dx = np.array([t[2] for t in taps], np.int64)
    w = np.array([t[3] for t in taps], np.float32)
    out = np.empty(vol.shape, np.uint8)
    _diffuse(vol, dz, dy, dx, w, SCANS[scan], EDGES[edge], np.float32(tbg), out)
    return out


def bayer3d(vol, order=3):
    """3D Bayer ordered dithering, matrix side 2**order (the recursion of volbin.ordered)."""
    z, y, x = np.indices((2, 2, 2))
    base = 4 * (x ^ y) + 2 * (y ^ z) + z
    m = np.zeros((1, 1, 1), np.int64)
    for _ in range(order):
        m = base.size * np.tile(m, (2, 2, 2)) + np.kron(base, np.ones_like(m))
    t = ((m + 0.5) / m.size).astype(np.float32)
    k = t.shape[0]
    idx = np.ix_(*[np.arange(s) % k for s in vol.shape])
    return (vol > t[idx]).astype(np.uint8)


# --------------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------------

SIGMAS = (1.0, 1.5, 2.0)


class Scorer:
    """Precomputed masks and blurred input of one volume."""

    def __init__(self, vol: np.ndarray) -> None:
        self.vol = vol
        self.blur = {s: ndimage.gaussian_filter(vol, s) for s in SIGMAS}
        head = ndimage.gaussian_filter(vol, 1.0) > 0.1
        self.head = ndimage.binary_fill_holes(head)
        ball = ndimage.generate_binary_structure(3, 3)
        self.far = ~ndimage.binary_dilation(self.head, ball, iterations=3)
        self.far_supp = ~ndimage.binary_dilation(vol > 0.02, ball, iterations=3)
        self.mean_in = float(vol.mean(dtype=np.float64))
        self.mean_in_head = float(vol[self.head].mean(dtype=np.float64))

    def score(self, out: np.ndarray) -> dict:
        vol = self.vol
        o = out.astype(np.float32)
        r: dict = {}
        for s in SIGMAS:
            d = ndimage.gaussian_filter(o, s) - self.blur[s]
            d *= d
            r[f"head{s:g}"] = 1e3 * float(np.sqrt(d[self.head].mean(dtype=np.float64)))
            r[f"all{s:g}"] = 1e3 * float(np.sqrt(d.mean(dtype=np.float64)))
        r["dmean"] = 100 * (float(o.mean(dtype=np.float64)) - self.mean_in) / self.mean_in
        r["dmean_head"] = (
            100 * (float(o[self.head].mean(dtype=np.float64)) - self.mean_in_head) / self.mean_in_head
        )
        r["far_ones"] = int(out[self.far].sum())
        r["far_expect"] = float(vol[self.far].sum(dtype=np.float64))
        r["far_voxels"] = int(self.far.sum())
        r["farsupp_ones"] = int(out[self.far_supp].sum())
        r["farsupp_expect"] = float(vol[self.far_supp].sum(dtype=np.float64))
        faces = {}
        for ax, nm in enumerate("zyx"):
            for side, idx in (("0", 0), ("1", -1)):
                fo = np.take(out, idx, axis=ax).astype(np.float64)
                fi = np.take(vol, idx, axis=ax).astype(np.float64)
                sig = float(np.sqrt((fi * (1 - fi)).sum() + 1.0))
                faces[nm + side] = {
                    "excess": float(fo.sum() - fi.sum()),
                    "z": float((fo.sum() - fi.sum()) / sig),
                    "in": float(fi.mean()),
                    "out": float(fo.mean()),
                }
        r["faces"] = faces
        r["face_zmax"] = max(f["z"] for f in faces.values())
        r["face_excess_max"] = max(f["excess"] for f in faces.values())
        return r


# --------------------------------------------------------------------------------------------
# Candidates
# --------------------------------------------------------------------------------------------


def stage1_candidates() -> list[dict]:
    cands = []
    for k in MATRICES:
        for sh in SHARES:
            for sp in SPREADS:
                for sc in SCANS:
                    cands.append({"id": f"{k}|{sh}|{sp}|{sc}", "kind": "3d", "kernel": k, "share": sh,
                                  "spread": sp, "scan": sc})  # fmt: skip
        for sc in ("raster", "serp"):
            cands.append({"id": f"{k}|2d|{sc}", "kind": "2d", "kernel": k, "scan": sc})
    for sc in SCANS:
        cands.append({"id": f"lou-stucki|{sc}", "kind": "ls", "scan": sc})
        cands.append({"id": f"plain|{sc}", "kind": "plain", "scan": sc})
    cands.append({"id": "bayer3d-8", "kind": "bayer"})
    return cands


def cand_taps(c: dict):
    if c["kind"] == "3d":
        return taps_3d(c["kernel"], share_value(c["share"]), c["spread"])
    if c["kind"] == "2d":
        return taps_2d(c["kernel"])
    if c["kind"] == "ls":
        return LOU_STUCKI
    if c["kind"] == "plain":
        return PLAIN
    return None


def run(c: dict, vol: np.ndarray, edge: str = "drop", tbg: float = 0.02) -> np.ndarray:
    if c["kind"] == "bayer":
        return bayer3d(vol)
    return diffuse(vol, cand_taps(c), c.get("scan", "raster"), edge, tbg)


def evaluate(cands, vols, scorers, edges, log=print):
    res = []
    t0 = time.time()
    for i, c in enumerate(cands):
        for edge, tbg in c.get("edges", edges):
            if c["kind"] == "bayer" and edge != edges[0][0]:
                continue
            row = dict(c, edge=edge, tbg=tbg, vols={})
            for name, vol in vols.items():
                row["vols"][name] = scorers[name].score(run(c, vol, edge, tbg))
            res.append(row)
        if i % 25 == 0:
            log(f"  {i + 1}/{len(cands)} candidates, {time.time() - t0:.0f} s", file=sys.stderr)
    return res


def baseline_ratio(row, base_rows, names):
    """Mean over volumes and sigmas of head RMS / head RMS of the baseline."""
    r = []
    for n in names:
        for s in SIGMAS:
            r.append(row["vols"][n][f"head{s:g}"] / base_rows["vols"][n][f"head{s:g}"])
    return float(np.mean(r))


# --------------------------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------------------------


def fmt_rms(v: dict) -> str:
    return " / ".join(f"{v[f'head{s:g}']:.1f}" for s in SIGMAS)


def table(rows, names, title, extra=True):
    lines = [f"### {title}", ""]
    hdr = "| candidate | edge | " + " | ".join(names) + " | mean ratio vs 2D FS |"
    lines += [hdr, "|" + "---|" * (len(names) + 3)]
    for r in rows:
        cells = [fmt_rms(r["vols"][n]) for n in names]
        lines.append(
            f"| {r['id']} | {r['edge']} | " + " | ".join(cells) + f" | {r.get('ratio', float('nan')):.3f} |"
        )
    lines.append("")
    return "\n".join(lines)


def detail_table(rows, names, title):
    lines = [f"### {title}", "",
             "| candidate | edge | tbg | volume | head RMS s=1/1.5/2 | all RMS s=1/1.5/2 | dmean % "
             "| dmean head % | far ones / expected | face z max | face excess max |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        for n in names:
            v = r["vols"][n]
            allr = " / ".join(f"{v[f'all{s:g}']:.1f}" for s in SIGMAS)
            lines.append(
                f"| {r['id']} | {r['edge']} | {r['tbg']:g} | {n} | {fmt_rms(v)} | {allr} | "
                f"{v['dmean']:+.2f} | {v['dmean_head']:+.2f} | {v['far_ones']} / {v['far_expect']:.0f} | "
                f"{v['face_zmax']:+.1f} | "
                f"{v['face_excess_max']:+.0f} |"
            )
    lines.append("")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Stages
# --------------------------------------------------------------------------------------------


def stage1(vols, scorers):
    cands = stage1_candidates()
    res = evaluate(cands, vols, scorers, [("end-drop", 0.02)])  # same as end-drop-x for serpentine scans
    names = list(vols)
    base = {r["kernel"]: r for r in res if r["kind"] == "2d" and r["scan"] == "raster"}
    fs2d = base["floyd-steinberg"]
    for r in res:
        r["ratio"] = baseline_ratio(r, fs2d, names)
        if r["kind"] in ("3d", "2d"):
            r["ratio_own2d"] = baseline_ratio(r, base[r["kernel"]], names)
    return res


def extension_rule_scores(res):
    """For each (share, spread, scan): mean over kernels of RMS ratio vs the kernel's own 2D."""
    acc: dict = {}
    for r in res:
        if r["kind"] != "3d":
            continue
        acc.setdefault((r["share"], r["spread"], r["scan"]), []).append(r["ratio_own2d"])
    return sorted(((float(np.mean(v)), k) for k, v in acc.items()), key=lambda t: t[0])


def shortlist(res1, n_best=6):
    ranked = sorted((r for r in res1 if r["kind"] == "3d"), key=lambda r: r["ratio"])
    keep = {r["id"]: r for r in ranked[:n_best]}
    rules = extension_rule_scores(res1)
    share, spread, scan = rules[0][1]
    for k in MATRICES:  # every kernel with the best extension rule, and with a straight spread
        for sp in (spread, "straight"):
            cid = f"{k}|{share}|{sp}|{scan}"
            keep.setdefault(cid, next(r for r in res1 if r["id"] == cid))
    for cid in ("floyd-steinberg|3/8|binomial|raster", "floyd-steinberg|1/3|straight|raster",
                "lou-stucki|raster", "lou-stucki|serp-3d", "plain|raster", "plain|serp",
                "floyd-steinberg|2d|raster", "floyd-steinberg|2d|serp", "bayer3d-8"):  # fmt: skip
        keep.setdefault(cid, next(r for r in res1 if r["id"] == cid))
    for k in ("floyd-steinberg", "sierra-lite"):  # beyond the grid's smallest share, and mid shares
        for sh in ("1/16", "1/4", "1/3"):
            cid = f"{k}|{sh}|straight|serp-3d"
            keep.setdefault(cid, {"id": cid, "kind": "3d", "kernel": k, "share": sh, "spread": "straight",
                                  "scan": "serp-3d"})  # fmt: skip
    out = [{k: v for k, v in r.items() if k not in ("vols", "edge", "tbg", "ratio", "ratio_own2d")}
           for r in keep.values()]  # fmt: skip
    full = {ranked[0]["id"], "floyd-steinberg|3/8|binomial|raster", "floyd-steinberg|2d|raster"}
    for c in out:  # every edge rule for a few; the others with the main two
        if c["id"] not in full:
            c["edges"] = [("end-drop-x", 0.02), ("renorm", 0.02)]
    return out


STAGE2_EDGES = [("end-drop-x", 0.02), ("end-drop", 0.02), ("renorm", 0.02), ("drop", 0.02),
                ("side-renorm", 0.02), ("supp-renorm", 0.02), ("renorm-if-supp", 0.02),
                ("drop-into-bg", 0.02), ("clamp", 0.02), ("same-class", 0.02), ("absorb", 0.0),
                ("absorb", 0.02)]  # fmt: skip


def criteria(res2, names, edge="end-drop-x") -> str:
    """Pass/fail of the acceptance criteria for each 3D candidate of stage 2 under `edge`."""
    by = {(r["id"], r["edge"]): r for r in res2}
    bayer = next(r for r in res2 if r["kind"] == "bayer")
    lines = [f"### Acceptance criteria (edge rule {edge})", "",
             "| candidate | beats 2D FS (renorm and same rule) at s=1,1.5,2 | beats own-kernel 2D | "
             "beats 3D Bayer at s=1,1.5 | worst face z | far ones / plain loop |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    plain = by.get(("plain|raster", edge)) or by.get(("plain|raster", "drop"))
    for r in res2:
        if r["edge"] != edge or r["kind"] not in ("3d", "ls", "plain"):
            continue
        fails2d, failsown, failsb = [], [], []
        for n in names:
            for s in SIGMAS:
                v = r["vols"][n][f"head{s:g}"]
                for e2 in ("renorm", edge):
                    b = by.get(("floyd-steinberg|2d|raster", e2))
                    if b and v >= b["vols"][n][f"head{s:g}"]:
                        fails2d.append(f"{n}@{s:g}/{e2}")
                if r["kind"] == "3d":
                    own = by.get((f"{r['kernel']}|2d|raster", edge))
                    if own and v >= own["vols"][n][f"head{s:g}"]:
                        failsown.append(f"{n}@{s:g}")
                if s < 2 and v >= bayer["vols"][n][f"head{s:g}"]:
                    failsb.append(f"{n}@{s:g}")
        fz = max(r["vols"][n]["face_zmax"] for n in names)
        far = sum(r["vols"][n]["far_ones"] for n in names)
        farp = sum(plain["vols"][n]["far_ones"] for n in names) if plain else float("nan")
        lines.append(f"| {r['id']} | {'yes' if not fails2d else 'no: ' + ', '.join(fails2d)} | "
                     f"{'yes' if not failsown else 'no: ' + ', '.join(failsown)} | "
                     f"{'yes' if not failsb else 'no: ' + ', '.join(failsb)} | {fz:+.1f} | "
                     f"{far} / {farp} |")  # fmt: skip
    lines.append("")
    return "\n".join(lines)


#: Next-slice shares of the final sweep (stage 4), below the grid of stage 1.
SWEEP = ("1/64", "1/32", "1/24", "1/16", "1/12", "1/8")


def sweep_table(results, names) -> str:
    """Stage 4: head RMS of each kernel at each share, and its mean ratio vs the kernel's own 2D."""
    own = {r["kernel"]: r for r in results["stage4"] if r["kind"] == "2d"}
    ph = {r["id"]: r for r in results.get("stage4_phantom", [])}
    lines = ["### Stage 4: next-slice share sweep (straight, boustrophedon, end-of-scan drop)", "",
             "| kernel | share | " + " | ".join(names) + " | phantom | mean ratio vs own 2D raster |",
             "|" + "---|" * (len(names) + 4)]  # fmt: skip
    for r in results["stage4"]:
        if r["kind"] != "3d":
            continue
        ratio = baseline_ratio(r, own[r["kernel"]], names)
        p = fmt_rms(ph[r["id"]]["vols"]["phantom"]) if r["id"] in ph else ""
        cells = " | ".join(fmt_rms(r["vols"][n]) for n in names)
        lines.append(f"| {r['kernel']} | {r['share']} | {cells} | {p} | {ratio:.3f} |")
    lines.append("")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="dither_search.json", help="JSON file for all results")
    ap.add_argument(
        "--stage",
        default="all",
        choices=("1", "2", "3", "4", "5", "all", "report"),
        help="stage to run; 'report' prints the tables of the JSON file",
    )
    ap.add_argument("--quick", action="store_true", help="only Floyd-Steinberg in stage 1 (smoke test)")
    ap.add_argument("--no-phantom", action="store_true", help="leave the 181x217x181 phantom out")
    args = ap.parse_args()

    paths = real_volumes()
    if args.stage == "report":
        paths = {}
    vols = {n: load(n, p) for n, p in paths.items()}
    big = {} if args.no_phantom or args.stage == "report" else {"phantom": load("phantom", None)}
    for n, v in {**vols, **big}.items():
        print(f"{n}: (z, y, x) = {v.shape}", file=sys.stderr)
    scorers = {n: Scorer(v) for n, v in {**vols, **big}.items()}
    outp = Path(args.out)
    results = json.loads(outp.read_text()) if outp.exists() else {}
    names = list(vols) or list(results["stage1"][0]["vols"])

    if args.stage in ("1", "all"):
        if args.quick:
            MATRICES_KEEP = {"floyd-steinberg"}
            for k in list(MATRICES):
                if k not in MATRICES_KEEP:
                    del MATRICES[k]
        t = time.time()
        results["stage1"] = stage1(vols, scorers)
        results["extension_rules"] = [[s, list(k)] for s, k in extension_rule_scores(results["stage1"])]
        print(f"stage 1: {time.time() - t:.0f} s", file=sys.stderr)
        outp.write_text(json.dumps(results))
    res1 = results["stage1"]
    ranked = sorted(res1, key=lambda r: r["ratio"])
    print(table(ranked[:40], names, "Stage 1: best 40 by mean head-RMS ratio vs 2D Floyd-Steinberg"))
    print(
        table([r for r in res1 if r["kind"] in ("2d", "ls", "plain", "bayer")], names, "Stage 1: references")
    )
    print("### Extension rules (mean over kernels of RMS ratio vs the kernel's own 2D)\n")
    for s, k in results["extension_rules"][:15]:
        print(f"- {'|'.join(k)}: {s:.3f}")
    print()

    allv = {**vols, **big}
    alln = list(allv) or list(results.get("stage2", results["stage1"])[0]["vols"])
    if args.stage in ("2", "all"):
        t = time.time()
        short = shortlist(res1)
        results["stage2"] = evaluate(short, allv, scorers, STAGE2_EDGES)
        print(f"stage 2: {time.time() - t:.0f} s", file=sys.stderr)
        outp.write_text(json.dumps(results))
    if "stage2" in results:
        res2 = results["stage2"]
        base = next(r for r in res2 if r["id"] == "floyd-steinberg|2d|raster" and r["edge"] == "renorm")
        for r in res2:
            r["ratio"] = baseline_ratio(r, base, [n for n in alln if n in r["vols"]])
        print(table(sorted(res2, key=lambda r: r["ratio"]), alln, "Stage 2: shortlist x edge rules"))
        print(detail_table(res2, alln, "Stage 2 details"))
        print(criteria(res2 + results.get("stage3", []), alln))

    if args.stage in ("3", "all"):
        t = time.time()
        c2 = [{"id": f"{k}|2d|{sc}", "kind": "2d", "kernel": k, "scan": sc} for k in MATRICES
              for sc in ("raster", "serp")]  # fmt: skip
        edges = [("end-drop-x", 0.02), ("end-drop", 0.02), ("renorm", 0.02), ("drop", 0.02),
                 ("renorm-if-supp", 0.02)]  # fmt: skip
        results["stage3"] = evaluate(c2, allv, scorers, edges)
        print(f"stage 3: {time.time() - t:.0f} s", file=sys.stderr)
        outp.write_text(json.dumps(results))
    if args.stage in ("4", "all"):
        t = time.time()
        c4 = [{"id": f"{k}|{sh}|straight|serp-3d", "kind": "3d", "kernel": k, "share": sh,
               "spread": "straight", "scan": "serp-3d"} for k in MATRICES for sh in SWEEP]  # fmt: skip
        c4 += [{"id": f"{k}|2d|raster", "kind": "2d", "kernel": k, "scan": "raster"} for k in MATRICES]
        results["stage4"] = evaluate(c4, vols, scorers, [("end-drop-x", 0.02)])
        sub = [c for c in c4 if c["kernel"] in ("sierra-lite", "floyd-steinberg")]
        results["stage4_phantom"] = evaluate(sub, big, scorers, [("end-drop-x", 0.02)]) if big else []
        print(f"stage 4: {time.time() - t:.0f} s", file=sys.stderr)
        outp.write_text(json.dumps(results))
    if "stage4" in results:
        print(sweep_table(results, names))
    if args.stage in ("5", "all"):
        t = time.time()
        c5 = [{"id": f"{k}|1/16|straight|serp-3d", "kind": "3d", "kernel": k, "share": "1/16",
               "spread": "straight", "scan": "serp-3d"} for k in MATRICES]  # fmt: skip
        c5 += [{"id": f"{k}|2d|{sc}", "kind": "2d", "kernel": k, "scan": sc} for k in MATRICES
               for sc in ("raster", "serp")]  # fmt: skip
        c5 += [{"id": "plain|raster", "kind": "plain", "scan": "raster", "edges": [("drop", 0.02)]},
               {"id": "bayer3d-8", "kind": "bayer"}]  # fmt: skip
        results["stage5"] = evaluate(c5, allv, scorers, [("scan-end", 0.02)])
        print(f"stage 5: {time.time() - t:.0f} s", file=sys.stderr)
        outp.write_text(json.dumps(results))
    if "stage5" in results:
        print(detail_table(results["stage5"], alln, "Stage 5: the chosen rules (scan-end edge rule)"))
        print(criteria(results["stage5"] + results.get("stage2", []), alln, edge="scan-end"))
    if "stage3" in results:
        print(detail_table(results["stage3"], alln, "Stage 3: 2D per slice, all kernels x edge rules"))
        if "stage2" in results:
            print(criteria(results["stage2"] + results["stage3"], alln))


if __name__ == "__main__":
    main()
