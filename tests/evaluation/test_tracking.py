"""Offline tracking: TensorBoard event files and a local MLflow store, read back."""

from __future__ import annotations

import pytest

from fedmammo.errors import ConfigError
from fedmammo.evaluation.tracking import Tracker, tracking_settings

SCENARIO = {
    "name": "tiny",
    "seeds": [0, 1],
    "strategy": {"kind": "fedavg", "params": {"rounds": 3, "train": {"lr": 0.002}}},
    "privacy": None,
}


def _log_rounds(tracker: Tracker) -> None:
    for rnd in (1, 2, 3):
        for centre, base in (("s1", 0.6), ("s2", 0.5)):
            tracker.log_round(
                "federated", centre, rnd, {"auc": base + 0.1 * rnd, "wll": 1 / rnd, "n": None}
            )


def test_without_tracking_section_nothing_is_written(tmp_path):
    tracker = Tracker.from_config(SCENARIO, tmp_path / "run")

    _log_rounds(tracker)
    tracker.log_params(SCENARIO)
    tracker.close()

    assert not tracker.enabled and not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "cfg, message",
    [
        ({"tracking": {"wandb": True}}, "key 'tracking.wandb': unknown key"),
        ({"tracking": {"mlflow": {"uri": "x"}}}, "key 'tracking.mlflow.uri': unknown key"),
        ({"tracking": ["tensorboard"]}, "key 'tracking': Input should be a valid dictionary"),
    ],
)
def test_bad_tracking_config_is_a_clear_error(cfg, message):
    with pytest.raises(ConfigError, match=message):
        tracking_settings(cfg)


def test_settings_accept_booleans_and_options():
    cfg = {"tracking": {"tensorboard": True, "mlflow": False}}

    assert tracking_settings(cfg) == {"tensorboard": {}}
    only_mlflow = {"tracking": {"mlflow": {"experiment": "e"}}}
    assert tracking_settings(only_mlflow) == {"mlflow": {"experiment": "e"}}
    assert tracking_settings({"name": "no-tracking"}) == {}


def test_tensorboard_event_files_hold_the_rounds(tmp_path):
    pytest.importorskip("tensorboard", reason="tensorboard is not installed (tracking extra)")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    with Tracker.from_config({**SCENARIO, "tracking": {"tensorboard": True}}, run) as tracker:
        _log_rounds(tracker)
        tracker.log_params(SCENARIO)

    acc = EventAccumulator(str(run / "tensorboard"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert tags == {f"federated/{c}/{m}" for c in ("s1", "s2") for m in ("auc", "wll")}
    events = acc.Scalars("federated/s2/auc")
    assert [e.step for e in events] == [1, 2, 3]
    assert [e.value for e in events] == pytest.approx([0.6, 0.7, 0.8])
    assert "scenario/text_summary" in acc.Tags()["tensors"]


def test_mlflow_store_holds_rounds_params_and_report(tmp_path):
    pytest.importorskip("mlflow", reason="mlflow is not installed (tracking extra)")
    from mlflow.tracking import MlflowClient

    run = tmp_path / "tiny" / "20260101-120000"
    report = tmp_path / "report.html"
    report.write_text("<html></html>")
    cfg = {**SCENARIO, "tracking": {"mlflow": True}}
    with Tracker.from_config(cfg, run) as tracker:
        _log_rounds(tracker)
        tracker.log_params(SCENARIO)
        tracker.log_artifact(report)
    with Tracker.from_config(cfg, run) as resumed:  # a resumed run logs into the same run
        resumed.log_round("local-s1+x@all", "s1", 4, {"auc": 0.9})

    client = MlflowClient(tracking_uri=f"sqlite:///{run / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("tiny")
    (found,) = client.search_runs([experiment.experiment_id])
    history = client.get_metric_history(found.info.run_id, "federated/s1/auc")
    assert [(m.step, round(m.value, 6)) for m in history] == [(1, 0.7), (2, 0.8), (3, 0.9)]
    assert client.get_metric_history(found.info.run_id, "local-s1_x_all/s1/auc")[0].value == 0.9
    params = found.data.params
    assert params["strategy.params.rounds"] == "3" and params["strategy.params.train.lr"] == "0.002"
    assert params["privacy"] == "null" and params["seeds"] == "[0, 1]"
    names = {a.path for a in client.list_artifacts(found.info.run_id)}
    assert names == {"report.html", "scenario.resolved.yaml"}
    assert found.info.status == "FINISHED" and found.info.run_name == run.name


def test_check_names_a_tracker_whose_package_is_not_installed(monkeypatch):
    # Prepare: tensorboard hidden from the import system, mlflow installed (the extra)
    import importlib.util

    from fedmammo.config.scenario import TrackingSpec
    from fedmammo.evaluation.tracking import missing_trackers

    found = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "tensorboard" else found(name)
    )
    spec = TrackingSpec.model_validate({"tensorboard": True, "mlflow": True})
    # Execute / Assert
    assert missing_trackers(spec) == [
        "key 'tracking.tensorboard' needs the tensorboard package; fix: pip install "
        "'fedmammo[tracking]'"
    ]
    assert missing_trackers(None) == [] == missing_trackers(TrackingSpec())
