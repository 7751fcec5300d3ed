"""Fixed CLI commands on the phantom, compared with stored hashes of their outputs.

The voxel data and the sidecar's recipes and thresholds of each command are hashed and
compared with ``tests/data/golden.json``.  A change of structure must leave every hash as it
is; a deliberate change of results updates the file (``VOLBIN_UPDATE_GOLDEN=1 pytest
tests/test_golden.py``) and says why in its commit.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from volbin.cli import main
from volbin.io import sidecar_path
from volbin.phantom import phantom

GOLDEN = Path(__file__).parent / "data" / "golden.json"

#: name -> (input, output name, arguments)
COMMANDS: dict[str, tuple[str, str, list[str]]] = {
    "otsu-volume": ("4d", "otsu.nii.gz", ["--method", "otsu", "--scope", "volume"]),
    "otsu-stack": ("4d", "otsu_stack.nii", ["--method", "otsu", "--scope", "stack"]),
    "li-slice": ("3d", "li.nii.gz", ["--method", "li", "--scope", "slice", "--axis", "y"]),
    "yen-percentile": ("3d", "yen.nii", ["--method", "yen", "--rescale", "percentile"]),
    "triangle-gamma": ("3d", "tri.nii", ["--method", "triangle", "--curve", "gamma", "--gamma", "0.7"]),
    "isodata-equalize": ("3d", "iso.nii", ["--method", "isodata", "--curve", "equalize"]),
    "mean-log": ("3d", "mean.nii", ["--method", "mean", "--curve", "log"]),
    "value-raw": ("3d", "value.nii", ["--method", "value", "--threshold", "300", "--units", "raw"]),
    "stochastic": ("4d", "sto.nii.gz", ["--method", "stochastic", "--seed", "7"]),
    "dither-slice": ("3d", "fs.nii", ["--method", "dither", "--scope", "slice"]),
    "dither-volume": (
        "3d",
        "stucki3d.nii",
        ["--method", "dither", "--kernel", "stucki", "--scope", "volume", "--serpentine"],
    ),
    "dither-jitter": (
        "3d",
        "jit.nii",
        ["--method", "dither", "--jitter", "0.2", "--seed", "3", "--scope", "slice"],
    ),
    "ordered-bayer": ("3d", "bayer.nii", ["--method", "ordered", "--matrix", "8"]),
    "npy-otsu": ("npy", "otsu.npy", ["--method", "otsu", "--volume-axis", "0"]),
}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("golden")
    p3 = phantom((32, 36, 30), seed=3)
    p4 = phantom((24, 28, 22), n_volumes=2, seed=4)
    paths = {"3d": d / "p3.nii.gz", "4d": d / "p4.nii.gz", "npy": d / "p4.npy"}
    nib.save(p3.to_nifti(), paths["3d"])
    nib.save(p4.to_nifti(), paths["4d"])
    np.save(paths["npy"], np.moveaxis(np.asarray(p4.intensity), -1, 0))
    return paths


def _digest(out: Path) -> dict[str, str]:
    if out.name.endswith(".npy"):
        data = np.load(out)
    else:
        data = np.asanyarray(nib.load(out).dataobj)
    side = json.loads(sidecar_path(out).read_text())
    record = [
        {"recipe": s.get("recipe"), "decision": s.get("decision")} for s in side["steps"] if "recipe" in s
    ]
    text = json.dumps(record, sort_keys=True)
    return {
        "data": hashlib.sha256(np.ascontiguousarray(data).tobytes()).hexdigest()[:16],
        "shape": "x".join(map(str, data.shape)),
        "record": hashlib.sha256(text.encode()).hexdigest()[:16],
    }


def test_outputs_match_stored_hashes(inputs: dict[str, Path], tmp_path: Path) -> None:
    got = {}
    for name, (src, out_name, args) in COMMANDS.items():
        out = tmp_path / name / out_name
        out.parent.mkdir()
        assert main(["binarize", str(inputs[src]), str(out), "--no-progress", *args]) == 0, name
        got[name] = _digest(out)
    if os.environ.get("VOLBIN_UPDATE_GOLDEN"):
        GOLDEN.write_text(json.dumps(got, indent=1, sort_keys=True) + "\n")
    stored = json.loads(GOLDEN.read_text())
    changed = {k: (stored.get(k), v) for k, v in got.items() if stored.get(k) != v}
    assert not changed, f"outputs changed: {changed}"
