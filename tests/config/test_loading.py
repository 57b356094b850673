"""Overrides are named in errors, an inline recipe takes the scenario's overrides, and the
run folder's resolved scenario loads alone to the same scenario."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from fedmammo.config import load_scenario
from fedmammo.config.loading import (
    RESOLVED,
    edited_resolved,
    load_scenario_traced,
    resolved_mapping,
    write_resolved,
)
from fedmammo.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
INLINE = """
centres:
  - {profile: tiny, name: a}
  - {profile: tiny, name: t, role: test}
strategy:
  kind: fedavg
  params: {rounds: 3}
strategy_overrides: {params.rounds: 5}
"""


def test_an_inline_recipe_takes_the_scenarios_overrides(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(INLINE)
    assert load_scenario(path).recipe.typed_params().rounds == 5
    assert load_scenario(path, sets={"strategy.params.rounds": 9}).recipe.typed_params().rounds == 9
    with pytest.raises(ConfigError, match=r"--set strategy.params.rounds=0: key 'strategy.params"):
        load_scenario(path, sets={"strategy.params.rounds": 0})


def test_a_misspelt_required_key_is_one_line_with_the_fix(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(INLINE.replace("centres:", "centers:"))
    with pytest.raises(ConfigError) as err:
        load_scenario(path)
    assert (
        str(err.value) == f"{path}: key 'centers': unknown key; did you mean 'centres' (required)?"
    )


@pytest.mark.parametrize(
    ("sets", "said"),
    [
        ({"image_size": 32}, "image_size must be [height, width] (e.g. [256, 192]), got 32"),
        ({"image_size": [64, 48, 3]}, "image_size must be [height, width] (e.g. [256, 192])"),
        ({"seeds": "x"}, "'seeds': Input should be a valid list, got x (a string)"),
        ({"data_seed": "abc"}, "'data_seed': Input should be a valid integer, unable to parse "),
        ({"strategy_overrides": [1]}, "valid dictionary, got [1] (a list)"),
        ({"centres": 5}, "'centres': Input should be a valid list, got 5 (an integer)"),
    ],
)
def test_a_value_of_the_wrong_type_is_shown_with_what_was_expected(tmp_path, sets, said):
    # Prepare
    path = tmp_path / "s.yaml"
    path.write_text(INLINE)
    # Execute
    with pytest.raises(ConfigError) as err:
        load_scenario(path, sets=sets)
    # Assert: one line naming the --set, the key, what is expected and what was given
    ((key, value),) = sets.items()
    assert str(err.value).startswith(f"--set {key}=")
    assert said in str(err.value) and "\n" not in str(err.value)


def test_a_centre_override_error_names_the_override(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(
        INLINE.replace(
            "{profile: tiny, name: a}",
            "{profile: tiny, name: a, overrides: {labels.missing.malignancy: 2}}",
        )
    )
    with pytest.raises(ConfigError) as err:
        load_scenario(path)
    assert str(err.value).startswith(
        f"{path} centres.0.overrides 'labels.missing.malignancy': key 'labels.missing'"
    )


@pytest.mark.parametrize("quick", [False, True])
@pytest.mark.parametrize("scenario", sorted(p.name for p in (ROOT / "scenarios").glob("*.yaml")))
def test_the_resolved_copy_loads_alone_to_the_same_scenario(tmp_path, scenario, quick):
    original = load_scenario(ROOT / "scenarios" / scenario, quick=quick)
    copy = tmp_path / "scenario.resolved.yaml"
    copy.write_text(yaml.safe_dump(resolved_mapping(original, quick=quick)))
    again = load_scenario(copy, quick=quick)
    assert again.resolved_profiles == original.resolved_profiles
    assert again.recipe.typed_params(quick=quick) == original.recipe.typed_params(quick=quick)
    assert (again.seeds, again.image_size, again.sweep) == (
        original.seeds,
        original.image_size,
        original.sweep,
    )
    with pytest.raises(ConfigError, match="takes no overrides"):
        load_scenario(copy, sets={"seeds": [1]})


# ---- overrides: a mapping merges (the nested form is the dotted form); lists replace

SEGMENT = "{manufacturer: Mc, patients: 8, prevalence: 0.5}"
NESTED = f"""
centres:
  - profile: tiny
    name: a
    overrides:
      data: {{synthetic: {{segments: [{SEGMENT}], lesion_contrast: 2}}}}
      labels: {{reader_noise: 0.2, missing: {{acr: 0.5}}}}
  - {{profile: tiny, name: t, role: test}}
