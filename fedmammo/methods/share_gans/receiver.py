"""Handlers of the receiving centre of generator sharing (GAN-sharing and CycleGAN-UDA papers):
train.patch_classifier and evaluate.patch_gain.

``train.patch_classifier`` runs one arm, subset, data fraction and seed and replies test
metrics only (the AUROC with its CI over patients). The message carries the arm's generators
(``g<i>-e<epoch>``, described by the JSON config ``generators``): the receiver samples
``n-synthetic`` lesion patches (split evenly), optionally harmonises them into its style with
a CycleGAN (``harmonise``, CycleGAN-UDA paper; draws ``harmonised_samples_...png`` inside the
centre),
adds as many of its own healthy patches and keeps the epoch with the best validation AUPRC.
``own-lesions`` (a control) draws the added lesion patches from its own again instead.
``real-from`` adds another centre's real lesion patches instead (the simulation-only upper
bound): the receiver reads that centre's prepared data from the shared simulation data
directory, like the pooled what-if; the other centre sends nothing, and a deployed centre
(node config ``centre``) refuses.

With a ``run-key`` the receiver keeps each run's test scores in its own state folder
(:data:`KEPT_SCORES`), and ``evaluate.patch_gain`` compares an arm run with the receiver-alone
run of the same seed from them: the AUROC difference with a paired bootstrap CI over the test
patches' patients. Scores never leave the receiver.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from flwr.app import Context, Message

from fedmammo.data.patches import PatchSet
from fedmammo.data.prepare import CentreData
from fedmammo.errors import ConfigError, DataError
from fedmammo.evaluation.metrics import auc_ci, classification_metrics
from fedmammo.evaluation.tables import comparison_records
from fedmammo.federation.centre_runtime import CentreIdentity, centre_data, device, identity_of
from fedmammo.federation.codec import arrays_to_state
from fedmammo.federation.egress import EgressError
from fedmammo.federation.handlers import handler, reply
from fedmammo.federation.messages import METRICS, EvaluationMetrics
from fedmammo.federation.runspec import load_runspec, scenario_of
from fedmammo.federation.site import deployed, plot_dir, single_centre, state_dir, state_name
from fedmammo.files import replace_npz
from fedmammo.methods.share_gans.client import lesion_patches, lesions
from fedmammo.methods.share_gans.messages import (
    EvaluatePatchGain,
    PatchClassifierMetrics,
    TrainPatchClassifier,
)
from fedmammo.methods.share_gans.report import plot_sample_grid
from fedmammo.models import build_model
from fedmammo.models.gans import GeneratorDescription, sample_patches
from fedmammo.seeds import derive_seed
from fedmammo.training.cyclegan import train_cyclegan, translate
from fedmammo.training.patch_classifier import (
    choose_patients,
    count_lesions,
    patch_frame,
    predict_patch_scores,
    train_patch_classifier,
)

__all__ = ["KEPT_SCORES", "patch_gain_handler", "train_patch_classifier_handler"]

#: The receiver's folder (in its own state folder) of the test scores of each arm run.
KEPT_SCORES = "share_gans_scores"

_EVAL_SETS: dict[tuple, PatchSet] = {}
_CLASSIFIER_KEYS = (
    "epochs", "batch_size", "lr", "momentum", "weight_decay", "patience", "augment", "optimizer",
    "channels_last", "fused_optimizer",
)  # fmt: skip


def _eval_set(data: CentreData, split: str, subset: str, patch: Mapping, seed: int) -> PatchSet:
    """Validation / test patches (balanced, same pre-processing as training), cached."""
    key = (data.name, str(data.cache.cache_dir), split, subset, tuple(sorted(patch.items())), seed)
    if key not in _EVAL_SETS:
        _EVAL_SETS[key] = lesion_patches(
            data, split, subset, patch, seed=seed, augment=bool(patch["augment"])
        )
    return _EVAL_SETS[key]


def _received_generators(
    msg: Message, m: TrainPatchClassifier
) -> list[tuple[GeneratorDescription, list[dict]]]:
    out = []
    for entry in m.generators:
        desc = GeneratorDescription.from_dict(entry["description"])
        states = [arrays_to_state(msg.content[name]) for name in entry["records"]]
        out.append((desc, states))
    return out


def _names(generators: list[tuple[GeneratorDescription, list[dict]]]) -> str:
    return "+".join(f"{desc.centre}_{desc.kind}" for desc, _ in generators)


def _real_lesion_patches(
    context: Context,
    m: TrainPatchClassifier,
    centre: str,
    subset: str,
    patch: Mapping,
    n: int,
    seed: int,
) -> np.ndarray:
    """Another centre's real lesion patches, read from the shared data directory (simulation)."""
    if deployed(context):
        raise EgressError(
            f"an arm asks for real patches of centre {centre!r}: that moves pixels and is a "
            "simulation-only upper bound; a deployed centre never reads another centre's images"
        )
    scenario = scenario_of(load_runspec(context.run_config))
    profile = scenario.resolved_profiles.get(centre)
    if profile is None:
        raise ConfigError(f"real-patch arm: no centre {centre!r} in scenario {scenario.name!r}")
    if not profile.sharing.real_patches_in_simulation:
        raise ConfigError(
            f"centre {centre!r} does not allow its real patches to be used, even in "
            "simulation (fix: set sharing.real_patches_in_simulation: true in that centre's "
            "scenario overrides, or drop the real-patch arm)"
        )
    other = CentreIdentity(
        name=centre, role=scenario.entry(centre).role, profile=profile, data_root=scenario.data_dir
    )
    data = single_centre(centre_data(other, m), "real-patch arm")
    ps = lesion_patches(
        data, "train", subset, patch, seed=seed, augment=bool(patch["augment"]), healthy_per_image=0
    )
    found = lesions(ps)
    keep = np.random.default_rng(seed).permutation(len(found))[:n]
    return found[np.sort(keep)]


