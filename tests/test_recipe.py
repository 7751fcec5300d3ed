"""Tests of volbin.recipe: validation names the parameter and the value; JSON round trips."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from volbin.recipe import CURVES, METHODS, RESCALE_METHODS, Recipe, unused_options


def used(kw: dict, method: str = "otsu") -> dict:
    """`kw` without the options `method` does not use (volbin refuses those)."""
    drop = {n for n, _ in unused_options({**kw, "method": method})}
    return {k: v for k, v in kw.items() if k not in drop}


SETTINGS = settings(max_examples=50, deadline=None, database=None)

BAD = [
    ({"method": "otsuu"}, "method", "'otsuu'"),
    ({"scope": "voxel"}, "scope", "'voxel'"),
    ({"rescale": "zscore"}, "rescale", "'zscore'"),
    ({"curve": "s-curve"}, "curve", "'s-curve'"),
    ({"curve": "gamma", "gain": 3.0}, "gain", "curve='gamma'"),
    ({"curve": "sigmoid", "gamma": 2.0}, "gamma", "curve='sigmoid'"),
    ({"curve": "sigmoid", "clip_limit": 0.1}, "clip_limit", "curve='sigmoid'"),
    ({"curve": "linear", "kernel_mm": 5.0}, "kernel_mm", "curve='linear'"),
    ({"curve": "sigmoid", "gain": 0.0}, "gain", "0.0"),
    ({"curve": "sigmoid", "cutoff": "x"}, "cutoff", "'x'"),
    ({"curve": "clahe", "clip_limit": 1.5}, "clip_limit", "1.5"),
    ({"curve": "clahe", "kernel_size": (4, 4)}, "kernel_size", "(4, 4)"),
    ({"curve": "clahe", "kernel_size": 0}, "kernel_size", "0"),
    ({"curve": "clahe", "kernel_mm": -1.0}, "kernel_mm", "-1.0"),
    ({"curve": "clahe", "kernel_mm": 5.0, "kernel_size": 3}, "kernel_mm", "5.0"),
    ({"curve": "clahe", "method": "value", "threshold": 0.5, "units": "raw"}, "units", "'raw'"),
    ({"curve": "clahe", "scope": "slice"}, "scope", "'slice'"),
    ({"units": "hu"}, "units", "'hu'"),
    ({"axis": "w"}, "axis", "'w'"),
    ({"axis": 3}, "axis", "3"),
    ({"percentiles": (50.0, 10.0)}, "percentiles", "(50.0, 10.0)"),
    ({"percentiles": (-1.0, 50.0)}, "percentiles", "(-1.0, 50.0)"),
    ({"percentiles": (1.0, 101.0)}, "percentiles", "(1.0, 101.0)"),
    ({"percentiles": (5.0,)}, "percentiles", "(5.0,)"),
    ({"percentiles": "ab"}, "percentiles", "'ab'"),
    ({"percentiles": (float("nan"), 50.0)}, "percentiles", "nan"),
    ({"value_range": (2.0, 1.0)}, "value_range", "(2.0, 1.0)"),
    ({"value_range": (0.0, float("inf"))}, "value_range", "inf"),
    ({"value_range": ("a", 1)}, "value_range", "('a', 1)"),
    ({"rescale": "fixed"}, "value_range", ""),
    ({"nbins": 1}, "nbins", "1"),
    ({"nbins": 2.5}, "nbins", "2.5"),
    ({"nbins": True}, "nbins", "True"),
    ({"seed": -1}, "seed", "-1"),
    ({"seed": 1.5}, "seed", "1.5"),
    ({"gamma": 0}, "gamma", "0"),
    ({"gamma": -2.0}, "gamma", "-2.0"),
    ({"gamma": "abc"}, "gamma", "'abc'"),
    ({"gamma": None}, "gamma", "None"),
    ({"gamma": float("inf")}, "gamma", "inf"),
    ({"log_gain": 0.0}, "log_gain", "0.0"),
    ({"log_gain": float("nan")}, "log_gain", "nan"),
    ({"method": "value"}, "threshold", ""),
    ({"method": "value", "threshold": "abc"}, "threshold", "'abc'"),
    ({"method": "value", "threshold": float("nan")}, "threshold", "nan"),
    ({"method": "otsu", "threshold": 0.5}, "threshold", "'otsu'"),
    ({"jitter": 1.5}, "jitter", "1.5"),
    ({"jitter": "x"}, "jitter", "'x'"),
    ({"upsample": 0.5}, "upsample", "0.5"),
    ({"upsample": (1, 2)}, "upsample", "(1, 2)"),
    ({"upsample": ("a", 1, 1)}, "upsample", "('a', 1, 1)"),
    ({"matrix": 6}, "matrix", "6"),
    ({"matrix": 1}, "matrix", "1"),
    ({"pattern": "dots"}, "pattern", "'dots'"),
]


@pytest.mark.parametrize("options,name,shown", BAD, ids=[f"{b[1]}={b[2]}" for b in BAD])
def test_validation_names_parameter_and_value(options, name, shown):
    with pytest.raises(ValueError) as info:
        Recipe(**options)
    message = str(info.value)
    assert f"`{name}" in message or f"{name}=" in message, message
    assert shown in message, message


def test_defaults_and_normalisation():
    r = Recipe()
    assert (r.method, r.scope, r.axis, r.rescale, r.curve, r.nbins) == (
        "otsu",
        "volume",
        "z",
        "minmax",
        "linear",
        256,
    )
    r = Recipe(percentiles=[2, 98], rescale="percentile", curve="gamma", gamma=2, method="value", threshold=1)
    assert r.percentiles == (2.0, 98.0) and r.gamma == 2.0 and r.threshold == 1.0
    r = Recipe(value_range=[0, 10], rescale="fixed", upsample=2, method="dither")
    assert r.value_range == (0.0, 10.0) and r.upsample == (2.0, 2.0, 2.0)
    assert Recipe(axis=1, scope="slice").axis == 1 and Recipe(axis="X", scope="slice").axis == "X"


def test_from_dict_rejects_unknown_fields():
    with pytest.raises(ValueError, match="unknown recipe fields: bins, colour"):
        Recipe.from_dict({"method": "otsu", "colour": 1, "bins": 3})


def test_replace_validates():
    r = Recipe()
    assert r.replace(scope="slice").scope == "slice"
    with pytest.raises(ValueError, match="`scope`"):
        r.replace(scope="everything")


finite = st.floats(-1e6, 1e6, allow_nan=False)


@st.composite
def recipes(draw) -> Recipe:
    method = draw(st.sampled_from(METHODS))
    rescale = draw(st.sampled_from(RESCALE_METHODS))
    lo = draw(finite)
    value_range = (lo, lo + draw(st.floats(1e-3, 1e6))) if rescale == "fixed" or draw(st.booleans()) else None
    p_lo = draw(st.floats(0, 99))
    kernel = draw(
        st.one_of(
            st.sampled_from(["floyd-steinberg", "stucki"]),
            st.lists(st.lists(st.floats(0, 1), min_size=3, max_size=3), min_size=2, max_size=2),
        )
    )
    up = draw(st.one_of(st.none(), st.tuples(*[st.floats(1, 8)] * 3)))
    curve = draw(st.sampled_from(CURVES))
    return Recipe(
        **used(
            dict(
                method=method,
                scope=draw(
                    st.sampled_from(["stack", "volume"] if curve == "clahe" else ["stack", "volume", "slice"])
                ),
                axis=draw(st.sampled_from(["x", "y", "z", 0, 1, 2])),
                rescale=rescale,
                percentiles=(p_lo, draw(st.floats(p_lo + 0.5, 100))),
                value_range=value_range,
                curve=curve,
                gamma=draw(st.floats(1e-3, 1e3)),
                log_gain=draw(st.floats(1e-3, 1e6)),
                gain=draw(st.floats(1e-3, 1e3)),
                cutoff=draw(finite),
                clip_limit=draw(st.floats(1e-3, 1)),
                kernel_size=draw(st.one_of(st.none(), st.integers(1, 64))),
                threshold=draw(finite) if method == "value" else None,
                percentile=draw(st.floats(0, 100)) if method == "percentile" else None,
                **({"low": 0.2, "high": draw(st.floats(0.2, 1.0))} if method == "hysteresis" else {}),
                units=draw(st.sampled_from(["rescaled"] if curve == "clahe" else ["rescaled", "raw"])),
                nbins=draw(st.integers(2, 2**16)),
                seed=draw(st.integers(0, 2**64 - 1)),
                kernel=kernel,
                serpentine=draw(st.booleans()),
                jitter=draw(st.floats(0, 1)),
                upsample=up,
                matrix=2 ** draw(st.integers(1, 6)),
                pattern=draw(st.sampled_from(["bayer", "blue-noise"])),
                extra=draw(
                    st.dictionaries(st.text(max_size=5), st.integers() | st.text(max_size=5), max_size=3)
                ),
            ),
            method,
        )
    )


@SETTINGS
@given(recipes())
def test_json_round_trip(recipe):
    text = recipe.to_json()
    again = Recipe.from_json(text)
    assert again == recipe
    assert again.to_dict() == recipe.to_dict()
    assert json.loads(text) == recipe.to_dict()
    assert Recipe.from_dict(json.loads(json.dumps(recipe.to_dict(), sort_keys=True))) == recipe