strategy: fedavg
strategy_overrides:
  params: {{rounds: 4}}
  params.train: {{epochs: 3, lr: 0.01}}
"""
DOTTED = f"""
centres:
  - profile: tiny
    name: a
    overrides:
      data.synthetic.segments: [{SEGMENT}]
      data.synthetic.lesion_contrast: 2
      labels.reader_noise: 0.2
      labels.missing.acr: 0.5
  - {{profile: tiny, name: t, role: test}}
strategy: fedavg
strategy_overrides:
  params.rounds: 4
  params.train.epochs: 3
  params.train.lr: 0.01
"""


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize("quick", [False, True])
def test_a_nested_override_equals_its_dotted_form(tmp_path, quick):
    # Prepare
    nested = load_scenario(_write(tmp_path, "nested.yaml", NESTED), quick=quick)
    dotted = load_scenario(_write(tmp_path, "dotted.yaml", DOTTED), quick=quick)
    # Assert: the same profiles and recipe; the keys not named keep the profile's / recipe's
    assert nested.resolved_profiles == dotted.resolved_profiles
    assert nested.recipe.typed_params(quick=quick) == dotted.recipe.typed_params(quick=quick)
    a = nested.resolved_profiles["a"]
    assert a.data.synthetic.image_height == 64  # tiny's, not the default 256
    assert a.data.synthetic.lesion_contrast == 2
    assert [s.manufacturer for s in a.data.synthetic.segments] == ["Mc"]  # a list replaces
    assert a.labels.missing == {"malignancy": 0.25, "acr": 0.5}
    assert a.labels.uncertainty == {"acr": 0.2} and a.labels.reader_noise == 0.2
    params = nested.recipe.typed_params(quick=quick)
    assert (params.rounds, params.train.epochs, params.train.lr) == (4, 3, 0.01)  # over quick
    assert (params.train.batch_size, params.train.sampler) == (16, "balanced_labels")


def test_a_set_and_a_quick_block_merge_a_mapping_too(tmp_path):
    # Prepare: tiny's segments and labels, edited by --set and the quick block in both forms
    base = "centres:\n  - {profile: tiny, name: a}\n  - {profile: tiny, name: t, role: test}\n"
    base += "strategy: fedavg\n"
    nested = _write(
        tmp_path,
        "n.yaml",
        base + "quick: {centres.a.data: {synthetic: {image_height: 128}}}\n",
    )
    quick = "quick: {centres.a.data.synthetic.image_height: 128}\n"
    dotted = _write(tmp_path, "d.yaml", base + quick)
    # Execute
    got = [
        load_scenario(path, quick=True, sets=sets).resolved_profiles["a"]
        for path, sets in [
            (nested, {"centres.a.labels": {"reader_noise": 0.3}}),
            (dotted, {"centres.a.labels.reader_noise": 0.3}),
        ]
    ]
    # Assert
    assert got[0] == got[1]
    assert got[0].data.synthetic.image_height == 128 and len(got[0].data.synthetic.segments) == 2
    assert got[0].labels.missing == {"malignancy": 0.25} and got[0].labels.reader_noise == 0.3


def test_a_set_of_a_key_the_overrides_already_give_applies_over_it(tmp_path):
    # Prepare: the scenario gives segment 0 a vendor, --set its patients (the same key)
    path = _write(
        tmp_path,
        "s.yaml",
        INLINE.replace(
            "{profile: tiny, name: a}",
            "{profile: tiny, name: a, overrides: {data.synthetic.segments.0: {manufacturer: Mc}}}",
        ),
    )
    # Execute
    sets = {"centres.a.data.synthetic.segments.0": {"patients": 3}}
    segment = load_scenario(path, sets=sets).resolved_profiles["a"].data.synthetic.segments[0]
    # Assert
    assert (segment.manufacturer, segment.patients, segment.lesion_prevalence) == ("Mc", 3, 0.5)


def test_a_set_over_an_override_that_clears_starts_from_the_cleared_value(tmp_path):
    # Prepare: a profile with DP; the scenario clears its privacy, --set gives it other DP
    dp = (ROOT / "centres" / "tiny.yaml").read_text() + "privacy: {target_epsilon: 8.0}\n"
    _write(tmp_path, "dp.yaml", dp)
    text = INLINE.replace("{profile: tiny, name: a}", "{profile: dp.yaml, name: a}")
    text = text.replace("name: a}", "name: a, overrides: {privacy: {}}}")
    path = _write(tmp_path, "s.yaml", text)
    # Execute
    sets = {"centres.a.privacy": {"noise_multiplier": 1.1}}
    privacy = load_scenario(path, sets=sets).resolved_profiles["a"].privacy
    # Assert: the profile's target epsilon stays cleared
    assert (privacy.target_epsilon, privacy.noise_multiplier) == (None, 1.1)


def test_an_empty_mapping_clears_what_it_lands_on(tmp_path):
    # Prepare: a profile of its own with DP, and a scenario that gives the centre no privacy
    dp = (ROOT / "centres" / "tiny.yaml").read_text() + "privacy: {target_epsilon: 8.0}\n"
    _write(tmp_path, "dp.yaml", dp)
    text = INLINE.replace("{profile: tiny, name: a}", "{profile: dp.yaml, name: a}")
    plain = _write(tmp_path, "plain.yaml", text)
    cleared = _write(
        tmp_path,
        "cleared.yaml",
        text.replace("name: a}", "name: a, overrides: {privacy: {}, labels.missing: {}}}"),
    )
    # Execute
    kept = load_scenario(plain).resolved_profiles["a"]
    gone = load_scenario(cleared).resolved_profiles["a"]
    # Assert
    assert kept.privacy.enabled and kept.labels.missing == {"malignancy": 0.25}
    assert not gone.privacy.enabled and gone.labels.missing == {}


def test_an_unknown_key_in_a_nested_override_is_named_by_its_full_path(tmp_path):
    # Prepare
    path = _write(
        tmp_path,
        "s.yaml",
        INLINE.replace(
            "{profile: tiny, name: a}",
            "{profile: tiny, name: a, overrides: {data: {synthetic: {lesion_contarst: 2}}}}",
        ),
    )
    # Execute
    with pytest.raises(ConfigError) as err:
        load_scenario(path)
    # Assert: one line, naming the override and the full dotted key
    assert str(err.value) == (
        f"{path} centres.0.overrides 'data': key 'data.synthetic.lesion_contarst': "
        "unknown key; did you mean 'lesion_contrast'?"
    )
    inline = _write(tmp_path, "i.yaml", INLINE)
    with pytest.raises(ConfigError, match=r"^--set strategy.params.train=.*'strategy.params.tr"):
        load_scenario(inline, sets={"strategy.params.train": {"x": 1}})


# ---- where profiles and recipes are looked up: the user's folders, then the shipped ones

MINE = """
centres:
  - {profile: mytiny, name: a}
  - {profile: tiny, name: t, role: test}
