"""`flwr run .` the way a Flower user runs it, and a missing centre is never a silent wait.

Fast (no Ray): the connect step over an in-process grid (a missing centre named within a
short ``connect_timeout`` and the run stopped with results.json written; going on without a
test centre where ``min_centres`` allows; a simulation federation too small for the scenario
failing at once with the command that fixes it), the timeout settings, the run spec that
``flwr run``'s run config gives both apps. Slow: scenarios/fedavg_tiny.yaml through
``flwr run .`` on Flower's local simulation SuperLink, against ``python -m fedmammo.simulate``.
"""

from __future__ import annotations

import io
import logging
import os
import shutil
import subprocess
import time
import zipfile
from pathlib import Path

import pytest
from helpers.flower_messages import InProcessGrid, in_process_identity
from helpers.processes import BIN, free_port, local_superlinks, stop_tree
from helpers.run_helpers import REPO, comparable_metrics, results

from fedmammo.config import load_scenario
from fedmammo.config.scenario import MessageTimeouts
from fedmammo.errors import ConfigError
from fedmammo.federation.connect import ConnectError, FederationTooSmall, simulated_node_ids
from fedmammo.federation.runspec import ENV_VAR, POOLED, RunSpec, load_runspec
from fedmammo.federation.server_app import run_scenario

TINY = REPO / "scenarios" / "fedavg_tiny.yaml"


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    """The tiny centres, prepared once (so identify answers at once)."""
    from fedmammo.data.prepare import materialise_centre

    data_dir = tmp_path_factory.mktemp("data")
    scenario = load_scenario(TINY)
    for entry in scenario.centres:
        profile = scenario.resolved_profiles[entry.name]
        test_only = entry.role == "test"
        size = scenario.image_size
        materialise_centre(profile, data_dir, image_size=size, test_only=test_only)
    return data_dir


def _spec(tmp_path: Path, data_dir: Path, order: list[str], **sets) -> RunSpec:
    sets = {"data_dir": str(data_dir), **sets}
    spec = RunSpec(
        scenario_file=str(TINY),
        run_dir=str(tmp_path / "run"),
        sets=sets,
        node_order=order,
        deployment=True,
    )
    Path(spec.run_dir).mkdir(parents=True)
    return spec


def _never(orc) -> None:
    raise AssertionError("the method ran although a needed centre is missing")


def _section(recorder, console) -> str:
    return ""


def _connect_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name.startswith(("flwr", "fedmammo"))]


def test_a_missing_centre_is_named_within_connect_timeout_and_the_run_stops(
    tmp_path, data_dir, monkeypatch, caplog
):
    # Prepare: real sites tiny_a and tiny_t connect; training centre tiny_b never does, and
    # without it fewer than min_centres (2) training centres remain.
    spec = _spec(
        tmp_path, data_dir, ["tiny_a", "tiny_t", "tiny_b"], **{"strategy.connect_timeout": 4}
    )
    monkeypatch.setenv(ENV_VAR, str(spec.save()))  # how the in-process centres find theirs
    caplog.set_level(logging.INFO)
    # Execute
    t0 = time.monotonic()
    with in_process_identity(), pytest.raises(ConnectError) as err:
        run_scenario(InProcessGrid(["tiny_a", "tiny_t"]), spec, _never, _section)
    elapsed = time.monotonic() - t0
    # Assert: progress lines while waiting name connected and missing centres; the run stopped
    # soon after connect_timeout with the failure, a note and the summary written.
    assert "tiny_b" in str(err.value) and "connect_timeout=4 s" in str(err.value)
    assert "start their SuperNodes" in str(err.value)
    assert elapsed < 4 + 30, elapsed  # identify loads two tiny centres, then 4 s of waiting
    waiting = [line for line in _connect_lines(caplog) if line.startswith("waiting for centres")]
    assert waiting, _connect_lines(caplog)
    assert "connected 2/3 (tiny_a, tiny_t), missing tiny_b" in waiting[-1]
    res = results(Path(spec.run_dir))
    assert [(f["centre"], f["phase"]) for f in res["failures"]] == [("tiny_b", "connect")]
    assert "did not connect within connect_timeout=4 s" in res["failures"][0]["reason"]
    assert any(n.startswith("run stopped before training") for n in res["notes"])
    assert res["metrics"] == []
    assert (Path(spec.run_dir) / "results.md").is_file()


