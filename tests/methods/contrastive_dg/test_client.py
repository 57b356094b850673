"""contrastive_dg's handlers on tiny deployed-style centres (no Ray), through the egress guard:
tile generators, style banks kept at the centre, downstream models out and back in."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from flwr.app import ArrayRecord, Context, RecordDict
from helpers.flower_messages import make_incoming

from fedmammo.config import CentreProfile
from fedmammo.data.prepare import materialise_centre
from fedmammo.errors import ConfigError
from fedmammo.federation.egress import egress_mod
from fedmammo.federation.messages import ARRAYS, INFO, METRICS, EvaluationMetrics
from fedmammo.methods.contrastive_dg import client
from fedmammo.methods.contrastive_dg.messages import (
    DownstreamMetrics,
    EvaluateDownstream,
    StyleBankMetrics,
    TileGeneratorInfo,
    TrainDownstream,
    TrainStyleBank,
    TrainTileGenerator,
)
from fedmammo.methods.contrastive_dg.params import (
    CycleGanParams,
    FinetuneParams,
    TaskParams,
    TileGanParams,
)
from fedmammo.methods.contrastive_dg.styles import StyleStore, train_rows
from fedmammo.models.gans import build_generator
from fedmammo.training.downstream import EncoderClassifier

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SIZE = (64, 48)
TILES = TileGanParams(
    tile_size=8, n_tiles=8, n_synthetic=8, epochs=1, batch_size=4, width=4, latent_dim=8
)
CYCLE = CycleGanParams(epochs=1, batch_size=4, width=4, n_blocks=1, d_width=4)
ENCODER = {"name": "contrastive_resnet_slim", "options": {"width": 4, "projection_dim": 8}}
ONE_EPOCH = TaskParams(epochs=1, batch_size=8, optimizer="adam")
FT = FinetuneParams(
    detection=ONE_EPOCH,
    matching=ONE_EPOCH,
    birads=ONE_EPOCH,
    density=ONE_EPOCH,
    crop_size=16,
    fpn_channels=32,
)
BASE = {"image_size": SIZE, "data_seed": 0, "seed": 4}


def _profile(name: str, vendor: str) -> CentreProfile:
    segment = {"manufacturer": vendor, "patients": 5, "prevalence": 0.5, "lesion_prevalence": 1}
    synthetic = {"image_height": 64, "calcification_fraction": 0.0, "segments": [segment]}
    return CentreProfile.model_validate(
        {"name": name, "source": "DG", "data": {"synthetic": synthetic}}
    )


@pytest.fixture(scope="module")
def centres(tmp_path_factory):
    root = tmp_path_factory.mktemp("dg_centres")
    out = {}
    for name, vendor in (("A", "Ma"), ("B", "Mb")):
        data = materialise_centre(
            _profile(name, vendor), root, image_size=SIZE, data_dir=root / name
        )
        out[name] = (data, root / name)
    return out


def _context(data_dir: Path, name: str, out_dir: Path) -> Context:
    node = {"centre": name, "data-dir": str(data_dir), "output-dir": str(out_dir)}
    return Context(run_id=1, node_id=7, node_config=node, state=RecordDict(), run_config={})


def _send(fn, m, context, records=None) -> RecordDict:
    incoming = make_incoming(m.content(records), m.KIND)
    out = egress_mod(incoming, context, fn)  # the real reply path
    assert not out.has_error(), out.error.reason if out.has_error() else ""
    return out.content


@pytest.fixture(scope="module")
def generator_of_b(centres, tmp_path_factory):
    _, data_dir = centres["B"]
    context = _context(data_dir, "B", tmp_path_factory.mktemp("out_b"))
    m = TrainTileGenerator(arm="styles", tiles=TILES.model_dump(), **BASE)
    return _send(client.train_tile_generator_handler, m, context)


def test_tile_generator_reply_is_the_generator_and_what_it_is(generator_of_b):
    # Prepare
    reference = build_generator(patch_size=8, latent_dim=8, width=4).state_dict()
    # Execute
    arrays = [k for k, v in generator_of_b.items() if isinstance(v, ArrayRecord)]
    state = generator_of_b[ARRAYS].to_torch_state_dict()
    info = TileGeneratorInfo.from_config(generator_of_b[INFO])
    # Assert: exactly the generator's weights leave, with its style and architecture
    assert arrays == [ARRAYS]
    assert {k: tuple(v.shape) for k, v in state.items()} == {
        k: tuple(v.shape) for k, v in reference.items()
    }
    assert info == TileGeneratorInfo(style="B", patch_size=8, latent_dim=8, width=4)
    assert generator_of_b[METRICS]["n-tiles"] == 8


def _style_bank(centres, generator_of_b, out: Path) -> tuple[RecordDict, Path]:
    data_dir = centres["A"][1]
    info = dict(generator_of_b[INFO])
    m = TrainStyleBank(
        arm="styles",
        generators=[info],
        tiles=TILES.model_dump(),
        cyclegan=CYCLE.model_dump(),
        grid_images=2,
        styles="k1",
        **BASE,
    )
    content = _send(
        client.train_style_bank,
        m,
        _context(data_dir, "A", out),
        {"arrays-0": generator_of_b[ARRAYS]},
    )
    return content, out


def test_style_bank_stays_at_the_centre_own_style_first_and_is_reused(
    centres, generator_of_b, tmp_path
):
    # Execute: build, then ask again
    first, out = _style_bank(centres, generator_of_b, tmp_path)
    again, _ = _style_bank(centres, generator_of_b, tmp_path)
    # Assert: counts only leave; the bank is on the centre's own disk
    assert not first.array_records
    sent = StyleBankMetrics.from_metrics(first[METRICS])
    data, _ = centres["A"]
    frame, images = train_rows(data)
    assert (sent.n_images, sent.n_styles) == (len(frame), 2) and sent.steps > 0
    bank = StyleStore(out / client.STORE, "A").bank("k1", list(frame["image_id"].astype(str)))
    assert bank.styles == ("A", "B") and bank.images.shape == (len(frame), 2, *SIZE)
    np.testing.assert_allclose(bank.images[:, 0], images, atol=1e-3)  # float16 on disk
    assert 0.0 <= bank.images.min() and bank.images.max() <= 1.0
    assert not np.allclose(bank.images[:, 1], images, atol=1e-2)  # translated
    assert StyleBankMetrics.from_metrics(again[METRICS]).steps == 0  # reused
    assert (out / "plots" / "style_samples_A.png").stat().st_size > 1000


def _downstream(centres, task, out, *, fraction=1.0):
    from fedmammo.federation.rounds import initial_arrays

    data_dir = centres["A"][1]
    m = TrainDownstream(
        arm="random",
        model=ENCODER,
        task=task,
        fraction=fraction,
        finetune=FT.model_dump(),
        **BASE,
    )
    arrays = initial_arrays(ENCODER, 0)
    return _send(client.train_downstream, m, _context(data_dir, "A", out), {ARRAYS: arrays})


def test_downstream_reply_is_the_task_model_and_its_training(centres, tmp_path):
    # Execute
    content = _downstream(centres, "birads", tmp_path)
    # Assert: the BI-RADS classifier's weights (backbone + 3-class head), nothing else
    from fedmammo.models import build_model

    reference = EncoderClassifier(build_model(ENCODER["name"], **ENCODER["options"]), 3)
    state = content[ARRAYS].to_torch_state_dict()
    assert {k: tuple(v.shape) for k, v in state.items()} == {
        k: tuple(v.shape) for k, v in reference.state_dict().items()
    }
    sent = DownstreamMetrics.from_metrics(content[METRICS])
    assert sent.num_examples > 0 and sent.steps >= 1 and np.isfinite(sent.train_loss)


@pytest.mark.parametrize("task", ["birads", "detection"])
def test_evaluating_a_model_twice_averages_to_the_model_itself(centres, tmp_path, task):
    # Prepare: one fine-tuned model, evaluated at centre B once and as two "sources"
    model = _downstream(centres, task, tmp_path)[ARRAYS]
    context = _context(centres["B"][1], "B", tmp_path)

    def evaluate(sources):
        m = EvaluateDownstream(
            arm="random",
            model=ENCODER,
            task=task,
            finetune=FT.model_dump(),
            sources=sources,
            n_boot=20,
            **BASE,
        )
        records = {f"arrays-{k}": model for k in range(len(sources))}
        content = _send(client.evaluate_downstream, m, context, records)
        return EvaluationMetrics.from_metrics(content[METRICS]).records

    # Execute
    once, twice = evaluate(["A"]), evaluate(["A", "A2"])
    # Assert
    assert len(once) == 1 and once == twice
    assert 0.0 <= once[0]["value"] <= 1.0


def test_a_federated_round_continues_the_task_model_for_its_share_of_the_epochs(centres, tmp_path):
    # Prepare: a density model (as the server builds it), 3 epochs shared over 2 rounds
    from fedmammo.federation.messages import TrainMetrics
    from fedmammo.federation.rounds import initial_arrays
    from fedmammo.methods.contrastive_dg.messages import TrainDownstreamRound
    from fedmammo.methods.contrastive_dg.server import initial_task_arrays

    ft = FT.model_copy(update={"density": ONE_EPOCH.model_copy(update={"epochs": 3})})
    start = initial_task_arrays(
        ENCODER, initial_arrays(ENCODER, 0), "density", 1.0, ft, image_size=SIZE, seed=0
    )
    context = _context(centres["A"][1], "A", tmp_path)

    def round_(server_round):
        m = TrainDownstreamRound(
            arm="random.density_accuracy",
            model=ENCODER,
            task="density",
            finetune=ft.model_dump(),
            patients_seed=0,
            rounds=2,
            server_round=server_round,
            **BASE,
        )
        content = _send(client.train_downstream_round, m, context, {ARRAYS: start})
        return content, TrainMetrics.from_metrics(content[METRICS])

    # Execute
    (first, sent1), (_, sent2) = round_(1), round_(2)
    # Assert: round 1 trains 2 epochs, round 2 one; the count weighting reads is the samples'
    assert sent1.steps == 2 * sent2.steps > 0
    assert sent1.num_images == sent1.num_examples == sent1.num_labelled > 0
    state = first[ARRAYS].to_torch_state_dict()
    assert state.keys() == start.to_torch_state_dict().keys()  # the whole task model returns
    # ... and evaluate.downstream without sources tests the one model in arrays
    evaluate = EvaluateDownstream(
        arm="random", model=ENCODER, task="density", finetune=ft.model_dump(), n_boot=0, **BASE
    )
    alone = _send(client.evaluate_downstream, evaluate, context, {ARRAYS: first[ARRAYS]})
    as_source = dataclasses.replace(evaluate, sources=["federated"])
    named = _send(client.evaluate_downstream, as_source, context, {"arrays-0": first[ARRAYS]})
    assert EvaluationMetrics.from_metrics(alone[METRICS]).records == (
        EvaluationMetrics.from_metrics(named[METRICS]).records
    )


def test_a_style_bank_name_from_the_server_never_names_a_path(tmp_path):
    store = StyleStore(tmp_path, "A")
    for bad in ("../../x", "a/b", ".hidden", ""):
        with pytest.raises(ConfigError, match="style bank name .* refused"):
            store.has(bad)
    assert store.has("0123abcdef45") is False  # a styles_key is a name
