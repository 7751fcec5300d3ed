"""The intensity stage of a recipe: normalize, then the whole-volume tone curve (CLAHE).

Every decision (`volbin.binarize`, `volbin.threshold`, `volbin.survey`, the batch cohort,
dithering) runs in the order normalize -> rescale -> curve -> decide.  `prepare` does what
comes before the block-wise rescale: the recipe's normalisation (`volbin.normalize`, its
statistics inside the recipe's mask, by default the non-zero voxels) and, for
``curve="clahe"``, the linear rescale and CLAHE of each whole 3D volume.  It returns the
volume the rest of the recipe sees and the recipe the rest runs (`downstream`): the
normalisation done, thresholds in ``normalized`` units become thresholds on that volume's
values, and after CLAHE the rescale is ``none`` (the CLAHE output is already in [0, 1]).

A whole-volume step (N4, CLAHE) is computed once into a temporary file (`volbin.io.spill`)
that the following passes read, instead of once per pass.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .masks import ARRAY, Mask, recipe_mask
from .normalize import fit_normalize
from .recipe import NORMALIZE_FIELDS, NORMALIZE_OPTIONS, Recipe
from .rescale import Transform, apply_transform, fit_transform
from .volume import Volume

__all__ = ["Intensity", "downstream", "normalized", "prepare", "relabel"]

#: What a decision's thresholds compare, when it is not the input's raw intensities.
NORMALIZED, CLAHE = "normalized", "clahe"
#: The keys of a decision record in raw units.
_RAW_KEYS = ("threshold_raw", "threshold_raw_minus_inf", "upper_raw", "low_raw", "high_raw")


@dataclass(frozen=True)
class Intensity:
    """What `prepare` gives the decision.

    Attributes
    ----------
    volume : Volume
        The input, normalised (a ``normalize`` step in its `steps`) and equalised by CLAHE,
        as the recipe asks; lazy.
    recipe : Recipe
        The recipe of the steps that follow (`downstream`).
    mask : Mask or None
        The recipe's mask, resolved on the input (``nonzero`` is the input's non-zero voxels).
    clahe : Transform or None
        With ``curve="clahe"``: the rescale and CLAHE fitted on the (normalised) input.
    thresholded : str or None
        ``"normalized"`` or ``"clahe"`` when the decision's thresholds are not in the input's
        raw units; None otherwise.
    """

    volume: Volume
    recipe: Recipe
    mask: Mask | None
    clahe: Transform | None = None
    thresholded: str | None = None

    def rescale_record(self, tr: Transform) -> dict[str, Any]:
        """The sidecar's rescale record: CLAHE's if any, else the decision's `tr`."""
        return (self.clahe or tr).record()


def downstream(recipe: Recipe) -> Recipe:
    """The recipe of what follows the intensity stage of `recipe`.

    The normalisation fields are cleared (done), ``units="normalized"`` becomes ``"raw"``
    (the normalised volume's values), and after CLAHE the rescale is ``none`` and the curve
    ``linear``.  Fields the result does not use are reset to their defaults.
    """
    if recipe.normalize is None and recipe.curve != "clahe":
        return recipe
    changes: dict[str, Any] = dict.fromkeys(NORMALIZE_FIELDS)
    if recipe.units == "normalized":
        changes["units"] = "raw"
    if recipe.curve == "clahe":
        changes.update(rescale="none", curve="linear", clip_limit=None, kernel_size=None, kernel_mm=None)
    return recipe.with_method(recipe.method, **changes)


def prepare(vol: Volume, recipe: Recipe, mask: Any = None, arrays: dict[str, Any] | None = None) -> Intensity:
    """Run the intensity stage of `recipe` on `vol` (statistics now, data lazy).

    Parameters
    ----------
    vol : Volume
    recipe : Recipe
    mask : array, dask array or Volume, optional
        The in-memory mask a recipe records as ``"<array>"``.
    arrays : dict, optional
        In-memory ``reference`` and ``reference_mask`` of ``normalize="match"`` recorded as
        ``"<array>"``.

    Raises
    ------
    VolbinDataError
        From the normalisation (no voxel in the mask, constant intensities, ...) or CLAHE (a
        volume above the memory limit).
    ValueError
        A recipe recording an in-memory array that is not given.
    """
    m = recipe_mask(recipe, vol, mask)
    thresholded = None
    if recipe.normalize is not None:
        vol = normalized(vol, recipe, m, arrays, spill=True)
        thresholded = NORMALIZED
    clahe = None
    if recipe.curve == "clahe":
        from .io import spill

        grouping = vol.grouping("stack" if recipe.scope == "stack" else "volume")
        clahe = fit_transform(vol, grouping, recipe, m)
        vol = vol.derive(spill(apply_transform(vol.data, clahe), "the CLAHE output"))
        thresholded = CLAHE
    return Intensity(vol, downstream(recipe), m, clahe, thresholded)


def normalized(
    vol: Volume,
    recipe: Recipe,
    m: Mask | None = None,
    arrays: dict[str, Any] | None = None,
    *,
    spill: bool = False,
    record: dict[str, Any] | None = None,
) -> Volume:
    """`vol` normalised by ``recipe.normalize`` with statistics inside the mask `m` (by
    default the non-zero voxels): lazy float32 data and the learnt parameters as a
    ``normalize`` step (with `record` added).  With `spill`, N4's output is computed once
    into a temporary file for the passes that follow."""
    method = recipe.normalize
    if method is None:
        raise ValueError("the recipe has no `normalize` method.")
    arrays = arrays or {}
    options: dict[str, Any] = {}
    for name in NORMALIZE_OPTIONS[method]:
        value = getattr(recipe, name)
        if value == ARRAY:
            if arrays.get(name) is None:
                raise ValueError(
                    f"the recipe's `{name}` was an in-memory array ({ARRAY}); pass it again as {name}=..."
                )
            value = arrays[name]
        if value is not None:
            options[name] = value
    scope = "stack" if recipe.scope == "stack" and method != "n4" else "volume"
    norm = fit_normalize(vol, method, mask=None if m is None else m.data, scope=scope, **options)
    data = norm.apply_data(vol.data)
    if method == "n4" and spill:
        from .io import spill as spill_to_disk

        data = spill_to_disk(data, "the N4-corrected volume")
    step = {**norm.record(), "within": "non-zero voxels" if m is None else m.describe(), **(record or {})}
    return vol.derive(data, step)


def relabel(decision: dict[str, Any], thresholded: str | None) -> dict[str, Any]:
    """A decision record in the units its thresholds compare.

    After a normalisation the raw-unit keys (``threshold_raw``, ``upper_raw``, ``low_raw``,
    ``high_raw``) hold normalised values: they are named ``*_normalized``.  After CLAHE there
    are no raw thresholds: those keys are None and the rescaled ones are what is compared.
    ``thresholded`` records which.
    """
    if thresholded is None:
        return decision
    out: dict[str, Any] = {}
    for key, value in decision.items():
        if key in _RAW_KEYS:
            if thresholded == NORMALIZED:
                out[key.replace("_raw", "_normalized")] = value
            elif key != "threshold_raw_minus_inf":
                out[key] = None
        elif key == "compared" and value == "raw":
            out[key] = NORMALIZED if thresholded == NORMALIZED else value
        else:
            out[key] = value
    out["thresholded"] = thresholded
    return out