def test_the_run_goes_on_without_a_missing_test_centre_where_min_centres_allows(
    tmp_path, data_dir, monkeypatch
):
    # Prepare: both training centres connect (min_centres 2 holds), test centre tiny_t does not.
    spec = _spec(
        tmp_path, data_dir, ["tiny_a", "tiny_b", "tiny_t"], **{"strategy.connect_timeout": 1}
    )
    monkeypatch.setenv(ENV_VAR, str(spec.save()))
    seen: list[list[str]] = []
    # Execute
    with in_process_identity():
        run_scenario(
            InProcessGrid(["tiny_a", "tiny_b"]),
            spec,
            lambda orc: seen.append(orc.centres()),
            _section,
        )
    # Assert: the method ran with the connected centres only; the gap is on record.
    assert seen == [["tiny_a", "tiny_b"]]
    res = results(Path(spec.run_dir))
    assert [(f["centre"], f["phase"]) for f in res["failures"]] == [("tiny_t", "connect")]
    assert any("went on without tiny_t" in n and "min_centres is 2" in n for n in res["notes"])
    assert set(res["meta"]["centres"]) == {"tiny_a", "tiny_b"}


def test_a_second_node_claiming_a_connected_centre_is_refused_and_logged(
    tmp_path, data_dir, monkeypatch, caplog
):
    # Prepare: every centre connects; a fourth node also claims to be tiny_a
    spec = _spec(
        tmp_path, data_dir, ["tiny_a", "tiny_b", "tiny_t"], **{"strategy.connect_timeout": 1}
    )
    monkeypatch.setenv(ENV_VAR, str(spec.save()))
    grid = InProcessGrid(["tiny_a", "tiny_b", "tiny_t", "tiny_a"])
    a, b, t, impostor = grid.get_node_ids()
    grid.contexts[impostor].node_config["partition-id"] = 0  # resolves to tiny_a as well
    caplog.set_level(logging.INFO)
    seen: list[dict[str, int]] = []
    # Execute
    with in_process_identity():
        run_scenario(grid, spec, lambda orc: seen.append(dict(orc.nodes)), _section)
    # Assert: tiny_a stays on its first node; the impostor is refused and logged
    assert seen == [{"tiny_a": a, "tiny_b": b, "tiny_t": t}]
    lines = _connect_lines(caplog)
    assert any(
        f"node {impostor} refused: centre tiny_a is already connected from node {a}" in line
        for line in lines
    ), lines
    # ... and on record with the results: whose numbers tiny_a's are
    res = results(Path(spec.run_dir))
    assert res["meta"]["centres"]["tiny_a"]["node"] == a
    assert any(
        n.startswith(f"node {impostor} claims centre tiny_a, refused")
        and f"centre tiny_a's results are node {a}'s" in n
        for n in res["notes"]
    ), res["notes"]


def test_a_simulation_federation_smaller_than_the_scenario_fails_at_once(tmp_path, data_dir):
    # Prepare: Flower 1.41's default local simulation federation has 2 SuperNodes; the tiny
    # scenario needs 3.
    spec = _spec(tmp_path, data_dir, ["tiny_a", "tiny_b", "tiny_t"])
    # Execute
    t0 = time.monotonic()
    with pytest.raises(FederationTooSmall) as err:
        run_scenario(InProcessGrid(["tiny_a", "tiny_b"]), spec, _never, _section, simulated=True)
    # Assert: one line, both numbers, the command that fixes it; nothing was waited for.
    line = str(err.value)
    assert "\n" not in line
    assert "has 2 SuperNodes" in line and "needs 3" in line
    assert "flwr federation simulation-config --num-supernodes 3" in line
    assert "--federation-config 'num-supernodes=3'" in line
    assert time.monotonic() - t0 < 10
    res = results(Path(spec.run_dir))
    assert res["failures"][0]["phase"] == "connect" and "has 2 SuperNodes" in res["notes"][0]


class LateGrid:
    """A grid whose SuperNodes appear only after ``late`` reads, as in Flower's simulation."""

    def __init__(self, ids: list[int], late: int) -> None:
        self.ids, self.late, self.reads = ids, late, 0

    def get_node_ids(self) -> list[int]:
        self.reads += 1
        return self.ids if self.reads > self.late else []


