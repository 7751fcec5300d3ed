"""Agreement of volbin's ImageJ/ITK thresholds with SimpleITK's filters, in histogram bins.

    python scripts/compare_itk_thresholds.py            # 256 bins
    python scripts/compare_itk_thresholds.py --nbins 128

For each method and volume (the phantom, nibabel's T1, dipy's b0 volumes and the T1 head of
Debian's insighttoolkit5-examples, when installed) it prints volbin's threshold minus
SimpleITK's ``<Name>ThresholdImageFilter`` threshold, as bin indices: volbin's in its bins
over [min, max], ITK's in its own (1/25600 wider).  0 is the same bin; "both fail" means
ITK raises and volbin raises VolbinDataError.  Needs SimpleITK (``pip install SimpleITK``).
"""

from __future__ import annotations

import argparse
import warnings
from importlib import resources
from pathlib import Path

import nibabel as nib
import numpy as np
import SimpleITK as sitk

import volbin
from volbin.errors import VolbinDataError
from volbin.phantom import phantom

FILTERS = {
    "huang": sitk.HuangThresholdImageFilter,
    "intermodes": sitk.IntermodesThresholdImageFilter,
    "kittler-illingworth": sitk.KittlerIllingworthThresholdImageFilter,
    "max-entropy": sitk.MaximumEntropyThresholdImageFilter,
    "moments": sitk.MomentsThresholdImageFilter,
    "renyi-entropy": sitk.RenyiEntropyThresholdImageFilter,
    "shanbhag": sitk.ShanbhagThresholdImageFilter,
}
ITK_T1 = Path("/usr/share/doc/insighttoolkit5-examples/examples/Data/KmeansTest_T1UCharRaw.nii.gz")


def volumes() -> dict[str, np.ndarray]:
    out = {"phantom": phantom((48, 56, 48), seed=0).intensity.astype(np.float64)}
    paths = {"nibabel T1": Path(nib.__file__).parent / "tests" / "data" / "anatomical.nii"}
    try:
        import dipy

        files = Path(str(resources.files(dipy) / "data" / "files"))
        paths["dipy b0"] = files / "S0_10slices.nii.gz"
        paths["dipy aniso"] = files / "aniso_vox.nii.gz"
    except ImportError:
        pass
    paths["ITK T1"] = ITK_T1
    for name, path in paths.items():
        if path.is_file():
            x = np.asarray(nib.load(path).dataobj, dtype=np.float64)
            out[name] = x[..., 0] if x.ndim == 4 else x
    return out


def itk_threshold(x: np.ndarray, method: str, nbins: int) -> float | None:
    f = FILTERS[method]()
    f.SetNumberOfHistogramBins(nbins)
    try:
        f.Execute(sitk.GetImageFromArray(np.ascontiguousarray(x)))
    except RuntimeError:
        return None
    return f.GetThreshold()


def bins_apart(x: np.ndarray, ours: float, itk: float, nbins: int) -> float:
    lo, hi = float(x.min()), float(x.max())
    itk_width = (hi - lo) * (1 + 1 / (100 * nbins)) / nbins
    return ((ours - lo) / ((hi - lo) / nbins) - 0.5) - ((itk - lo) / itk_width - 0.5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nbins", type=int, default=256)
    args = parser.parse_args()
    data = volumes()
    versions = f"SimpleITK {sitk.Version.VersionString()} (ITK {sitk.Version.ITKVersionString()})"
    print(f"{versions}, {args.nbins} bins")
    print("| method | " + " | ".join(data) + " |")
    print("|---|" + "---|" * len(data))
    for method in FILTERS:
        cells = []
        for x in data.values():
            ref = itk_threshold(x, method, args.nbins)
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    ours = volbin.threshold(x, method, nbins=args.nbins)
            except VolbinDataError:
                ours = None
            if ref is None or ours is None:
                cells.append("both fail" if ref is None and ours is None else f"ITK {ref}, volbin {ours}")
            else:
                cells.append(f"{bins_apart(x, ours, ref, args.nbins):+.0f}")
        print(f"| {method} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
