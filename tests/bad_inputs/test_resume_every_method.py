"""A resumed run equals the uninterrupted one, for every method (issue 15).

Each registered method's tiny scenario runs three times in process (the real ClientApp
behind its guards, no Ray): unbroken; killed as the server sends a training batch drawn at
random (seeded) from the unbroken run's; then resumed from that folder on fresh nodes (every
centre's context.state lost, as after a restart). The resumed run's metric records must equal
the unbroken run's (timings aside), and it must train fewer batches than a fresh run.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from helpers import flower_messages
from helpers.flower_messages import run_tiny_in_process

from fedmammo.methods import METHODS

TESTS = Path(__file__).resolve().parents[1]


class ServerKilled(Exception):
    """The server process died."""


def _batch_of(messages, prefix: str) -> bool:
    return any(m.metadata.message_type.startswith(prefix) for m in messages)


class CountingGrid(flower_messages.InProcessGrid):
    """Counts the server's training and evaluation batches (messages pushed together: a
    send_and_receive call, or one job of a job queue)."""

    batches = 0
    evaluations = 0
    first_comparison = 0  # the evaluation batch that first names a baseline arm

    def push_messages(self, messages):
        messages = list(messages)
        if _batch_of(messages, "train."):
            type(self).batches += 1
        if _batch_of(messages, "evaluate."):
            type(self).evaluations += 1
            compares = any(
                config.get("baseline")
                for m in messages
                for config in m.content.config_records.values()
            )
            if compares and not self.first_comparison:
                type(self).first_comparison = self.evaluations
        return super().push_messages(messages)


def killing_grid(at: int, prefix: str = "train.") -> type:
    class KillingGrid(flower_messages.InProcessGrid):
        seen = 0

        def push_messages(self, messages):
            messages = list(messages)
            if _batch_of(messages, prefix):
                type(self).seen += 1
                if type(self).seen == at:
                    raise ServerKilled(f"killed at {prefix} batch {at}")
            return super().push_messages(messages)

    return KillingGrid


def _run(kind, tmp_path, monkeypatch, run_dir: Path, grid_cls, *, resume, report=None, **sets):
    tiny = TESTS / "methods" / kind / "tiny.yaml"
    return run_tiny_in_process(
        tiny, tmp_path, monkeypatch, kind, sets, run_dir=run_dir, grid_cls=grid_cls,
        resume=resume, report=report, with_pooled=True,
    )  # fmt: skip


def _records(results: dict) -> list[tuple]:
    keys = ("arm", "seed", "centre", "split", "segment", "round", "metric", "value")
    rows = [
        r
        for r in results["metrics"]
        if r["split"] != "timing" and not str(r["metric"]).endswith("compute_seconds")
    ]
    return sorted((tuple(str(r.get(k)) for k in keys) for r in rows), key=str)


@pytest.mark.usefixtures("one_torch_thread")
@pytest.mark.parametrize("kind", sorted(METHODS))
def test_a_killed_run_resumed_equals_the_unbroken_run(kind, tmp_path, monkeypatch):
    # Prepare: the unbroken run, and a kill point drawn from its training batches
    CountingGrid.batches = 0
    unbroken, _ = _run(
        kind, tmp_path, monkeypatch, tmp_path / "unbroken", CountingGrid, resume=False
    )
    total = CountingGrid.batches
    assert total >= 2, f"{kind}: the tiny scenario trains in {total} batch(es)"
    at = random.Random(f"resume-{kind}").randint(2, total)
    broken = tmp_path / "broken"
    # Execute: killed at batch `at`, then resumed on fresh nodes
    with pytest.raises(ServerKilled):
        _run(kind, tmp_path, monkeypatch, broken, killing_grid(at), resume=False)
    CountingGrid.batches = 0
    again, _ = _run(kind, tmp_path, monkeypatch, broken, CountingGrid, resume=True)
    # Assert: the same records as the unbroken run; what the killed run finished was kept
    # (rounds and arms; a phase cut in the middle, such as a downstream task set, reruns)
    assert _records(again) == _records(unbroken), f"{kind} killed at batch {at}/{total}"
    assert CountingGrid.batches < total, (kind, at, total, CountingGrid.batches)
    assert again["failures"] == unbroken["failures"] == []


@pytest.mark.usefixtures("one_torch_thread")
def test_a_resumed_fedbn_arm_continues_each_centres_own_batchnorm(tmp_path, monkeypatch):
    # Prepare: FedBN (BatchNorm stays at each centre) over 3 rounds, two seeds
    fedbn = {
        "strategy.params.arms": ["federated"],
        "strategy.params.rounds": 3,
        "strategy.params.batchnorm": "local",
        "seeds": [0, 1],
    }
    unbroken, _ = _run(
        "fedavg", tmp_path, monkeypatch, tmp_path / "unbroken", CountingGrid, resume=False, **fedbn
    )
    # Execute: killed as round 3 of seed 0 starts; resumed on nodes without memory
    broken = tmp_path / "broken"
    with pytest.raises(ServerKilled):
        _run("fedavg", tmp_path, monkeypatch, broken, killing_grid(3), resume=False, **fedbn)
    again, _ = _run("fedavg", tmp_path, monkeypatch, broken, CountingGrid, resume=True, **fedbn)
    # Assert: round 3 used each centre's own BatchNorm state of rounds 1-2 (from its state
    # folder), so the resumed run equals the unbroken one; seed 1 did not inherit seed 0's,
    # and every seed's rounds are kept (each seed's numbers can be reproduced afterwards)
    assert _records(again) == _records(unbroken)
    files = sorted(p.relative_to(broken) for p in broken.glob("centres/*/fedbn/*/*/*.pt"))
    assert [(p.parts[1], p.parts[-2], p.name) for p in files] == [
        (c, f"seed{s}", f"round{r}.pt") for c in ("a", "b") for s in (0, 1) for r in (1, 2, 3)
    ], files


@pytest.mark.usefixtures("one_torch_thread")
@pytest.mark.parametrize("phase", ["evaluation", "comparison", "report"])
def test_a_run_killed_during_evaluation_or_its_report_resumes_to_the_same_results(
    phase, tmp_path, monkeypatch
):
    # Prepare: the unbroken FedAvg run; the kill point: a random evaluation batch, the first
    # comparison (the federated model against local-c at a training centre, then against
    # pooled at every centre, after every arm), or the report (results.json complete,
    # results.md and report.html not yet written)
    CountingGrid.evaluations = CountingGrid.first_comparison = 0
    unbroken, _ = _run(
        "fedavg", tmp_path, monkeypatch, tmp_path / "unbroken", CountingGrid, resume=False
    )
    broken = tmp_path / "broken"
    grid, report = CountingGrid, None
    if phase == "evaluation":
        at = random.Random("resume-evaluate").randint(1, CountingGrid.evaluations)
        grid = killing_grid(at, "evaluate.")
    elif phase == "comparison":
        grid = killing_grid(CountingGrid.first_comparison, "evaluate.")
    else:

        def report(*args, **kwargs):
            raise ServerKilled("killed while writing the report")

    # Execute
    with pytest.raises(ServerKilled):
        _run("fedavg", tmp_path, monkeypatch, broken, grid, resume=False, report=report)
    if phase == "comparison":  # killed with every arm done and no comparison made
        killed = json.loads((broken / "results.json").read_text())
        assert all(p["done"] for p in killed["progress"].values()), killed["progress"]
        for metric in ("delta_auc", "delta_auc_vs_pooled"):
            assert not [r for r in killed["metrics"] if r["metric"] == metric]
            assert [r for r in unbroken["metrics"] if r["metric"] == metric]
    again, _ = _run("fedavg", tmp_path, monkeypatch, broken, CountingGrid, resume=True)
    # Assert: the same records, and the report written by the resumed run
    assert _records(again) == _records(unbroken)
    assert (broken / "results.md").read_text().startswith("# Results:")
    assert (broken / "report.html").is_file()


@pytest.mark.usefixtures("one_torch_thread")
def test_a_resumed_dp_run_charges_as_the_unbroken_one_and_its_records_agree(
    tmp_path, monkeypatch, caplog
):
    # Prepare: DP FedAvg (fixed noise) over 3 rounds, unbroken
    dp = {
        "strategy.params.arms": ["federated"],
        "strategy.params.rounds": 3,
        "strategy.params.model.options.norm": "group",
        "privacy": {"noise_multiplier": 1.0, "max_grad_norm": 1.0},
    }
    unbroken, _ = _run(
        "fedavg", tmp_path, monkeypatch, tmp_path / "unbroken", CountingGrid, resume=False, **dp
    )
    # Execute: killed as round 2 starts; resumed on nodes without memory
    broken = tmp_path / "broken"
    with pytest.raises(ServerKilled):
        _run("fedavg", tmp_path, monkeypatch, broken, killing_grid(2), resume=False, **dp)
    caplog.clear()
    with caplog.at_level("WARNING"):
        again, _ = _run("fedavg", tmp_path, monkeypatch, broken, CountingGrid, resume=True, **dp)
    # Assert: the same records; in rounds 2 and 3 the server's record of each centre's ledger
    # (sent on resume) agrees with the centre's own, so no centre warns of a disagreement
    assert _records(again) == _records(unbroken)
    assert [r.getMessage() for r in caplog.records if "disagrees" in r.getMessage()] == []
