"""The GAN-sharing paper patch-classifier loop (best validation AUPRC epoch) and patch-source
helpers."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from fedmammo.config import CentreProfile
from fedmammo.data.prepare import materialise_centre
from fedmammo.errors import DataError
from fedmammo.models import build_model
from fedmammo.training.patch_classifier import (
    choose_patients,
    count_lesions,
    patch_frame,
    predict_patch_scores,
    train_patch_classifier,
)


def _blobs(n: int, seed: int, size: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Noise patches; label 1 has a bright disc in the centre."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(0.2, 0.5, (n, size, size)).astype(np.float32)
    y = np.arange(n) % 2
    yy, xx = np.mgrid[:size, :size]
    disc = (yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (size / 5) ** 2
    x[y == 1] += 0.4 * disc
    return x.clip(0, 1), y


def _model(seed: int = 0):
    torch.manual_seed(seed)
    return build_model("patch_cnn", patch_size=16, width=4, hidden=8, dropout=0.0)


def test_keeps_the_best_validation_epoch_and_learns_an_easy_task():
    # Prepare
    x, y = _blobs(64, 0)
    vx, vy = _blobs(24, 1)
    tx, ty = _blobs(40, 2)
    model = _model()
    # Execute
    result = train_patch_classifier(model, x, y, vx, vy, epochs=8, batch_size=8, seed=3)
    scores = predict_patch_scores(model, tx)
    # Assert: the kept epoch maximises (val AUPRC, -val loss) and its weights are loaded
    keys = [(h["val_auprc"], -h["val_loss"]) for h in result.history]
    assert result.best_epoch == 1 + keys.index(max(keys)) and result.epochs_run == 8
    assert result.best_val_auprc == max(k[0] for k in keys)
    state = model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in result.state.items())
    assert scores[ty == 1].mean() > scores[ty == 0].mean() + 0.2


def test_adamw_trains_a_small_swin_and_its_weight_decay_shrinks_the_weights():
    # Prepare: the tiny Swin of the share_gans tests, one AdamW step without and with decay
    x, y = _blobs(16, 0)

    def swin():
        torch.manual_seed(0)
        return build_model("swin_t", input_size=16, embed_dim=8, depths=[1, 1],
                           num_heads=[1, 2], window_size=2)  # fmt: skip

    def first_step(weight_decay):
        model = swin()
        before = model.net.head.weight.detach().clone()
        train_patch_classifier(model, x, y, x[:0], y[:0], epochs=1, batch_size=16,
                               optimizer="adamw", lr=0.01, weight_decay=weight_decay,
                               augment=False)  # fmt: skip
        return before, model.net.head.weight.detach()

    # Execute
    before, plain = first_step(0.0)
    _, decayed = first_step(0.5)
    # Assert: AdamW's step (lr in sign units: each weight moves by about lr), decoupled decay
    assert (plain - before).abs().max() == pytest.approx(0.01, rel=0.01)
    assert torch.allclose(decayed, plain - 0.01 * 0.5 * before, atol=1e-6)
    with pytest.raises(DataError, match="optimizer must be 'sgd' or 'adamw', got 'adam'"):
        train_patch_classifier(swin(), x, y, x[:0], y[:0], epochs=1, optimizer="adam")


def test_channels_last_and_fused_kernels_train_the_same_model_up_to_rounding(monkeypatch):
    # Prepare: the reference loop, then the fast kernels (the fused step recorded)
    x, y = _blobs(32, 0)
    vx, vy = _blobs(12, 1)
    asked = []
    sgd = torch.optim.SGD
    monkeypatch.setattr(torch.optim, "SGD", lambda *a, **k: asked.append(k) or sgd(*a, **k))

    def train(**kernels):
        model = _model()
        result = train_patch_classifier(model, x, y, vx, vy, epochs=3, batch_size=8, seed=1,
                                        **kernels)  # fmt: skip
        scores = predict_patch_scores(model, vx, channels_last=kernels.get("channels_last", False))
        return model, result, scores

    # Execute
    ref, ref_result, ref_scores = train()
    fast, fast_result, fast_scores = train(channels_last=True, fused_optimizer=True)
    again, _, again_scores = train(channels_last=True, fused_optimizer=True)
    # Assert: the fast run's convolutions are channels_last and its step fused; the weights,
    # the kept epoch and the scores are the reference's up to float rounding; and a fast run
    # repeats bit for bit
    assert [k.get("fused", False) for k in asked] == [False, True, True]
    conv = fast.features[4].weight  # 8 x 4 x 3 x 3: its layout tells the two formats apart
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    assert ref.features[4].weight.is_contiguous()
    assert fast_result.best_epoch == ref_result.best_epoch
    for name, value in ref.state_dict().items():
        assert torch.allclose(fast.state_dict()[name].float(), value.float(), atol=1e-5), name
    np.testing.assert_allclose(fast_scores, ref_scores, atol=1e-5)
    np.testing.assert_array_equal(again_scores, fast_scores)


def test_patience_stops_after_that_many_epochs_without_improvement():
    # Prepare: a validation set of identical patches never improves after epoch 1
    x, y = _blobs(32, 0)
    vx = np.full((6, 16, 16), 0.3, np.float32)
    vy = np.array([0, 1, 0, 1, 0, 1])
    # Execute
    result = train_patch_classifier(_model(), x, y, vx, vy, epochs=50, patience=3, seed=0)
    # Assert
    assert result.epochs_run == result.best_epoch + 3 < 50


def test_single_class_validation_keeps_the_last_epoch():
    # Prepare
    x, y = _blobs(16, 0)
    # Execute
    result = train_patch_classifier(_model(), x, y, x[:4], np.zeros(4, int), epochs=3, seed=0)
    # Assert
    assert result.best_epoch == 3 and np.isnan(result.best_val_auprc)


def test_bad_inputs_are_refused():
    x, y = _blobs(8, 0)
    with pytest.raises(DataError, match="labels"):
        train_patch_classifier(_model(), x, y + 1, x, y, epochs=1)
    with pytest.raises(DataError, match=r"\(N, S, S\)"):
        train_patch_classifier(_model(), x[:, :, :8], y, x, y, epochs=1)


def _frame() -> pd.DataFrame:
    les = json.dumps([{"kind": "mass", "box": [1, 1, 4, 4]}])
    calc = json.dumps([{"kind": "calcification", "box": [1, 1, 4, 4]}])
    rows = []
    for p in range(20):
        value = les if p < 6 else calc if p < 10 else "[]"
        rows += [
            {"image_id": f"{p}-{v}", "patient_id": f"p{p}", "lesions": value} for v in ("CC", "MLO")
        ]
    return pd.DataFrame(rows)


def test_choose_patients_keeps_a_seeded_stratified_fraction():
    # Prepare
    frame = _frame()
    # Execute
    half = choose_patients(frame, 0.5, subset="masses", seed=1)
    again = choose_patients(frame, 0.5, subset="masses", seed=1)
    other = choose_patients(frame, 0.5, subset="masses", seed=2)
    # Assert: 3 of 6 mass patients and 7 of 14 others, whole patients (both views)
    assert half.equals(again) and not half.equals(other)
    assert count_lesions(half, "masses") == 6 and half["patient_id"].nunique() == 10
    assert (half.groupby("patient_id").size() == 2).all()
    assert choose_patients(frame, 1.0, subset="all", seed=0) is frame
    with pytest.raises(DataError, match="fraction"):
        choose_patients(frame, 0.0, subset="all", seed=0)


def test_patch_frame_gives_cache_frame_boxes_and_spacing(tmp_path):
    # Prepare
    profile = CentreProfile.model_validate(
        {
            "name": "pf",
            "data": {
                "synthetic": {
                    "image_height": 64,
                    "segments": [
                        {
                            "manufacturer": "Ma",
                            "patients": 6,
                            "prevalence": 0.5,
                            "lesion_prevalence": 1.0,
                        }
                    ],
                }
            },
        }
    )
    data = materialise_centre(profile, tmp_path, image_size=(48, 36))
    # Execute
    frame = patch_frame(data, None)
    # Assert
    assert len(frame) == len(data.manifest) and count_lesions(frame, "all") > 0
    for row in frame.itertuples():
        scale = data.cache.geometry(row.image_id).scale
        dicom = data.manifest.loc[data.manifest["image_id"] == row.image_id, "pixel_spacing"]
        assert row.pixel_spacing * scale == pytest.approx(float(dicom.iloc[0]))
        for lesion in json.loads(row.lesions):
            x0, y0, x1, y1 = lesion["box"]
            assert 0 <= x0 < x1 <= 36 and 0 <= y0 < y1 <= 48
