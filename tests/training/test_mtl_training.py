"""Tests of fedmammo.training.mtl: the uncertainty-weighted loss, dataset, train/evaluate loops."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from fedmammo.errors import DataError
from fedmammo.models.mtl import MultiTaskNet
from fedmammo.training.mtl import (
    MultiTaskDataset,
    collate_mtl,
    evaluate_mtl,
    finetune_acr_weights,
    mtl_loss,
    train_mtl,
    weighted_task_loss,
)

TINY = (4, 8, 8, 8, 8)


def _logits(n: int = 4, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    sizes = {"malignancy": 2, "acr": 6, "density": 4, "view": 2}
    return {t: torch.randn(n, c, generator=g) for t, c in sizes.items()}


def _zeros_u(targets):
    return {t: torch.zeros(len(v)) for t, v in targets.items()}


def test_loss_matches_naive_reference_of_eq_1_2():
    # Prepare
    logits = _logits(n=4)
    targets = {
        "malignancy": torch.tensor([0, 1, -1, 1]),
        "acr": torch.tensor([5, -1, 2, 0]),
        "density": torch.tensor([-1, -1, -1, 3]),
        "view": torch.tensor([1, 0, 0, 1]),
    }
    unc = {
        "malignancy": torch.tensor([0.0, 0.5, 0.3, 0.9]),
        "acr": torch.tensor([0.2, 0.0, 1.0, 0.0]),
        "density": torch.zeros(4),
        "view": torch.tensor([0.1, 0.1, 0.1, 0.1]),
    }
    # Execute
    loss = weighted_task_loss(logits, targets, unc)
    # Assert
    expected = 0.0
    for t, z in logits.items():
        for i in range(4):
            y = int(targets[t][i])
            if y >= 0:
                ce = -torch.log_softmax(z[i].detach(), dim=0)[y]
                expected += (1 - float(unc[t][i])) * float(ce)
    assert float(loss.detach()) == pytest.approx(expected / 4, rel=1e-6)


def test_missing_labels_give_zero_loss_and_exactly_zero_head_gradients():
    # Prepare: a batch where acr is missing everywhere
    torch.manual_seed(0)
    model = MultiTaskNet(widths=TINY, decoder=False)
    x = torch.rand(3, 1, 32, 32)
    targets = {
        "malignancy": torch.tensor([0, 1, 1]),
        "acr": torch.full((3,), -1),
        "density": torch.tensor([0, 2, 3]),
        "view": torch.tensor([1, 0, 1]),
    }
    # Execute
    out = model(x)
    loss = weighted_task_loss(out["logits"], targets, _zeros_u(targets))
    loss.backward()
    only_acr = weighted_task_loss({"acr": out["logits"]["acr"]}, targets, _zeros_u(targets))
    # Assert
    assert float(only_acr.detach()) == 0.0
    assert torch.equal(model.heads["acr"].weight.grad, torch.zeros_like(model.heads["acr"].weight))
    assert torch.equal(model.heads["acr"].bias.grad, torch.zeros_like(model.heads["acr"].bias))
    assert model.heads["malignancy"].weight.grad.abs().sum() > 0


def test_missing_label_sample_contributes_nothing_per_sample():
    # Prepare: sample 1's malignancy label is missing; changing its logits changes nothing
    logits = {"malignancy": torch.randn(2, 2, requires_grad=True)}
    targets = {"malignancy": torch.tensor([1, -1])}
    other = {"malignancy": logits["malignancy"].detach().clone()}
    other["malignancy"][1] = torch.tensor([50.0, -50.0])
    # Execute
    loss = weighted_task_loss(logits, targets, _zeros_u(targets))
    loss.backward()
    loss_other = weighted_task_loss(other, targets, _zeros_u(targets))
    # Assert
    assert torch.equal(logits["malignancy"].grad[1], torch.zeros(2))
    assert logits["malignancy"].grad[0].abs().sum() > 0
    assert float(loss.detach()) == pytest.approx(float(loss_other))


def test_two_batches_same_present_sample_same_gradient_regardless_of_missing_one():
    # Prepare: batch A = [s0], batch B = [s0, missing]; loss is divided by batch size
    torch.manual_seed(1)
    model = MultiTaskNet(widths=TINY, tasks={"malignancy": 2}, decoder=False, dropout=0.0)
    model.double()  # float64 so batched and single-sample convolutions agree to ~1e-12
    x = torch.rand(2, 1, 32, 32, dtype=torch.float64)

    def grads(xb, yb):
        model.zero_grad()
        t = {"malignancy": yb}
        weighted_task_loss(model(xb)["logits"], t, _zeros_u(t)).backward()
        return [p.grad.clone() for p in model.parameters()]

    # Execute
    g_a = grads(x[:1], torch.tensor([1]))
    g_b = grads(x, torch.tensor([1, -1]))
    # Assert: instance norm is per-sample, so the missing sample adds exactly nothing
    for a, b in zip(g_a, g_b, strict=True):
        torch.testing.assert_close(b, a / 2, rtol=1e-9, atol=1e-12)


def test_weight_scales_as_one_minus_uncertainty():
    # Prepare
    logits = {"malignancy": torch.tensor([[0.3, -0.7]])}
    targets = {"malignancy": torch.tensor([1])}
    # Execute
    losses = {
        u: float(weighted_task_loss(logits, targets, {"malignancy": torch.tensor([u])}))
        for u in (0.0, 0.25, 0.9, 1.0)
    }
    # Assert
    base = float(F.cross_entropy(logits["malignancy"], targets["malignancy"]))
    assert losses[0.0] == pytest.approx(base)
    assert losses[0.25] == pytest.approx(0.75 * losses[0.0])
    assert losses[0.9] == pytest.approx(0.1 * losses[0.0], rel=1e-5)
    assert losses[1.0] == 0.0


def test_acr_4_5_samples_weigh_20_in_every_task_and_confirmed_acr_6_cancers_weigh_1():
    # Prepare: ACR 5 (cancer), ACR 6 (confirmed cancer), ACR 2 (benign), no ACR (benign);
    # fine-tuning labels ACR 4-6 malignant, so a weight by malignancy class would give 20, 20
    logits = {"malignancy": torch.randn(4, 2), "acr": torch.randn(4, 6)}
    targets = {"malignancy": torch.tensor([1, 1, 0, 0]), "acr": torch.tensor([4, 5, 1, -1])}
    unc = _zeros_u(targets)
    weights = finetune_acr_weights(20.0)

    def per_sample(task: str) -> list[float]:
        out = []
        for i in range(4):
            one = {t: v[i : i + 1] for t, v in targets.items()}
            lone = {task: logits[task][i : i + 1]}
            plain = float(weighted_task_loss(lone, one, _zeros_u(one)))
            weighted = float(weighted_task_loss(lone, one, _zeros_u(one), acr_weights=weights))
            out.append(weighted / plain if plain else float("nan"))
        return out

    # Execute / Assert: the sample's ACR sets its weight, in the malignancy loss too
    assert per_sample("malignancy") == pytest.approx([20.0, 1.0, 1.0, 1.0])
    assert per_sample("acr")[:3] == pytest.approx([20.0, 1.0, 1.0])
    assert weights.tolist() == [1.0, 1.0, 1.0, 20.0, 20.0, 1.0]
    # the batch loss is the mean of the weighted per-sample losses
    batch = float(weighted_task_loss(logits, targets, unc, acr_weights=weights))
    ce_m = torch.nn.functional.cross_entropy(
        logits["malignancy"], targets["malignancy"], reduction="none"
    )
    ce_a = torch.nn.functional.cross_entropy(
        logits["acr"][:3], targets["acr"][:3], reduction="none"
    )
    by = torch.tensor([20.0, 1.0, 1.0, 1.0])
    assert batch == pytest.approx(
        float((ce_m * by).sum() / 4 + (ce_a * by[:3]).sum() / 4), rel=1e-5
    )


def test_bad_targets_raise_data_error():
    logits = {"malignancy": torch.zeros(2, 2)}
    with pytest.raises(DataError, match="malignancy"):
        weighted_task_loss(logits, {"malignancy": torch.tensor([0, 2])}, {})
    with pytest.raises(DataError, match="switched off"):
        weighted_task_loss({}, {}, {})


def test_mtl_loss_adds_reconstruction_mse():
    # Prepare
    torch.manual_seed(0)
    model = MultiTaskNet(widths=TINY).eval()
    x = torch.rand(2, 1, 32, 32)
    targets = {"malignancy": torch.tensor([0, 1]), "view": torch.tensor([-1, -1])}
    batch = (x, targets, _zeros_u(targets))
    out = model(x)
    # Execute
    total, parts = mtl_loss(out, batch, recon_weight=2.0)
    # Assert
    mse = float(F.mse_loss(out["reconstruction"].detach(), x))
    assert parts["reconstruction"] == pytest.approx(mse, rel=1e-5)
    assert parts["task_view"] == 0.0
    assert parts["task_acr"] == 0.0  # head present, no targets: missing everywhere
    assert float(total.detach()) == pytest.approx(parts["classification"] + 2.0 * mse, rel=1e-5)


def _synthetic(n: int = 16, size: int = 32, seed: int = 0):
    # Malignant images carry a bright blob, MLO views a bright top-left corner.
    rng = np.random.default_rng(seed)
    mal = np.arange(n) % 2
    view = (np.arange(n) // 2) % 2
    imgs = rng.uniform(0.0, 0.2, size=(n, size, size)).astype(np.float32)
    imgs[mal == 1, 12:20, 12:20] += 0.8
    imgs[view == 1, :6, :6] += 0.8
    density = rng.integers(0, 4, n)
    targets = {
        "malignancy": mal.astype(np.int64),
        "view": view.astype(np.int64),
        "density": density.astype(np.int64),
        "acr": np.full(n, -1, dtype=np.int64),
    }
    targets["malignancy"][:3] = -1
    unc = {t: np.zeros(n, dtype=np.float32) for t in targets}
    return imgs, targets, unc


def test_dataset_scales_uint16_and_collate_stacks_dicts():
    # Prepare
    imgs = np.full((3, 8, 6), 65535, dtype=np.uint16)
    targets = {"malignancy": np.array([0, -1, 1]), "view": np.array([1, 1, 0])}
    unc = {"malignancy": np.array([0.0, 0.0, 0.5]), "view": np.zeros(3)}
    ds = MultiTaskDataset(imgs, targets, unc)
    # Execute
    x, t, u = collate_mtl([ds[i] for i in range(3)])
    # Assert
    assert x.shape == (3, 1, 8, 6) and x.dtype == torch.float32
    assert float(x.max()) == 1.0
    assert t["malignancy"].tolist() == [0, -1, 1] and t["malignancy"].dtype == torch.int64
    assert u["malignancy"].dtype == torch.float32 and u["malignancy"].tolist() == [0.0, 0.0, 0.5]
    with pytest.raises(DataError, match="lengths differ"):
        MultiTaskDataset(imgs[:2], targets, unc)


def test_training_reduces_loss_and_evaluate_reports_metrics():
    # Prepare
    torch.manual_seed(0)
    imgs, targets, unc = _synthetic()
    ds = MultiTaskDataset(lambda i: imgs[i], targets, unc)
    loader = DataLoader(
        ds,
        batch_size=8,
        shuffle=True,
        collate_fn=collate_mtl,
        generator=torch.Generator().manual_seed(0),
    )
    eval_loader = DataLoader(ds, batch_size=16, collate_fn=collate_mtl)
    model = MultiTaskNet(widths=TINY, dropout=0.0)
    before = evaluate_mtl(model, eval_loader)
    # Execute
    metrics = train_mtl(model, loader, epochs=15, lr=3e-3)
    after = evaluate_mtl(model, eval_loader)
    # Assert
    assert metrics["steps"] == 30 and metrics["num_examples"] == 240
    assert after["total"] < 0.7 * before["total"]
    assert after["predictions"]["density"].shape == (16, 4)
    assert after["labels"]["malignancy"].tolist()[:3] == [-1, -1, -1]
    assert after["malignancy_scores"].shape == (16,)
    assert 0.0 <= after["malignancy_auc"] <= 1.0 and after["malignancy_auc"] > 0.8
    assert 0.0 <= after["density_balanced_accuracy"] <= 1.0
    assert np.isnan(after["acr_balanced_accuracy"])  # no ACR label present


def test_max_steps_and_privacy_hook_are_honoured():
    # Prepare
    imgs, targets, unc = _synthetic(n=8)
    loader = DataLoader(MultiTaskDataset(imgs, targets, unc), batch_size=2, collate_fn=collate_mtl)
    calls = []

    class Hook:
        def attach(self, model, optimizer, data_loader):
            calls.append("attach")
            return model, optimizer, data_loader

        def after_training(self, steps):
            calls.append(steps)

    # Execute
    metrics = train_mtl(
        MultiTaskNet(widths=TINY), loader, epochs=5, lr=1e-3, max_steps=3, privacy=Hook()
    )
    # Assert
    assert metrics["steps"] == 3 and metrics["num_examples"] == 6
    assert calls == ["attach", 3]


def test_trains_under_opacus_with_per_sample_gradients():
    # Prepare
    from opacus import PrivacyEngine

    torch.manual_seed(0)
    imgs, targets, unc = _synthetic(n=8)
    loader = DataLoader(MultiTaskDataset(imgs, targets, unc), batch_size=4, collate_fn=collate_mtl)
    model = MultiTaskNet(widths=TINY)

    class DP:
        def attach(self, model, optimizer, data_loader):
            self.engine = PrivacyEngine(accountant="rdp")
            _, optimizer, data_loader = self.engine.make_private(
                module=model,
                optimizer=optimizer,
                data_loader=data_loader,
                noise_multiplier=1.0,
                max_grad_norm=1.0,
                wrap_model=False,
            )
            return model, optimizer, data_loader

        def after_training(self, steps):
            self.epsilon = self.engine.get_epsilon(1e-5)

    dp = DP()
    # Execute
    metrics = train_mtl(model, loader, epochs=1, lr=1e-3, privacy=dp)
    # Assert
    assert metrics["steps"] >= 1
    assert np.isfinite(metrics["total"])
    assert dp.epsilon > 0


def test_opacus_per_sample_gradients_match_naive_reference():
    # Prepare: per-sample gradients of the MTL loss vs one backward per sample
    from opacus import GradSampleModule

    torch.manual_seed(0)
    model = MultiTaskNet(widths=TINY, dropout=0.0)
    x = torch.rand(3, 1, 32, 32)
    targets = {
        "malignancy": torch.tensor([1, -1, 0]),
        "acr": torch.full((3,), -1),
        "density": torch.tensor([2, 0, -1]),
        "view": torch.tensor([0, 1, 1]),
    }
    unc = {t: torch.tensor([0.0, 0.5, 0.25]) for t in targets}
    naive = []
    for i in range(3):
        model.zero_grad()
        sample = (
            x[i : i + 1],
            {t: v[i : i + 1] for t, v in targets.items()},
            {t: v[i : i + 1] for t, v in unc.items()},
        )
        mtl_loss(model(sample[0]), sample)[0].backward()
        naive.append({n: p.grad.clone() for n, p in model.named_parameters()})
    gsm = GradSampleModule(model, loss_reduction="mean")
    gsm.zero_grad()
    # Execute
    mtl_loss(gsm(x), (x, targets, unc))[0].backward()
    # Assert
    for name, p in model.named_parameters():
        for i in range(3):
            torch.testing.assert_close(p.grad_sample[i], naive[i][name], rtol=1e-3, atol=1e-5)
    assert torch.count_nonzero(model.heads["acr"].weight.grad_sample) == 0


# --------------------------------------------------------------------------- DP (Opacus)
def _dp_session(noise: float = 1.0, planned: int = 16):
    from fedmammo.privacy.accounting import CentreAccountant, PrivacyBudget
    from fedmammo.privacy.engine import DPSession

    budget = PrivacyBudget(target_epsilon=None, noise_multiplier=noise, delta=1e-5)
    acc = CentreAccountant("rdp", centre="c")
    return DPSession(budget, acc, planned_steps=planned, phase="mtl", centre="c", seed=0)


def test_dp_session_trains_on_poisson_batches_and_accounts_every_batch_drawn():
    # Prepare: 8 images, batch 1: 8 Poisson steps per epoch at rate 1/8 (some batches empty)
    from fedmammo.privacy.accounting import epsilon_of
    from fedmammo.privacy.engine import HOOKS_ATTR

    torch.manual_seed(0)
    imgs, targets, unc = _synthetic(n=8)
    loader = DataLoader(MultiTaskDataset(imgs, targets, unc), batch_size=1, collate_fn=collate_mtl)
    model = MultiTaskNet(widths=TINY, dropout=0.0, norm="group")
    keys = set(model.state_dict())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    session = _dp_session()
    # Execute
    metrics = train_mtl(model, loader, epochs=2, lr=1e-3, privacy=session)
    # Assert: 16 batches drawn and accounted, whatever number were empty and skipped
    assert session.accountant.history == [[1.0, 0.125, 16]]
    assert session.epsilon == pytest.approx(epsilon_of([[1.0, 0.125, 16]], 1e-5))
    assert 1 <= metrics["steps"] <= 16 and np.isfinite(metrics["total"])
    # the model is a plain module again, same keys, trained
    assert set(model.state_dict()) == keys and not hasattr(model, HOOKS_ATTR)
    assert any(not torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_an_empty_first_poisson_batch_keeps_the_batch_structure():
    # Prepare: the DP session's empty-batch collate; the first batch drawn is empty
    from fedmammo.privacy.engine import _empty_safe_collate

    imgs, targets, unc = _synthetic(n=4)
    ds = MultiTaskDataset(imgs, targets, unc)
    collate = _empty_safe_collate(ds, collate_mtl)

    def loader():
        return DataLoader(ds, batch_sampler=[[], [0, 1], []], collate_fn=collate)

    class Attach:  # what a DP session does to the loader, without the noise
        def attach(self, model, optimizer, data_loader):
            return model, optimizer, loader()

        def after_training(self, steps):
            self.steps = steps

    empty, full, _ = list(loader())
    hook = Attach()
    # Execute
    metrics = train_mtl(MultiTaskNet(widths=TINY), loader(), epochs=1, lr=1e-3, privacy=hook)
    # Assert: the empty batch has the full one's structure (dicts of targets) at length 0;
    # both empty batches were skipped, the other trained
    assert empty[0].shape == (0, *full[0].shape[1:])
    assert set(empty[1]) == set(full[1]) and all(len(v) == 0 for v in empty[1].values())
    assert hook.steps == metrics["steps"] == 1 and metrics["num_examples"] == 2


def test_norm_options_and_batchnorm_refused_under_dp_naming_the_layers():
    from fedmammo.errors import ConfigError
    from fedmammo.privacy.engine import DPIncompatibleModelError, validate_for_dp

    group = MultiTaskNet(widths=TINY, norm="group")
    validate_for_dp(group)  # GroupNorm (and the default InstanceNorm) pass
    validate_for_dp(MultiTaskNet(widths=TINY))
    assert isinstance(group.stem[1], torch.nn.GroupNorm) and group.stem[1].num_groups == 4
    assert set(group.state_dict()) == set(MultiTaskNet(widths=TINY).state_dict())
    with pytest.raises(DPIncompatibleModelError, match=r"levels\.0\.0\.norm1 \(BatchNorm2d\)"):
        validate_for_dp(MultiTaskNet(widths=TINY, norm="batch"))
    with pytest.raises(ConfigError, match="norm must be one of"):
        MultiTaskNet(widths=TINY, norm="layer")