def test_simulated_nodes_registered_after_the_serverapp_starts_are_waited_for():
    # Flower 1.41 starts the ServerApp thread before it registers the simulated SuperNodes.
    late = LateGrid([1, 2, 3], late=5)
    assert simulated_node_ids(late, 3) == [1, 2, 3] and late.reads == 6
    # Too few: read once more, then returned at once for the size error
    small = LateGrid([1, 2], late=0)
    t0 = time.monotonic()
    assert simulated_node_ids(small, 3) == [1, 2] and small.reads == 2
    assert time.monotonic() - t0 < 1
    # None at all: given up after the wait
    assert simulated_node_ids(LateGrid([], late=0), 3, wait=0.2) == []


def test_timeouts_have_minutes_defaults_and_are_validated(tmp_path):
    # Defaults: minutes to connect, per-phase message timeouts instead of one 24-hour wait.
    recipe = load_scenario(TINY).recipe
    assert recipe.connect_timeout == 300
    assert recipe.message_timeout.of("query.identify") == 600
    assert recipe.message_timeout.of("train.classifier") == 7200
    assert recipe.message_timeout.of("evaluate.classifier") == 3600
    assert MessageTimeouts(train=60).of("train.generator") == 60
    # Overrides from the command line reach the recipe.
    sets = {"strategy.connect_timeout": 30, "strategy.message_timeout.train": 900}
    recipe = load_scenario(TINY, sets=sets).recipe
    assert (recipe.connect_timeout, recipe.message_timeout.train) == (30, 900)
    # Bad values name the key and why.
    with pytest.raises(ConfigError, match="message_timeout.train.*12 h"):
        load_scenario(TINY, sets={"strategy.message_timeout.train": 50_000})
    with pytest.raises(ConfigError, match="connect_timeout"):
        load_scenario(TINY, sets={"strategy.connect_timeout": 0})
    with pytest.raises(ConfigError, match="message_timeout.*trian"):
        load_scenario(TINY, sets={"strategy.message_timeout.trian": 10})


def test_flwr_run_config_gives_both_apps_the_same_spec(tmp_path):
    # Absolute paths, data anchored at the project holding the scenario, the node order a
    # simulation federation maps partition ids with (the pooled node after the centres).
    cfg = {"scenario": str(REPO / "scenarios" / "fedavg_quick.yaml"), "run-dir": str(tmp_path)}
    spec = load_runspec(cfg)
    assert spec.deployment and spec.sets == {"data_dir": str(REPO / "data")}
    assert spec.node_order[-1] == POOLED and len(spec.node_order) >= 3
    assert load_runspec(cfg) == spec
    with pytest.raises(ConfigError, match="absolute path.*scenario='\\$PWD/scenarios"):
        load_runspec({"scenario": "scenarios/fedavg_tiny.yaml", "run-dir": str(tmp_path)})
    with pytest.raises(ConfigError, match="'run-dir' must be an absolute path"):
        load_runspec({"scenario": str(TINY), "run-dir": "runs/x"})


@pytest.mark.filterwarnings("ignore:GitWildMatchPattern:DeprecationWarning")  # Flower's pathspec
def test_the_app_bundle_carries_the_package_and_its_yaml_and_no_tests_docs_or_caches(tmp_path):
    # The FAB is what every SuperNode installs and what `flwr run` hashes: built from a copy
    # of the checkout with a test file, a doc and import-linter's cache planted in it.
    from flwr.cli.build import build_fab_from_disk

    app = tmp_path / "fedmammo_app"
    skip = shutil.ignore_patterns("__pycache__")
    for folder in ("fedmammo", "scenarios", "centres", "strategies"):
        shutil.copytree(REPO / folder, app / folder, ignore=skip)
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(REPO / name, app / name)
    clean = build_fab_from_disk(app)
    for planted in ("tests/test_x.py", "tests/helpers/x.py", "docs/x.md", ".grimp_cache/x.json"):
        (app / planted).parent.mkdir(parents=True, exist_ok=True)
        (app / planted).write_text("{}")
    assert build_fab_from_disk(app) == clean  # the bundle and its hash ignore them
    assert build_fab_from_disk(REPO) == clean  # and the checkout, wherever it is, gives the same

    names = set(zipfile.ZipFile(io.BytesIO(clean)).namelist())
    wanted = {p.relative_to(app).as_posix() for p in app.glob("fedmammo/**/*.py")}
    for folder in ("scenarios", "centres", "strategies"):
        wanted |= {p.relative_to(app).as_posix() for p in app.glob(f"{folder}/*.yaml")}
    assert "fedmammo/apps.py" in wanted and "centres/cbis_ddsm.yaml" in wanted
    assert names == wanted | {"README.md", "LICENSE", "pyproject.toml", ".info/CONTENT"}