def _own_patches(data: CentreData, m: TrainPatchClassifier, subset: str, patch: Mapping, seed: int):
    """The receiver's lesion patches and a shuffled pool of its healthy ones (its fraction)."""
    frame = choose_patients(
        patch_frame(data, "train"),
        m.fraction,
        subset=subset,
        seed=derive_seed(seed, "fraction"),
    )
    needed = count_lesions(frame, subset) + m.n_synthetic
    per_image = max(1, math.ceil(1.25 * needed / max(int(sum(frame["lesions"] == "[]")), 1)))
    pool = lesion_patches(
        data,
        "train",
        subset,
        patch,
        seed=derive_seed(seed, "train-patches"),
        augment=bool(patch["augment"]),
        healthy_per_image=per_image,
        frame=frame,
    )
    healthy = pool.patches[pool.labels == 0]
    order = np.random.default_rng(derive_seed(seed, "select")).permutation(len(healthy))
    return lesions(pool), healthy[order]


def _added_lesions(
    msg: Message,
    m: TrainPatchClassifier,
    context: Context,
    ident: CentreIdentity,
    own: np.ndarray,
    subset: str,
    patch: Mapping,
    seed: int,
) -> np.ndarray:
    """The arm's added lesion patches: real (simulation only), synthetic, harmonised, or (the
    own_lesions control) the receiver's own drawn again."""
    n, real_from = m.n_synthetic, m.real_from
    if m.own_lesions:  # the second control: nothing new, the receiver's own lesions again
        if len(own) == 0:
            raise DataError(f"centre {ident.name!r}: no own {subset} lesion patches to draw again")
        pick = np.random.default_rng(derive_seed(seed, "own-lesions")).integers(0, len(own), n)
        return own[pick]
    if real_from:
        return _real_lesion_patches(
            context, m, real_from, subset, patch, n, derive_seed(seed, "real", real_from)
        )
    generators = _received_generators(msg, m)
    if not generators:
        return np.zeros((0, *own.shape[1:]), np.float32)
    synthetic = sample_patches(generators, n, seed=derive_seed(seed, "sample"), device=device())
    if not m.harmonise:
        return synthetic
    # CycleGAN-UDA paper: a CycleGAN between own lesion patches and the synthetic ones, then B -> A
    result = train_cyclegan(
        own,
        synthetic,
        **m.cyclegan,
        seed=derive_seed(seed, "cyclegan"),
        device=device(),
    )
    added = translate(result.generator("ba", device=device()), synthetic)
    where = plot_dir(context, ident, m.plot_dir)
    if m.draw and where is not None:
        # its own patches only when they are synthetic: the figure reaches report.html
        mine = [(f"{ident.name} (phantom)", own)] if ident.synthetic_data else []
        plot_sample_grid(
            [("synthetic", synthetic), (f"in {ident.name} style", added), *mine],
            where / f"harmonised_samples_{ident.name}_{_names(generators)}_{subset}.png",
            title=f"Harmonised synthetic patches at centre {ident.name} "
            "(CycleGAN, CycleGAN-UDA paper); drawn inside the centre",
            columns=m.grid_columns,
        )
    return added


def _kept_scores_file(
    context: Context, ident: CentreIdentity, run_key: str, arm: str, seed: int
) -> Path:
    """Where the receiver keeps one arm run's test scores: its own state folder, under names
    made from what the server sent (sanitised and hashed, never a path it chose)."""
    folder = state_dir(context, ident) / KEPT_SCORES / state_name(run_key)
    return folder / f"{state_name(arm, f'{arm}|{seed}')}.npz"