strategy: fedavg
"""


def test_a_users_centres_folder_adds_to_the_shipped_ones(tmp_path, monkeypatch):
    # Prepare: the user's own folder, with a profile of its own next to the shipped ones
    (tmp_path / "centres").mkdir()
    tiny = (ROOT / "centres" / "tiny.yaml").read_text()
    (tmp_path / "centres" / "mytiny.yaml").write_text(tiny.replace("source: T", "source: M"))
    path = _write(tmp_path, "my.yaml", MINE)
    monkeypatch.chdir(tmp_path)
    # Execute
    scenario, origins = load_scenario_traced("my.yaml")
    # Assert: the user's mytiny, the shipped tiny and fedavg
    assert scenario.resolved_profiles["a"].source == "M"
    assert scenario.resolved_profiles["t"].source == "T"
    assert origins.files["strategy"] == str(ROOT / "strategies" / "fedavg.yaml")
    assert load_scenario(path).recipe.kind == "fedavg"


def test_a_users_file_wins_over_the_shipped_one_of_that_name(tmp_path, monkeypatch):
    # Prepare: the user's tiny and fedavg, in the current folder
    for folder in ("centres", "strategies"):
        (tmp_path / folder).mkdir()
    tiny = (ROOT / "centres" / "tiny.yaml").read_text()
    (tmp_path / "centres" / "tiny.yaml").write_text(tiny.replace("source: T", "source: U"))
    recipe = (ROOT / "strategies" / "fedavg.yaml").read_text().replace("rounds: 6", "rounds: 9")
    (tmp_path / "strategies" / "fedavg.yaml").write_text(recipe)
    monkeypatch.chdir(tmp_path)
    # Execute
    scenario = load_scenario(_write(tmp_path, "s.yaml", INLINE))
    # Assert
    assert scenario.resolved_profiles["a"].source == "U"
    text = MINE.replace("mytiny", "tiny").replace("name: t,", "name: b,")
    assert load_scenario(_write(tmp_path, "f.yaml", text)).recipe.typed_params().rounds == 9


def test_a_missing_profile_or_recipe_names_every_place_looked(tmp_path, monkeypatch):
    # Prepare: the scenario in one folder, started from another
    here, proj = tmp_path / "here", tmp_path / "proj"
    here.mkdir()
    proj.mkdir()
    path = _write(proj, "s.yaml", MINE.replace("fedavg", "nope"))
    monkeypatch.chdir(here)

    def error() -> str:
        with pytest.raises(ConfigError) as err:
            load_scenario(path)
        return str(err.value)

    # Execute / Assert: the recipe, then (once it is found) the profile
    text = error()
    assert text.startswith(f"{path}: key 'strategy': recipe 'nope' not found (looked for ")
    looked = [f"{r}/strategies/nope.yaml" for r in (here, proj, ROOT)]
    assert all(p in text for p in looked) and "shipped: " in text and "\n" not in text, text
    path.write_text(MINE)
    text = error()
    assert text.startswith(f"{path}: key 'centres.0.profile': profile 'mytiny' not found (looked ")
    looked = [f"{r}/centres/mytiny.yaml" for r in (here, proj, ROOT)]
    assert all(p in text for p in looked), text


@pytest.mark.parametrize(
    ("key", "value", "shown", "meant"),
    [
        ("seedz", [1], "seedz", "seeds"),
        ("simulation.backnd", "ray", "simulation.backnd", "backend"),
        ("tracking", {"tensorbord": True}, "tracking.tensorbord", "tensorboard"),
        ("strategy.params.roundz", 3, "params.roundz", "rounds"),
        ("strategy.params.train.epochz", 2, "params.train.epochz", "epochs"),
        ("centres.s1.privacy.target_epsilom", 3, "privacy.target_epsilom", "target_epsilon"),
        (
            "centres.s1.data.synthetic.segments.0.patiens",
            3,
            "data.synthetic.segments.0.patiens",
            "patients",
        ),
    ],
)
def test_a_misspelt_key_at_any_level_gets_the_key_it_misspells(key, value, shown, meant):
    with pytest.raises(ConfigError) as err:
        load_scenario(ROOT / "scenarios" / "fedavg_quick.yaml", sets={key: value})
    assert f"key '{shown}': unknown key; did you mean '{meant}'?" in str(err.value)


def test_an_unknown_key_like_no_known_one_keeps_the_plain_message():
    with pytest.raises(ConfigError, match=r"key 'zzzq': unknown key \(check spelling; see README"):
        load_scenario(ROOT / "scenarios" / "fedavg_quick.yaml", sets={"zzzq": 1})


NAMED = """
centres:
  - {profile: tiny, name: site_a}
  - {profile: other, name: tiny}
  - {profile: own_name, role: test}