# --------------------------------------------------------------------------- slow: flwr run
#: The README's "Running with `flwr run`" commands (run from the checkout).
FEDERATION = "num-supernodes=3 client-resources-num-cpus=1"
IGNORED = ("timing",)


@pytest.mark.slow
def test_flwr_run_on_the_local_simulation_federation_matches_simulate(
    tmp_path, fedavg_tiny_simulation
):
    # Prepare: a fresh Flower home (Flower writes its default connections there: `local` is a
    # simulation SuperLink that `flwr run` starts on demand) on a free port.
    flwr_home = tmp_path / "flwr_home"
    env = {
        **os.environ,
        "FLWR_HOME": str(flwr_home),
        "FLWR_LOCAL_SUPERLINK_HTTP_API_PORT": str(free_port()),
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0",
    }
    run_dir = tmp_path / "flwr_run"
    cmd = [
        str(BIN / "flwr"),
        "run",
        ".",
        "--federation-config",
        FEDERATION,
        "--stream",
        "-c",
        f"scenario='{TINY}' run-dir='{run_dir}'",
    ]
    # Execute
    try:
        run = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=420)
    finally:
        stop_tree(local_superlinks(flwr_home))
    out = run.stdout[-4000:] + run.stderr[-3000:]
    assert (run_dir / "results.json").is_file(), out
    flwr = results(run_dir)
    assert flwr["failures"] == [], flwr["failures"]
    assert flwr["meta"]["deployment"] is False  # simulated nodes
    assert flwr["progress"]["federated|0"]["done"]
    assert "all 3 centres connected" in out, out
    assert (run_dir / "run.log").is_file() and (run_dir / "results.md").is_file()
    # The same scenario and seed through fedmammo's own CLI.
    simulated = results(fedavg_tiny_simulation)
    # Assert: the same metric records, value and CI, to the last bit (timing aside): the same
    # apps, data, seeds and one torch thread per centre either way.
    mine, theirs = comparable_metrics(flwr, IGNORED), comparable_metrics(simulated, IGNORED)
    assert mine.keys() == theirs.keys()
    assert any(k[4] == "test" for k in mine)
    assert mine == theirs
    shutil.rmtree(flwr_home, ignore_errors=True)


@pytest.mark.parametrize("resume", [False, True])
def test_a_flwr_run_of_a_folder_another_process_holds_is_refused(tmp_path, resume, caplog):
    import multiprocessing

    from flwr.app import Context, RecordDict

    from fedmammo.errors import FedmammoError
    from fedmammo.federation.server_app import build_server_app
    from fedmammo.run_lock import LOCK, hold_run_folder

    # Prepare: another process (a first `flwr run`'s ServerApp) holds the run folder
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    ready, leave = multiprocessing.Event(), multiprocessing.Event()

    def holder():
        with hold_run_folder(run_dir):
            ready.set()
            leave.wait(60)

    other = multiprocessing.get_context("fork").Process(target=holder)
    other.start()
    assert ready.wait(30)
    config = {"scenario": str(TINY), "run-dir": str(run_dir), "resume": resume}
    context = Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=config)
    app = build_server_app(lambda kind: (_never, _section))
    try:
        # Execute: a second ServerApp on the same folder (a resume reads nothing first)
        with pytest.raises(FedmammoError) as err:
            app(InProcessGrid(["tiny_a", "tiny_b", "tiny_t"]), context)
    finally:
        leave.set()
        other.join(30)
    # Assert: one line naming the holder, said in the log; nothing written in its folder
    assert str(err.value) == (
        f"run folder {run_dir} is in use by process {other.pid}; wait for it or stop it"
    )
    assert any(str(err.value) in r.getMessage() for r in caplog.records)
    assert sorted(p.name for p in run_dir.iterdir()) == []  # the holder removed its lock
    assert not (run_dir / LOCK).exists()