def _keep_scores(path: Path, **arrays: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    replace_npz(path, arrays)


def _kept_scores(context: Context, ident: CentreIdentity, m: EvaluatePatchGain, arm: str):
    path = _kept_scores_file(context, ident, m.run_key, arm, m.seed)
    if not path.is_file():
        raise DataError(
            f"centre {ident.name}: no test scores kept of arm {arm} (seed {m.seed}) in this run: "
            "its train.patch_classifier run did not finish here, or this centre's state folder "
            f"was emptied ({path.parent})"
        )
    with np.load(path, allow_pickle=False) as kept:
        return {k: kept[k] for k in kept.files}


@handler(EvaluatePatchGain.KIND, consent="metrics")
def patch_gain_handler(msg: Message, context: Context) -> Message:
    """One arm run against the receiver-alone run of the same seed, from the test scores the
    receiver kept of both: paired AUROC difference, CI over patients; scalars only leave."""
    start = time.perf_counter()
    m = EvaluatePatchGain.of(msg)
    ident = identity_of(context)
    arm, base = (_kept_scores(context, ident, m, a) for a in (m.arm, m.baseline))
    if not all(np.array_equal(arm[k], base[k]) for k in ("image_ids", "labels", "patients")):
        raise DataError(
            f"centre {ident.name}: arms {m.arm} and {m.baseline} were tested on different "
            "patches; they cannot be compared pair by pair"
        )
    n = len(arm["labels"])
    records = comparison_records(
        arm["labels"],
        base["scores"],
        arm["scores"],
        np.zeros(n),
        [None],
        n_boot=m.n_boot,
        seed=derive_seed(m.seed, "boot"),  # the resamples of both runs' own CIs
        patients=arm["patients"],
    )
    metrics = EvaluationMetrics(
        records=records, num_examples=n, compute_seconds=time.perf_counter() - start
    )
    return reply(msg, context, {METRICS: metrics.to_metrics()})


def _model(spec: Mapping, patch_size: int, seed: int) -> torch.nn.Module:
    options = dict(spec.get("options", {}))
    if spec["name"] == "patch_cnn":
        options.setdefault("patch_size", patch_size)
    torch.manual_seed(seed)
    return build_model(spec["name"], **options)


@handler(TrainPatchClassifier.KIND, consent="metrics")
def train_patch_classifier_handler(msg: Message, context: Context) -> Message:
    """Train and test the receiver's patch classifier for one arm; reply test metrics only."""
    start = time.perf_counter()
    m = TrainPatchClassifier.of(msg)
    ident = identity_of(context)
    data = single_centre(centre_data(ident, m), m.KIND)
    subset, seed = m.subset, m.seed
    patch, clf = m.patch, m.classifier
    own, healthy = _own_patches(data, m, subset, patch, seed)
    added = _added_lesions(msg, m, context, ident, own, subset, patch, seed)
    n_lesion = len(own) + len(added)  # class balance: as many of the receiver's healthy
    x = np.concatenate([own, added, healthy[:n_lesion]])
    y = np.r_[np.ones(n_lesion, np.int64), np.zeros(min(n_lesion, len(healthy)), np.int64)]
    val = _eval_set(data, "val", subset, patch, derive_seed(m.data_seed, "val"))
    test = _eval_set(data, "test", subset, patch, derive_seed(m.data_seed, "test"))
    if len(test) == 0:
        raise DataError(f"centre {ident.name!r}: no {subset} test patches")
    model = _model(clf["model"], int(patch["size"]), derive_seed(seed, "init"))
    result = train_patch_classifier(
        model,
        x,
        y,
        val.patches,
        val.labels,
        **{k: clf[k] for k in _CLASSIFIER_KEYS if k in clf},
        seed=derive_seed(seed, "train"),
        device=device(),
    )
    scores = predict_patch_scores(
        model, test.patches, device=device(), channels_last=bool(clf.get("channels_last"))
    )
    values = classification_metrics(test.labels, scores)
    values["auc"] = values.pop("auroc")  # the records' name of the AUROC
    records = [
        {"segment": None, "metric": k, "value": values[k]}
        for k in ("accuracy", "f1", "auc", "auprc", "n", "n_pos")
    ]
    patient_of = data.manifest.set_index("image_id")["patient_id"].astype(str)
    patients = patient_of.reindex(test.image_ids.astype(str)).to_numpy()
    # over whole patients: a patient's patches are not independent
    _, low, high = auc_ci(test.labels, scores, groups=patients, with_ci=m.n_boot > 0)
    records[2].update(ci_low=low, ci_high=high)  # NaN with n_boot 0
    if m.run_key:  # for evaluate.patch_gain: the arm against the receiver alone, paired
        _keep_scores(
            _kept_scores_file(context, ident, m.run_key, m.arm, seed),
            image_ids=test.image_ids.astype(str),
            labels=test.labels,
            scores=scores,
            patients=patients.astype(str),
        )
    metrics = PatchClassifierMetrics(
        records=records,
        best_epoch=result.best_epoch,
        val_auprc=result.best_val_auprc,
        epochs_run=result.epochs_run,
        n_own_lesion=len(own),
        n_added_lesion=len(added),
        n_healthy=int((y == 0).sum()),
        healthy_shortfall=max(0, n_lesion - len(healthy)),
        real_pixels_moved=int(bool(m.real_from)),
        compute_seconds=time.perf_counter() - start,
    )
    return reply(msg, context, {METRICS: metrics.to_metrics()})