strategy: fedavg
"""


def test_a_set_by_centre_name_edits_the_centre_of_that_name_not_a_profile_of_it(tmp_path):
    # Prepare: a centre named 'tiny' after a centre whose profile is 'tiny', and a profile
    # whose own name ('porto') is not its file's
    (tmp_path / "centres").mkdir()
    tiny = (ROOT / "centres" / "tiny.yaml").read_text()
    (tmp_path / "centres" / "other.yaml").write_text(tiny)
    (tmp_path / "centres" / "own_name.yaml").write_text(f"name: porto\n{tiny}")
    path = _write(tmp_path, "s.yaml", NAMED)
    split = {"train": 0.3, "val": 0.2, "test": 0.5}
    # Execute
    scenario = load_scenario(path, sets={"centres.tiny.split": split})
    renamed = load_scenario(path, sets={"centres.porto.split.test": 1.0})
    # Assert: the named centre changed, the other kept its profile's split
    assert scenario.resolved_profiles["tiny"].split == split
    assert scenario.resolved_profiles["site_a"].split != split
    assert renamed.resolved_profiles["porto"].split["test"] == 1.0


def test_a_set_naming_a_profile_shared_by_several_centres_is_refused_naming_them():
    with pytest.raises(ConfigError) as err:
        load_scenario(ROOT / "scenarios" / "fedavg_tiny.yaml", sets={"centres.tiny.split.train": 1})
    assert (
        "no centre named 'tiny' in the scenario (profile 'tiny' is used by tiny_a, tiny_b, "
        "tiny_t); valid: tiny_a, tiny_b, tiny_t"
    ) in str(err.value)


def test_a_set_of_the_quick_block_is_refused_with_the_key_to_set_instead():
    with pytest.raises(ConfigError) as err:
        load_scenario(
            ROOT / "scenarios" / "fedavg_tiny.yaml",
            sets={"quick.strategy.params.rounds": 3},
            quick=True,
        )
    assert str(err.value) == (
        "--set quick.strategy.params.rounds=3: the quick block is applied before --set, so a key "
        "set in it has no effect; fix: set the key itself (e.g. --set "
        "strategy.params.rounds=3), which wins over the quick block"
    )


def test_a_profile_next_to_the_scenario_wins_over_one_in_the_current_folder(tmp_path, monkeypatch):
    # Prepare: the same stem in the scenario's centres/ and in the current folder's
    proj, here = tmp_path / "proj", tmp_path / "here"
    tiny = (ROOT / "centres" / "tiny.yaml").read_text()
    for folder, source in ((proj, "P"), (here, "H")):
        (folder / "centres").mkdir(parents=True)
        (folder / "centres" / "mytiny.yaml").write_text(
            tiny.replace("source: T", f"source: {source}")
        )
    path = _write(proj, "s.yaml", MINE)
    monkeypatch.chdir(here)
    # Execute / Assert: the scenario reads its own profile from any folder
    assert load_scenario(path).resolved_profiles["a"].source == "P"


def test_a_study_laid_out_like_the_checkout_reads_its_own_files_from_any_folder(
    tmp_path, monkeypatch
):
    # Prepare: study/scenarios/s.yaml beside study/centres/tiny.yaml and study/strategies/
    # fedavg.yaml (shipped names), started from another folder
    study, elsewhere = tmp_path / "study", tmp_path / "elsewhere"
    for folder in ("scenarios", "centres", "strategies"):
        (study / folder).mkdir(parents=True)
    elsewhere.mkdir()
    tiny = (ROOT / "centres" / "tiny.yaml").read_text()
    (study / "centres" / "tiny.yaml").write_text(tiny.replace("source: T", "source: U"))
    recipe = (ROOT / "strategies" / "fedavg.yaml").read_text().replace("rounds: 6", "rounds: 9")
    (study / "strategies" / "fedavg.yaml").write_text(recipe)
    path = _write(study / "scenarios", "s.yaml", MINE.replace("mytiny", "tiny").replace("t,", "b,"))
    monkeypatch.chdir(elsewhere)
    # Execute
    scenario = load_scenario(path)
    written = write_resolved(tmp_path / "run", scenario, quick=False).read_text()
    # Assert: the study's recipe and profile, not the shipped ones of those names; the run
    # folder's resolved scenario says which files were read, and still loads unedited
    assert scenario.recipe.typed_params().rounds == 9
    assert {p.source for p in scenario.resolved_profiles.values()} == {"U"}
    assert written.splitlines()[1:4] == [
        "# read from:",
        f"#   scenario: {path.resolve()}",
        f"#   centre a: {(study / 'centres' / 'tiny.yaml').resolve()}",
    ]
    assert f"#   strategy: {(study / 'strategies' / 'fedavg.yaml').resolve()}" in written
    assert not edited_resolved(tmp_path / "run" / RESOLVED)
    again = load_scenario(tmp_path / "run" / RESOLVED)
    assert again.recipe.typed_params().rounds == 9 and again.source_files == {}
