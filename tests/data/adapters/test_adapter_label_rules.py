"""The BI-RADS label-rule options (birads3, malignancy_uncertainty): values checked before any
file is read, by every adapter taking them and by malignancy_from_birads."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from fedmammo.data.adapters import load_manifest, option_values_problem
from fedmammo.data.adapters._common import label_rule_problem, malignancy_from_birads
from fedmammo.errors import ConfigError

#: Formats whose malignancy is derived from BI-RADS, with the dataset name their errors say.
RULED = {"inbreast": "INbreast", "vindr-mammo": "VinDr-Mammo"}
BIRADS3_ALLOWED = "allowed values: benign, exclude (case-insensitive)"
U_ALLOWED = "allowed values: a number in [0, 1] (0 = certain; the loss weighs a label by 1 - u)"
KEYS_ALLOWED = "allowed keys: 1, 2, 3, 4, 4a, 4b, 4c, 5, 6"


@pytest.mark.parametrize("fmt", sorted(RULED))
@pytest.mark.parametrize("value", ["benin", "exclude it", "", None, True])
def test_an_unknown_birads3_is_refused_naming_the_allowed_values(
    tmp_path: Path, fmt: str, value: object
) -> None:
    """Regression: any value but the exact string 'exclude' meant benign."""
    # Execute / Assert: refused before any file is looked for (the root is empty)
    with pytest.raises(ConfigError) as err:
        load_manifest(fmt, tmp_path, birads3=value)
    assert str(err.value) == (
        f"{RULED[fmt]}: option birads3 {value!r} is not allowed; {BIRADS3_ALLOWED}"
    )


@pytest.mark.parametrize(
    ("value", "said"),
    [
        ({"4c": 7}, f"malignancy_uncertainty['4c'] 7 is not allowed; {U_ALLOWED}"),
        ({"5": -1}, f"malignancy_uncertainty['5'] -1 is not allowed; {U_ALLOWED}"),
        ({"5": float("nan")}, f"malignancy_uncertainty['5'] nan is not allowed; {U_ALLOWED}"),
        ({"4a": "0.5"}, f"malignancy_uncertainty['4a'] '0.5' is not allowed; {U_ALLOWED}"),
        ({"4a": True}, f"malignancy_uncertainty['4a'] True is not allowed; {U_ALLOWED}"),
        (
            {"7": 0.1},
            "malignancy_uncertainty key '7' is not a BI-RADS category with a malignancy "
            f"label; {KEYS_ALLOWED}",
        ),
        (
            {0: 0.1},
            "malignancy_uncertainty key 0 is not a BI-RADS category with a malignancy "
            f"label; {KEYS_ALLOWED}",
        ),
        (
            [0.1, 0.2],
            "malignancy_uncertainty [0.1, 0.2] is not a mapping; allowed: {BI-RADS category: "
            "number in [0, 1]} with categories 1, 2, 3, 4, 4a, 4b, 4c, 5, 6",
        ),
    ],
)
@pytest.mark.parametrize("fmt", sorted(RULED))
def test_a_malignancy_uncertainty_outside_0_1_or_of_no_category_is_refused(
    tmp_path: Path, fmt: str, value: object, said: str
) -> None:
    """Regression: {"4c": 7, "5": -1} was stored as u_malignancy 7.0 / -1.0."""
    # Execute / Assert
    with pytest.raises(ConfigError) as err:
        load_manifest(fmt, tmp_path, malignancy_uncertainty=value)
    assert str(err.value) == f"{RULED[fmt]}: option {said}"


def test_birads3_is_read_case_insensitively(tmp_path: Path, builders) -> None:
    # Prepare: 20586908 is BI-RADS 3
    builders["inbreast"](tmp_path)

    # Execute
    excluded = load_manifest("inbreast", tmp_path, birads3="Exclude").set_index("image_id")
    benign = load_manifest("inbreast", tmp_path, birads3=" BENIGN ").set_index("image_id")

    # Assert
    assert pd.isna(excluded.loc["20586908", "malignant"])
    assert benign.loc["20586908", "malignant"] == 0
    assert benign.loc["20586908", "u_malignancy"] == pytest.approx(0.02)


def test_uncertainty_keys_read_like_birads_values(tmp_path: Path, builders) -> None:
    """Regression: a key '4C' (or 'BI-RADS 6') was silently not applied."""
    # Prepare: 22678646 is BI-RADS 4c, 20586934 BI-RADS 6, 22678622 BI-RADS 1
    builders["inbreast"](tmp_path)

    # Execute
    df = load_manifest(
        "inbreast", tmp_path, malignancy_uncertainty={"4C": 0.25, "BI-RADS 6": 0.01, 1: 0.05}
    ).set_index("image_id")

    # Assert
    assert df.loc["22678646", "u_malignancy"] == pytest.approx(0.25)
    assert df.loc["20586934", "u_malignancy"] == pytest.approx(0.01)
    assert df.loc["22678622", "u_malignancy"] == pytest.approx(0.05)


def test_malignancy_from_birads_refuses_an_unknown_rule() -> None:
    # Execute / Assert
    assert malignancy_from_birads("3", birads3="EXCLUDE") == (None, None)
    assert malignancy_from_birads("4c", uncertainty={"4C": 1}) == (1, 1.0)
    with pytest.raises(ConfigError) as err:
        malignancy_from_birads("3", birads3="benin")
    assert str(err.value) == (
        f"malignancy_from_birads: option birads3 'benin' is not allowed; {BIRADS3_ALLOWED}"
    )
    with pytest.raises(ConfigError, match=r"malignancy_uncertainty\['5'\] 1.5 is not allowed"):
        malignancy_from_birads("5", uncertainty={"5": 1.5})


def test_option_values_problem_checks_the_formats_taking_the_rule() -> None:
    # Execute / Assert: the formats taking the rule are checked; the others do not take it
    bad = {"birads3": "benin"}
    for fmt in RULED:
        assert option_values_problem(fmt, bad) == label_rule_problem(bad)
        assert option_values_problem(fmt, {"birads3": "exclude"}) is None
        assert option_values_problem(fmt, {"malignancy_uncertainty": {"4a": 0.7}}) is None
    assert option_values_problem("rsna", bad) is None
    assert label_rule_problem({"malignancy_uncertainty": None}) is None
