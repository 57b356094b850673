"""The CLI under bad input: one row per case, each answered by one line per problem (what,
where, how to fix), exit code 2, no traceback, and nothing left behind or damaged.

Rows run ``fedmammo.simulate.main`` in process (no Ray, no data): a run that would start
fails the row. Builders and the runner are in ``cli_cases.py``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from bad_inputs.cli_cases import (
    GANS,
    SCENARIO,
    Case,
    folder_digest,
    make_run_folder,
    run_cli_in_process,
    write_tree,
)

INTACT = ("run folder intact", "no data")


def _write(rel: str, text: str):
    def damage(run: Path) -> None:
        (run / rel).write_text(text)

    return damage


def _remove(rel: str):
    def damage(run: Path) -> None:
        (run / rel).unlink()

    return damage


def _edit(old: str, new: str) -> str:
    assert old in SCENARIO, old
    return SCENARIO.replace(old, new)


BAD_PROFILE = "centres/bad.yaml"
A_BAD = _edit("centres/site.yaml, name: a", "centres/bad.yaml, name: a")

CASES = [
    # ---- YAML syntax and types
    Case(
        "yaml-broken-scenario",
        ("{scen}",),
        ("scen.yaml:2:", "broken YAML"),
        scenario="centres: [\n  - {profile: a\n",
    ),
    Case(
        "yaml-top-level-list",
        ("{scen}",),
        ("scen.yaml", "expected a mapping at the top level"),
        scenario="- a\n- b\n",
    ),
    Case("yaml-empty-file", ("{scen}",), ("scen.yaml", "got NoneType"), scenario=""),
    Case(
        "yaml-seeds-not-a-list",
        ("{scen}",),
        ("scen.yaml: key 'seeds'", "valid list"),
        scenario=SCENARIO + "seeds: abc\n",
    ),
    Case(
        "yaml-sweep-without-values",
        ("{scen}", "--check"),
        (
            "scen.yaml: key 'sweep'",
            "sweep 'strategy.params.train.lr' has no values",
            "drop the key",
        ),
        scenario=SCENARIO + "sweep: {strategy.params.train.lr: []}\n",
        survives=("no run folder",),
    ),
    Case(
        "phantom-style-unknown-check",
        ("{scen}", "--check", "--set", "centres.a.data.synthetic.segments.0.style=flim"),
        (
            "centre 'a': key 'data.synthetic.segments.0.style': unknown phantom style 'flim'",
            "valid styles: film, ma",
        ),
        survives=("no run folder", "no data"),
    ),
    Case(
        "yaml-image-size-too-small",
        ("{scen}",),
        ("key 'image_size'", "16..4096"),
        scenario=_edit("image_size: [32, 24]", "image_size: [8, 8]"),
    ),
    Case(
        "yaml-centre-entry-not-a-mapping",
        ("{scen}",),
        ("key 'centres.0'", "CentreEntry"),
        scenario=_edit("  - {profile: centres/site.yaml, name: a, role: train}", "  - site"),
    ),
    Case(
        "yaml-broken-profile",
        ("{scen}",),
        ("bad.yaml:", "broken YAML"),
        scenario=A_BAD,
        files={BAD_PROFILE: "data: {synthetic: [\n"},
    ),
    Case(
        "yaml-broken-recipe",
        ("{scen}",),
        ("fa2.yaml:", "broken YAML"),
        scenario=_edit("strategies/fa.yaml", "strategies/fa2.yaml"),
        files={"strategies/fa2.yaml": "kind: fedavg\nparams: {rounds: [\n"},
    ),
    Case(
        "yaml-profile-value-out-of-range",
        ("{scen}",),
        ("bad.yaml: key 'data.synthetic.segments.0.prevalence'", "less than or equal to 1"),
        scenario=A_BAD,
        files={
            BAD_PROFILE: "data: {synthetic: {segments: "
            "[{manufacturer: Ma, patients: 6, prevalence: 1.7}]}}\n"
        },
    ),
    Case(
        "yaml-recipe-wrong-type",
        ("{scen}",),
        ("fa2.yaml: key 'params.rounds'", "integer"),
        scenario=_edit("strategies/fa.yaml", "strategies/fa2.yaml"),
        files={"strategies/fa2.yaml": "kind: fedavg\nparams: {rounds: many}\n"},
    ),
    # ---- unknown keys at every level
    Case(
        "unknown-scenario-key",
        ("{scen}",),
        ("scen.yaml: key 'roundz': unknown key",),
        scenario=SCENARIO + "roundz: 2\n",
    ),
    Case(
        "unknown-centre-entry-key",
        ("{scen}",),
        ("scen.yaml: key 'centres.2.rol': unknown key",),
        scenario=_edit("name: t, role: test", "name: t, rol: test"),
    ),
    Case(
        "unknown-profile-key",
        ("{scen}",),
        ("bad.yaml: key 'sharng': unknown key",),
        scenario=A_BAD,
        files={
            BAD_PROFILE: "sharng: {models: true}\n" + "data: {synthetic: "
            "{segments: [{manufacturer: Ma, patients: 6, prevalence: 0.3}]}}\n"
        },
    ),
    Case(
        "unknown-nested-profile-key",
        ("{scen}",),
        ("bad.yaml: key 'data.synthetic.segmnts': unknown key",),
        scenario=A_BAD,
        files={BAD_PROFILE: "data: {synthetic: {segmnts: []}}\n"},
    ),
    Case(
        "unknown-recipe-key",
        ("{scen}",),
        ("fa2.yaml: key 'parms': unknown key",),
        scenario=_edit("strategies/fa.yaml", "strategies/fa2.yaml"),
        files={"strategies/fa2.yaml": "kind: fedavg\nparms: {rounds: 2}\n"},
    ),
    Case(
        "unknown-recipe-param",
        ("{scen}",),
        ("fa2.yaml: key 'params.roundz': unknown key",),
        scenario=_edit("strategies/fa.yaml", "strategies/fa2.yaml"),
        files={"strategies/fa2.yaml": "kind: fedavg\nparams: {roundz: 2}\n"},
    ),
    Case(
        "unknown-nested-param",
        ("{scen}",),
        ("fa2.yaml: key 'params.train.epocs': unknown key",),
        scenario=_edit("strategies/fa.yaml", "strategies/fa2.yaml"),
        files={"strategies/fa2.yaml": "kind: fedavg\nparams: {train: {epocs: 1}}\n"},
    ),
    Case(
        "unknown-strategy-kind",
        ("{scen}",),
        ("unknown strategy kind 'fedsgd'", "fedavg"),
        scenario=_edit("strategies/fa.yaml", "strategies/fa2.yaml"),
        files={"strategies/fa2.yaml": "kind: fedsgd\n"},
    ),
    Case(
        "unknown-key-in-quick-block",
        ("{scen}",),
        ("with --quick:", "scen.yaml quick 'roundz'", "unknown key"),
        scenario=_edit("quick: {image_size: [16, 16]}", "quick: {roundz: 1}"),
    ),
    Case(
        "bad-recipe-quick-value",
        ("{scen}",),
        ("fa2.yaml quick 'rounds'", "key 'params.rounds'", "greater than or equal to 1"),
        scenario=_edit("strategies/fa.yaml", "strategies/fa2.yaml"),
        files={"strategies/fa2.yaml": "kind: fedavg\nquick: {rounds: 0}\n"},
    ),
    Case(
        "unknown-sampler-in-quick-block",
        ("{scen}",),
        ("with --quick:", "fa2.yaml quick 'train.sampler'", "unknown sampler 'fast'"),
        scenario=_edit("strategies/fa.yaml", "strategies/fa2.yaml"),
        files={"strategies/fa2.yaml": "kind: fedavg\nquick: {train.sampler: fast}\n"},
    ),
    # ---- missing files
    Case(
        "missing-scenario-file",
        ("{tmp}/nope.yaml",),
        ("nope.yaml: file not found (looked for /", "nope.yaml); fix: "),
    ),
    Case("scenario-is-a-folder", ("{tmp}/centres",), ("centres: is a folder",)),
    Case(
        "missing-profile",
        ("{scen}",),
        ("key 'centres.0.profile'", "'centres/nowhere.yaml' not found", "fix"),
        scenario=_edit("centres/site.yaml, name: a", "centres/nowhere.yaml, name: a"),
    ),
    Case(
        "missing-recipe",
        ("{scen}",),
        ("key 'strategy'", "recipe 'nope' not found", "fix"),
        scenario=_edit("strategies/fa.yaml", "nope"),
    ),
    Case("missing-run-folder", ("--resume", "{tmp}/runs/none"), ("no such run folder",)),
    Case("no-scenario-argument", (), ("give a scenario",)),
    Case("unknown-cli-option", ("{scen}", "--quik"), ("unrecognized arguments: --quik",)),
    # ---- every --set form
    Case("set-without-equals", ("{scen}", "--set", "rounds"), ("--set rounds", "key.path=value")),
    Case("set-empty-part", ("{scen}", "--set", "a..b=1"), ("--set a..b=1", "empty part")),
    Case("set-empty-key", ("{scen}", "--set", "=1"), ("--set =1", "empty part")),
    Case(
        "set-bad-yaml-value",
        ("{scen}", "--set", "seeds=[0, 1"),
        ("--set seeds=[0, 1", "not valid YAML"),
    ),
    Case(
        "set-unknown-top-level-key",
        ("{scen}", "--set", "roundz=2"),
        ("--set roundz=2: key 'roundz': unknown key",),
    ),
    Case(
        "set-unknown-param",
        ("{scen}", "--set", "strategy.params.nosuch=1"),
        ("--set strategy.params.nosuch=1: key 'params.nosuch': unknown key",),
    ),
    Case(
        "set-param-out-of-range",
        ("{scen}", "--set", "strategy.params.rounds=-1"),
        ("--set strategy.params.rounds=-1: key 'params.rounds'", "greater than or equal to 1"),
    ),
    Case(
        "set-missing-centre",
        ("{scen}", "--set", "centres.X.y=1"),
        ("--set centres.X.y=1", "no centre named 'X'", "valid: a, b, t"),
    ),
    Case(
        "set-centre-unknown-key",
        ("{scen}", "--set", "centres.a.y=1"),
        ("--set centres.a.y=1: key 'y': unknown key",),
    ),
    Case(
        "set-centre-bad-split",
        ("{scen}", "--set", "centres.a.split.train=0.9"),
        (
            "--set centres.a.split.train=0.9: key 'split'",
            "sum to 1, got train 0.9 (sum 0.9)",
            "fix: give all three",
        ),
    ),
    Case(
        "set-centre-entry-key-by-name",
        ("{scen}", "--set", "centres.b.role=test"),
        (
            "--set centres.b.role=test: 'role' is a key of the scenario's centre entry",
            "fix: --set centres.1.role=... (by index)",
        ),
    ),
    Case(
        "set-profile-key-by-index-names-the-set",
        ("{scen}", "--set", "centres.1.overrides.split.train=0.9"),
        ("--set centres.1.overrides.split.train=0.9: key 'split'", "sum to 1"),
    ),
    Case(
        "set-centre-without-key",
        ("{scen}", "--set", "centres.a=3"),
        ("--set centres.a=3", "name a key of centre 'a'"),
    ),
    Case(
        "set-centre-index-unknown-key",
        ("{scen}", "--set", "centres.0.rol=test"),
        ("--set centres.0.rol=test: key 'centres.0.rol': unknown key",),
    ),
    Case(
        "set-list-index-out-of-range",
        ("{scen}", "--set", "image_size.3=1"),
        ("--set image_size.3=1", "index 3 is out of range (valid: 0..1)"),
    ),
    Case(
        "set-list-index-not-a-number",
        ("{scen}", "--set", "image_size.x=3"),
        ("--set image_size.x=3", "'x' indexes a list"),
    ),
    Case(
        "set-through-a-scalar",
        ("{scen}", "--set", "output_dir.x=1"),
        ("--set output_dir.x=1", "'output_dir' is a str, not a mapping"),
    ),
    Case(
        "set-unknown-sampler",
        ("{scen}", "--set", "strategy.params.train.sampler=fast"),
        (
            "--set strategy.params.train.sampler=fast: key 'params.train.sampler'",
            "unknown sampler 'fast'",
            "valid samplers: balanced_labels",
        ),
    ),
    Case(
        "set-unknown-model",
        ("{scen}", "--set", "strategy.params.model.name=resnet"),
        (
            "--set strategy.params.model.name=resnet: key 'params.model.name'",
            "unknown model 'resnet'",
            "valid models:",
        ),
    ),
    Case(
        "set-bad-model-option",
        ("{scen}", "--set", "strategy.params.model.options.wdth=4"),
        (
            "--set strategy.params.model.options.wdth=4: key 'params.model.options'",
            "bad options",
            "wdth",
        ),
    ),
    Case(
        "set-sweep-point-of-the-wrong-type",
        ("{scen}", "--set", "sweep={strategy.params.train.lr: [0.01, fast]}"),
        ("--set sweep sweep point strategy.params.train.lr=fast: key 'params.train.lr'",),
    ),
    Case(
        "set-recipe-parameter-without-params",
        ("{scen}", "--set", "strategy.rounds=2"),
        (
            "--set strategy.rounds=2: key 'rounds': unknown key; a recipe's parameters are under "
            "params: 'params.rounds'?",
        ),
    ),
    Case(
        "set-model-option-of-the-wrong-type",
        ("{scen}", "--set", "strategy.params.model.options.width=four"),
        (
            "--set strategy.params.model.options.width=four: key 'params.model.options'",
            "model 'mammo_cnn': option width 'four': Input should be a valid integer",
        ),
    ),
    Case(
        "fault-past-the-last-round",
        ("{scen}", "--set", "faults=[{centre: a, round: 5}]"),
        (
            '--set faults=[{"centre": "a", "round": 5}]: key \'faults.0.round\'',
            "arm 'federated' trains 2 round(s)",
        ),
    ),
    Case(
        "fault-at-a-centre-the-arm-does-not-train",
        ("{scen}", "--set", "faults=[{centre: t, round: 1}]"),
        ("key 'faults.0.centre'", "arm 'federated' does not train at 't'; it trains at a, b"),
    ),
    Case(
        "set-negative-data-seed",
        ("{scen}", "--set", "data_seed=-5"),
        ("--set data_seed=-5: key 'data_seed'", "greater than or equal to 0"),
    ),
    Case(
        "set-seed-twice",
        ("{scen}", "--set", "seeds=[0, 1, 0]"),
        ("key 'seeds'", "seed 0 is listed twice; each seed runs once"),
    ),
    Case(
        "set-negative-seed",
        ("{scen}", "--set", "seeds=[-1]"),
        ("key 'seeds'", "seeds must be >= 0"),
    ),
    Case(
        "set-min-centres-above-the-training-centres",
        ("{scen}", "--set", "strategy.params.min_centres=3"),
        (
            "--set strategy.params.min_centres=3: key 'params.min_centres': 3, but the scenario "
            "has 2 training centre(s) (role train or receiver): a, b; t (test) only evaluate",
            "fix: give more centres role train, or lower params.min_centres",
        ),
    ),
    Case(
        "set-a-role-the-method-does-not-use",
        ("{scen}", "--set", "centres.2.role=sharer"),
        (
            "--set centres.2.role=sharer: key 'centres.2.role': 'sharer', which fedavg does not "
            "use (its roles: train, receiver, test)",
            "fix: role train to train, or test to evaluate on all its images",
        ),
    ),
    Case(
        "set-missing-recipe",
        ("{scen}", "--set", "strategy=nope"),
        ("--set strategy=nope: key 'strategy'", "recipe 'nope' not found"),
    ),
    Case(
        "set-unknown-arm",
        ("{scen}", "--set", "strategy.params.arms=[federated, solo]"),
        ("--set strategy.params.arms=", "key 'params.arms.1'", "'federated', 'local'"),
    ),
    # ---- overrides written in the scenario name the override
    Case(
        "scenario-centre-override-names-override",
        ("{scen}",),
        ("scen.yaml centres.1.overrides 'split.train': key 'split'", "sum to 1"),
        scenario=_edit(
            "name: b, role: train}", "name: b, role: train, overrides: {split.train: 0.9}}"
        ),
    ),
    Case(
        "scenario-strategy-override-names-override",
        ("{scen}",),
        ("scen.yaml strategy_overrides 'params.rounds': key 'params.rounds'",),
        scenario=SCENARIO + "strategy_overrides: {params.rounds: 0}\n",
    ),
    Case(
        "sweep-point-names-point",
        ("{scen}",),
        ("scen.yaml sweep point strategy.params.rounds=0", "key 'params.rounds'"),
        scenario=SCENARIO + "sweep: {strategy.params.rounds: [1, 0]}\n",
    ),
    # ---- budget and sharing conflicts
    Case(
        "dp-with-batchnorm-model",
        ("{scen}", "--set", "centres.a.privacy.target_epsilon=3"),
        (
            "--set centres.a.privacy.target_epsilon=3",
            "centre 'a' trains with DP",
            "BatchNorm",
            "norm: group",
        ),
    ),
    Case(
        "dp-without-noise",
        (
            "{scen}",
            "--set",
            "centres.a.privacy.noise_multiplier=0",
            "--set",
            "strategy.params.model.options.norm=group",
        ),
        ("centre 'a'", "noise_multiplier 0 adds no noise"),
    ),
    Case(
        "dp-delta-out-of-range",
        ("{scen}", "--set", "privacy={target_epsilon: 3, delta: 2}"),
        ("--set privacy=", "key 'privacy.delta'", "less than 1"),
    ),
    Case(
        "dp-negative-epsilon",
        ("{scen}", "--set", "centres.b.privacy.target_epsilon=-1"),
        (
            "--set centres.b.privacy.target_epsilon=-1: key 'privacy.target_epsilon'",
            "greater than 0",
        ),
    ),
    Case(
        "training-centre-shares-no-models",
        ("{scen}", "--set", "centres.b.sharing.models=false"),
        (
            "--set centres.b.sharing.models=false",
            "centre 'b' does not share trained model",
            "train.classifier",
            "fix",
        ),
    ),
    Case(
        "test-centre-shares-no-metrics",
        ("{scen}", "--set", "centres.t.sharing.metrics=false"),
        ("centre 't' does not share evaluation metrics", "evaluate.classifier"),
    ),
    Case(
        "sharer-without-generators",
        ("{scen}", "--set", "centres.B.sharing.generators=false"),
        ("centre 'B' does not share trained generator weights", "train.generator"),
        scenario=GANS,
    ),
    Case(
        "real-patch-arm-without-consent",
        ("{scen}", "--set", "centres.B.sharing.real_patches_in_simulation=false"),
        ("A+real_B", "real_patches_in_simulation"),
        scenario=GANS,
    ),
    Case(
        "dp-receiver-without-dp-path",
        ("{scen}", "--set", "centres.A.privacy.target_epsilon=8"),
        ("centre 'A' trains with DP", "'train.patch_classifier'", "no DP path"),
        scenario=GANS,
    ),
    Case(
        "missing-generators-folder",
        ("{scen}", "--set", "strategy.params.load_generators={tmp}/none"),
        ("params.load_generators", "not found"),
        scenario=GANS,
    ),
    Case(
        "sharer-shares-nothing",
        ("{scen}",),
        ("role 'sharer' but its profile shares nothing",),
        scenario=_edit(
            "name: b, role: train}",
            "name: b, role: sharer, overrides: {sharing: {models: false, generators: false}}}",
        ),
    ),
    Case(
        "fault-names-unknown-centre",
        ("{scen}", "--set", "faults=[{centre: z, round: 1}]"),
        (
            '--set faults=[{"centre": "z", "round": 1}]: key \'faults.0.centre\'',
            "no centre named 'z'",
        ),
    ),
    Case(
        "no-training-centre",
        ("{scen}",),
        ("no centre has role 'train' or 'receiver'",),
        scenario=_edit("role: train}", "role: test}").replace("role: train}", "role: test}"),
    ),
    Case(
        "centre-name-used-twice",
        ("{scen}",),
        ("centre name 'a' used twice",),
        scenario=_edit("name: b, role", "name: a, role"),
    ),
    Case(
        "set-centre-name-used-twice",
        ("{scen}", "--set", "centres.1.name=a"),
        ("--set centres.1.name=a: key 'centres.1': centre name 'a' used twice",),
    ),
    Case(
        "mtl-finetune-centre-not-training",
        ("{scen}",),
        ("finetune_centres", "['t']"),
        scenario=SCENARIO.replace("strategies/fa.yaml", "mtl_finetune")
        + "strategy_overrides: {params.finetune_centres: [t],\n"
        + "                     params.arms: [mtl, finetune_u1_0.5]}\n",
    ),
    Case(
        "periodic-segment-held-by-no-centre",
        ("{scen}",),
        (
            "params.experiments.e",
            "'S9-Ma'",
            "held by no training centre",
            "held: ['T-Ma', 'T-Mb']",  # every segment the training centres hold
        ),
        scenario=SCENARIO.replace("strategies/fa.yaml", "periodic_sampling")
        + "strategy_overrides: {params.experiments: {}, params.experiments.e: [T-Ma, S9-Ma], "
        "params.baselines: {}}\n",
    ),
    # ---- folders
    Case(
        "output-folder-is-a-file",
        ("{scen}", "--out", "{tmp}/afile/runs"),
        ("output folder", "is a file, not a folder", "--out"),
        files={"afile": "x"},
    ),
    Case(
        "data-dir-is-a-file",
        ("{scen}", "--set", "data_dir={tmp}/afile/data"),
        ("data_dir", "is a file, not a folder", "fix"),
        files={"afile": "x"},
        survives=("no run folder", "no data", "no output folder"),
    ),
    *(
        Case(
            name,
            ("{scen}", *check),
            (
                "centre 'a': data root '/nonexistent/fedmammo-cbis'",
                "does not exist",
                "fix: set the environment variable it names or edit data.root",
            ),
            scenario=_edit("centres/site.yaml, name: a", "centres/real.yaml, name: a"),
            files={
                "centres/real.yaml": "name: real\nsource: CBIS-DDSM\n"
                "data: {format: cbis-ddsm, root: /nonexistent/fedmammo-cbis}\n"
            },
            survives=("no run folder", "no data"),
        )
        # a real dataset not mounted: said before Ray or any folder; --check said "valid"
        for name, check in (("missing-data-root", ()), ("missing-data-root-check", ("--check",)))
    ),
    *(
        Case(
            name,
            ("{scen}", *check),
            expected,
            scenario=_edit("centres/site.yaml, name: a", "centres/real.yaml, name: a"),
            files={
                "centres/real.yaml": "name: real\nsource: CBIS-DDSM\n"
                f"data: {{format: {fmt}, root: /nonexistent/fedmammo-cbis, options: {options}}}\n"
            },
            survives=("no run folder", "no data"),
        )
        # said before the data root, any folder or Ray; --check said "valid", a run crashed
        for name, check, fmt, options, expected in (
            (
                "unknown-data-format-check",
                ("--check",),
                "dicom_folder",
                "{}",
                (
                    "centre 'a': unknown data.format 'dicom_folder'",
                    "valid formats:",
                    "dicom-folder",
                ),
            ),
            (
                "unknown-data-option-check",
                ("--check",),
                "dicom-folder",
                "{label_csv: x.csv}",
                ("centre 'a': unknown data.options 'label_csv'", "valid options:", "labels_csv"),
            ),
            (
                "data-option-set-by-the-profile",
                (),
                "cbis-ddsm",
                "{source: HospA}",
                ("data.options may not set 'source' by the profile's 'source'", "fix"),
            ),
        )
    ),
    Case(
        "output-folder-unwritable",
        ("{scen}", "--out", "/proc/fedmammo-runs"),
        ("output folder /proc/fedmammo-runs is not writable",),
    ),
    Case(
        "check-output-folder-unwritable-even-for-root",
        ("{scen}", "--check", "--out", "/proc/fedmammo-runs"),
        ("output folder /proc/fedmammo-runs: /proc is not writable (",),
    ),
    Case(
        "data-dir-unwritable",
        ("{scen}", "--set", "data_dir=/proc/fedmammo-data"),
        ("data_dir /proc/fedmammo-data is not writable",),
        survives=("no run folder", "no output folder"),
    ),
    # ---- resume
    Case(
        "resume-damaged-runspec",
        ("--resume", "{run}"),
        ("runspec.json is damaged (line 1", "start a new run"),
        damage=_write("runspec.json", "{not json"),
        survives=INTACT,
    ),
    Case(
        "resume-runspec-wrong-fields",
        ("--resume", "{run}"),
        ("runspec.json is damaged",),
        damage=_write("runspec.json", '{"run": 1}'),
        survives=INTACT,
    ),
    Case(
        "resume-damaged-results",
        ("--resume", "{run}"),
        ("results.json is damaged (line 1", "restore it from a backup"),
        damage=_write("results.json", '{"progress": {'),
        survives=INTACT,
    ),
    Case(
        "resume-results-without-progress",
        ("--resume", "{run}"),
        ("results.json is damaged ('progress' is list, not an object)",),
        damage=_write("results.json", '{"progress": [1]}'),
        survives=INTACT,
    ),
    Case(
        "resume-damaged-privacy-log",
        ("--resume", "{run}"),
        ("privacy.json is damaged",),
        damage=_write("privacy.json", "[1, 2"),
        survives=INTACT,
    ),
    Case(
        "resume-without-resolved-scenario",
        ("--resume", "{run}"),
        ("no scenario.resolved.yaml there", "cannot be resumed"),
        damage=_remove("scenario.resolved.yaml"),
        survives=INTACT,
    ),
    Case(
        "resume-without-runspec",
        ("--resume", "{run}"),
        ("no runspec.json there",),
        damage=_remove("runspec.json"),
        survives=INTACT,
    ),
    Case(
        "resume-other-scenario",
        ("{tmp}/centres/site.yaml", "--resume", "{run}"),
        ("that run is of", "scen.yaml, not", "drop the scenario argument"),
        survives=INTACT,
    ),
    Case(
        "resume-with-set",
        ("--resume", "{run}", "--set", "strategy.params.rounds=9"),
        ("--set would change a run half done",),
        survives=INTACT,
    ),
    Case(
        "resume-adds-quick",
        ("--resume", "{run}", "--quick"),
        ("the run started without --quick", "drop --quick"),
        survives=INTACT,
    ),
    Case(
        "resume-damaged-resolved-scenario",
        ("--resume", "{run}"),
        ("scenario.resolved.yaml", "broken YAML"),
        damage=_write("scenario.resolved.yaml", "centres: [\n"),
        survives=INTACT,
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_gives_one_line_and_leaves_nothing_behind(case, tmp_path, monkeypatch):
    # Prepare: the case's tree, scenario and (resume rows) a run folder to damage
    scen = write_tree(tmp_path, case)
    run = None
    if any("{run}" in a for a in case.args):
        run = make_run_folder(scen, progress={"federated|0": {"round": 1}})
        if case.damage:
            case.damage(run)
        before = folder_digest(run)
    args = [
        a.replace("{tmp}", str(tmp_path)).replace("{scen}", str(scen)).replace("{run}", str(run))
        for a in case.args
    ]
    # Execute
    out = run_cli_in_process(args, monkeypatch)
    # Assert: exit code 2, one line per problem holding every expected fragment, no traceback
    assert out.code == 2, out.text
    assert "Traceback" not in out.text
    assert len(out.errors) == case.lines, out.text
    for fragment in case.expect:
        assert fragment in out.errors[0], f"{fragment!r} not in {out.errors[0]!r}"
    # ...and what must survive did
    runs = tmp_path / "runs"
    if "no run folder" in case.survives:
        assert not runs.exists() or not any(runs.iterdir()), sorted(runs.rglob("*"))
    if "no data" in case.survives:
        assert not (tmp_path / "data").exists()
    if "no output folder" in case.survives:  # not even an empty one
        assert not runs.exists()
    if "run folder intact" in case.survives:
        assert folder_digest(run) == before


def test_the_suite_covers_every_class_of_bad_input():
    prefixes = {c.id.split("-")[0] for c in CASES}
    assert len(CASES) >= 35
    assert {"yaml", "unknown", "missing", "set", "dp", "resume"} <= prefixes
    assert len({c.id for c in CASES}) == len(CASES)


def test_a_bad_sampler_fails_check_before_any_data(tmp_path, monkeypatch):
    # Prepare: a recipe whose sampler does not exist (it used to pass --check and then run
    # to the end with no results)
    case = Case("bad-sampler", (), ())
    scen = write_tree(tmp_path, case)
    (tmp_path / "strategies" / "fa.yaml").write_text(
        (tmp_path / "strategies" / "fa.yaml").read_text().replace("balanced_labels", "balanced")
    )
    # Execute
    out = run_cli_in_process([str(scen), "--check"], monkeypatch)
    # Assert
    assert out.code == 2
    assert out.errors == [
        f"error: {tmp_path / 'strategies' / 'fa.yaml'}: key 'params.train.sampler': unknown "
        "sampler 'balanced'; valid samplers: balanced_labels, balanced_segments, periodic, random"
    ]
    assert not (tmp_path / "data").exists() and not (tmp_path / "runs").exists()


def test_check_prints_the_plan_of_every_sweep_point_arm_and_seed(tmp_path, monkeypatch):
    # Prepare: 2 sweep points x (federated + 2 local arms) x 2 seeds, --quick (1 round)
    case = Case(
        "plan",
        (),
        (),
        scenario=SCENARIO + "seeds: [0, 1]\nsweep: {strategy.params.train.lr: [0.01, 0.001]}\n",
    )
    scen = write_tree(tmp_path, case)
    # Execute
    out = run_cli_in_process([str(scen), "--check", "--quick"], monkeypatch)
    # Assert
    assert out.code == 0, out.text
    assert "12 units in 2 sweep points (--quick)" in out.text
    rows = [line for line in out.text.splitlines() if "strategy.params.train.lr=" in line]
    assert len(rows) == 12
    assert sum("local-a" in r for r in rows) == 4
    assert all(" 1 " in r.split("│")[5] for r in rows)  # rounds: the recipe's quick block
    assert not (tmp_path / "runs").exists() and not (tmp_path / "data").exists()


def test_check_prints_the_backend_the_command_line_chose(tmp_path, monkeypatch):
    # the scenario says ray (the default); --backend inprocess wins, and the resolved scenario
    # printed (and kept by a run) says so
    scen = write_tree(tmp_path, Case("backend", (), (), scenario=SCENARIO))
    out = run_cli_in_process([str(scen), "--check", "--backend", "inprocess"], monkeypatch)
    assert out.code == 0, out.text
    simulation = out.text[out.text.index("simulation:") :].splitlines()
    assert any(line.split() == ["backend:", "inprocess"] for line in simulation[:4]), simulation


def test_a_bad_value_of_the_full_run_is_refused_under_quick_too(tmp_path, monkeypatch):
    # --quick replaces image_size (the scenario's quick block); the value the full run would
    # use is still checked
    scenario = _edit("image_size: [32, 24]", "image_size: [8, 8]")
    scen = write_tree(tmp_path, Case("full", (), (), scenario=scenario))
    out = run_cli_in_process([str(scen), "--check", "--quick"], monkeypatch)
    assert out.code == 2
    assert "without --quick: " in out.text and "key 'image_size'" in out.text
    assert not (tmp_path / "runs").exists()


def test_every_shipped_scenario_passes_check(monkeypatch):
    root = Path(__file__).resolve().parents[2]
    for scen in sorted((root / "scenarios").glob("*.yaml")):
        for quick in ([], ["--quick"]):
            out = run_cli_in_process([str(scen), "--check", *quick], monkeypatch)
            assert out.code == 0, f"{scen.name} {quick}: {out.errors}"


def test_resolved_scenario_is_written_for_every_sweep_point(tmp_path):
    case = Case("sweep", (), (), scenario=SCENARIO + "sweep: {seed: [3, 4]}\n")
    run = make_run_folder(write_tree(tmp_path, case))
    points = sorted(p.parent.name for p in run.glob("points/*/scenario.resolved.yaml"))
    assert points == ["seed=3", "seed=4"]
    resolved = json.dumps(
        __import__("yaml").safe_load(
            (run / "points" / "seed=4" / "scenario.resolved.yaml").read_text()
        )
    )
    assert '"seeds": [4]' in resolved and '"sweep": {}' in resolved
