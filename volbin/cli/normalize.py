"""``volbin normalize IN OUT``: MRI intensity normalization, one volume or a cohort."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ._common import EXIT_OK, UsageError, add_common, chunk_bytes, int_in

EPILOG = """\
examples:
  volbin normalize t1.nii.gz t1_z.nii.gz --method zscore --mask brainmask.nii.gz
  volbin normalize sub-02.nii.gz sub-02_m.nii.gz --method match --reference sub-01.nii.gz
  volbin normalize 'sub-*/anat/*_T1w.nii.gz' --out-dir norm/ --method nyul --save-landmarks nyul.json
  volbin normalize new.nii.gz new_n.nii.gz --method nyul --landmarks nyul.json
  volbin normalize t1.nii.gz t1_ws.nii.gz --method whitestripe --contrast t1
  volbin normalize t1.nii.gz t1_n4.nii.gz --method n4 --mask brainmask.nii.gz   # needs volbin[itk]

Outputs are float32 with the input's header and a JSON sidecar holding the parameters
learnt (means, landmarks, the white stripe, the N4 settings).  Statistics are taken inside
--mask, by default the non-zero voxels.  N4 holds one volume in memory.
"""

METHODS = ("zscore", "match", "nyul", "whitestripe", "n4")
#: Method -> the options (flag dests) it uses.
USES = {
    "zscore": (),
    "match": ("reference",),
    "nyul": ("landmarks", "save_landmarks"),
    "whitestripe": ("contrast",),
    "n4": ("shrink_factor",),
}


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "normalize",
        help="normalize MRI intensities (z-score, matching, Nyul, WhiteStripe, N4)",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Normalize IN to OUT (or every input into --out-dir), statistics inside a mask.",
    )
    p.add_argument("inputs", nargs="+", help="input volume(s): paths or quoted globs; with --out-dir, many")
    p.add_argument("--out-dir", help="write <name>_norm<ext> for every input into this folder")
    p.add_argument("--method", choices=METHODS, required=True, help="the normalization")
    p.add_argument("--mask", metavar="M", help="statistics inside this mask (default: non-zero voxels)")
    p.add_argument(
        "--scope", choices=("volume", "stack"), default="volume", help="parameters per volume (default)"
    )
    p.add_argument("--reference", metavar="R", help="--method match: the volume whose histogram to match")
    p.add_argument(
        "--landmarks", metavar="JSON", help="--method nyul: a standard scale saved by --save-landmarks"
    )
    p.add_argument(
        "--save-landmarks", metavar="JSON", help="--method nyul: learn the scale from the inputs, save it"
    )
    p.add_argument(
        "--contrast", choices=("t1", "t2"), default=None, help="--method whitestripe: contrast (t1)"
    )
    p.add_argument("--shrink-factor", type=int_in(1, 16), default=None, help="--method n4: shrink factor (4)")
    p.add_argument("--force", action="store_true", help="overwrite existing outputs")
    add_common(p)
    p.set_defaults(func=run)


def _check(args: argparse.Namespace) -> None:
    for name in ("reference", "landmarks", "save_landmarks", "contrast", "shrink_factor"):
        if getattr(args, name) is not None and name not in USES[args.method]:
            raise UsageError(f"--{name.replace('_', '-')} is not used by --method {args.method}")
    if args.method == "match" and args.reference is None:
        raise UsageError("--method match needs --reference R")
    if args.method == "nyul" and (args.landmarks is None) == (args.save_landmarks is None):
        raise UsageError(
            "--method nyul needs --landmarks JSON (a saved scale) or --save-landmarks JSON (learn one)"
        )
    if args.out_dir is None and len(args.inputs) != 2:
        raise UsageError("give IN OUT, or inputs and --out-dir DIR")


def _mask(path: str | None, vol: Any, cb: int | None) -> Any:
    import numpy as np

    from ..errors import VolbinDataError
    from ..io import load

    if path is None:
        return None
    m = load(path, chunk_bytes=cb)
    if m.shape[:3] != vol.shape[:3] or not np.allclose(m.affine, vol.affine, atol=1e-3):
        raise VolbinDataError(
            f"{path}: the mask's grid (shape {m.shape}) is not the input's (shape {vol.shape}); "
            "resample it onto the input's grid first."
        )
    return m


def run(args: argparse.Namespace) -> int:
    from ..batch import expand_inputs
    from ..formats import image_ext
    from ..io import load, save, write_json
    from ..normalize import NyulLandmarks, fit_nyul, normalize

    _check(args)
    cb = chunk_bytes(args)
    if args.out_dir is None:
        pairs = [(args.inputs[0], Path(args.inputs[1]))]
    else:
        out_dir = Path(args.out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        pairs = []
        for src in expand_inputs(args.inputs):
            name = Path(src).name
            ext = image_ext(name) or ""
            pairs.append((src, out_dir / (name[: len(name) - len(ext)] + "_norm" + (ext or ".nii.gz"))))
    options: dict[str, Any] = {}
    if args.method == "match":
        options["reference"] = args.reference
    if args.method == "whitestripe" and args.contrast:
        options["contrast"] = args.contrast
    if args.method == "n4" and args.shrink_factor:
        options["shrink_factor"] = args.shrink_factor
    if args.method == "nyul":
        if args.save_landmarks:
            vols = [load(src, chunk_bytes=cb, volume_axis=args.volume_axis) for src, _ in pairs]
            masks = [_mask(args.mask, v, cb) for v in vols] if args.mask else None
            landmarks = fit_nyul(vols, masks)
            if Path(args.save_landmarks).exists() and not args.force:
                raise UsageError(f"{args.save_landmarks} exists; pass --force to overwrite it")
            write_json(landmarks.to_dict(), args.save_landmarks)
            print(f"wrote {args.save_landmarks} (Nyul landmarks from {len(vols)} volume(s))")
        else:
            landmarks = NyulLandmarks.from_json(Path(args.landmarks).read_text(encoding="utf-8"))
        options["landmarks"] = landmarks
    for src, out in pairs:
        vol = load(src, chunk_bytes=cb, volume_axis=args.volume_axis)
        res = normalize(vol, args.method, mask=_mask(args.mask, vol, cb), scope=args.scope, **options)
        path = save(res, out, force=args.force, dtype="float32")
        print(f"wrote {path} ({args.method})")
    return EXIT_OK
