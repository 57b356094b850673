"""Pixels never leave a centre: in a tiny CycleGAN-UDA run the only arrays any centre sends
are weights of a model it declared (tile generator, CycleGAN generator, classifier)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, MetricRecord, RecordDict

from fedmammo.federation.egress import EgressError, check_outgoing
from fedmammo.models import build_model
from fedmammo.models.cyclegan import ResnetGenerator
from fedmammo.models.gans import build_generator

IMAGE = (32, 24)  # the tiny scenario's image size
TILE = 8


def _shapes(record: ArrayRecord) -> dict[str, tuple[int, ...]]:
    return {k: tuple(a.shape) for k, a in record.items()}


def _arrays(content) -> list[tuple[str, ArrayRecord]]:
    return [(n, r) for n, r in content.items() if isinstance(r, ArrayRecord)]


def test_the_source_shares_only_its_tile_generator_and_classifier_weights(tiny_run):
    # Prepare
    _, grid, _ = tiny_run
    generator = {
        k: tuple(v.shape)
        for k, v in build_generator(patch_size=TILE, latent_dim=8, width=4).state_dict().items()
    }
    classifiers = [
        {k: tuple(v.shape) for k, v in build_model(n, **o).state_dict().items()}
        for n, o in (
            ("alexnet", {"input_size": 64, "hidden": 16}),
            ("resnet50", {"input_size": 32}),
        )
    ]
    # Execute: every reply of each centre, by message kind
    kinds = {kind for _, kind, _ in grid.replies}
    for _, kind, content in grid.replies:
        arrays = _arrays(content)
        # Assert
        if kind == "train.uda_tile_generator":
            assert [n for n, _ in arrays] == ["generator"]
            assert _shapes(arrays[0][1]) == generator
        elif kind == "train.uda_classifier":
            assert [n for n, _ in arrays] == ["arrays"]
            assert _shapes(arrays[0][1]) in classifiers
        else:
            assert kind in ("train.uda_translator", "evaluate.uda_classifier", "query.identify")
        for _, record in arrays:
            assert not any(
                s[-2:] in (IMAGE, IMAGE[::-1], (TILE, TILE)) for s in _shapes(record).values()
            )
        if kind in ("evaluate.uda_classifier", "query.identify"):
            assert arrays == []
    assert kinds >= {"train.uda_tile_generator", "train.uda_translator", "train.uda_classifier"}


def test_the_target_shares_only_the_generator_source_to_target(tiny_run):
    # Prepare
    _, grid, _ = tiny_run
    translator = {
        k: tuple(v.shape) for k, v in ResnetGenerator(width=4, n_blocks=1).state_dict().items()
    }
    # Execute
    replies = [(c, content) for c, kind, content in grid.replies if kind == "train.uda_translator"]
    # Assert: one per direction, from the target centre, one generator (not both, no critic)
    assert sorted(c for c, _ in replies) == ["digital", "film"]
    for _, content in replies:
        arrays = _arrays(content)
        assert [n for n, _ in arrays] == ["translator"]
        assert _shapes(arrays[0][1]) == translator


def test_the_target_replies_the_generator_from_the_source_style_to_its_own(
    tiny_run, cyclegan_calls
):
    # Prepare: the CycleGANs the target centres trained (domain A: own tiles, B: tiles
    # sampled from the source's generator), in the order of their replies
    _, grid, _ = tiny_run
    replies = [content for _, kind, content in grid.replies if kind == "train.uda_translator"]
    # Execute / Assert: B is the source style, and the reply is G_ba (B -> A: source ->
    # target), not G_ab (both have the same shapes)
    assert len(replies) == len(cyclegan_calls) == 2
    for content, call in zip(replies, cyclegan_calls, strict=True):
        assert call["source_style"] is call["sampled"] and call["own"] is not call["sampled"]
        sent = {k: a.numpy() for k, a in content["translator"].items()}
        g_ab, g_ba = call["result"].g_ab_state, call["result"].g_ba_state
        assert sent.keys() == g_ba.keys()
        assert all(np.array_equal(sent[k], g_ba[k].numpy()) for k in sent)
        assert not all(np.array_equal(sent[k], g_ab[k].numpy()) for k in sent)


def test_only_uda_arms_send_the_source_a_translator(tiny_run):
    # Prepare
    _, grid, _ = tiny_run
    # Execute: what the server sent each classifier (the grid's log holds configs)
    sent = [cfg for _, kind, cfg in grid.log if kind == "train.uda_classifier"]
    uda = [c for c in sent if c["arm"].startswith("uda-")]
    others = [c for c in sent if not c["arm"].startswith("uda-")]
    # Assert: a uda arm's message names the translator it carries, the others none
    assert len(uda) == 4 and len(others) == 8  # 2 models x 2 directions (x 2 arms)
    assert all(json.loads(c["translator-arch"]) == {"width": 4, "n_blocks": 1} for c in uda)
    assert all(json.loads(c.get("translator-arch", "{}")) == {} for c in others)


def test_guard_refuses_a_translated_image_smuggled_into_a_classifier_reply(tiny_run):
    # Prepare: a genuine classifier reply plus one image-shaped array under a model key
    _, grid, _ = tiny_run
    content = next(c for _, kind, c in grid.replies if kind == "train.uda_classifier")
    state = build_model("alexnet", input_size=64, hidden=16).state_dict()
    if set(state) != set(content["arrays"].keys()):
        state = build_model("resnet50", input_size=32).state_dict()
    leaked = RecordDict(dict(content.items()))
    leaked["images"] = ArrayRecord({next(iter(state)): torch.zeros(4, 1, *IMAGE)})
    # Execute / Assert
    check_outgoing(content, state)
    with pytest.raises(EgressError, match="image-like|shape"):
        check_outgoing(leaked, state)
    assert isinstance(content["metrics"], MetricRecord)
