"""Handlers of generator sharing (seed 003): train.generator and train.patch_classifier.

``train.generator`` (a sharing centre) trains a DCGAN or WGAN-GP on its own training lesion
patches and replies the generator only: an ArrayRecord ``gen-e<epoch>`` per kept snapshot
(each exactly the declared generator state, so the egress guard lets nothing else out), a
``description`` (kind, centre, subset, lesion types, critic norm, feature net) and ``metrics``
(sizes, patches, epochs, snapshots, steps, and the Frechet distance between its real and
synthetic patches in the random_cnn_v1 feature space, with a real-vs-real floor). A centre whose
profile sets ``sharing.generators: false`` refuses. With ``privacy`` in the centre's profile
the discriminator trains with DP-SGD (phase ``gan`` of the message's ledger) and the reply adds
the ``privacy`` record; with config ``audit`` an ``audit`` MetricRecord holds the GAN-Leaks and
LOGAN attack results on its training vs held-out lesion patches (computed inside the centre).

``train.patch_classifier`` (the receiver) runs one arm, subset, data fraction and seed and
replies test metrics only. The message carries the arm's generators (``g<i>-e<epoch>``,
described by the JSON config ``generators``): the receiver samples ``n-synthetic`` lesion
patches (split evenly), optionally harmonises them into its style with a CycleGAN
(``harmonise``, seed 004), adds as many of its own healthy patches and keeps the epoch with the
best validation AUPRC. ``real-from`` adds another centre's real lesion patches instead (the
simulation-only upper bound): the receiver reads that centre's prepared data from the shared
simulation data directory, like the pooled what-if; the other centre sends nothing, and a
deployed centre (node config ``centre``) refuses.

Figures are drawn inside the centre that holds the pixels: in simulation into the server's
``plot-dir`` (the run's ``plots/`` on the same machine), in deployment into the centre's own
``<output-dir>/plots`` (node config ``output-dir``, default ``<data-dir>/outputs``); replies never
carry paths. The sharing centre draws ``synthetic_samples_<centre>_<gan>_<subset>.png`` (its real
patches above its generator's samples), the receiver ``harmonised_samples_...png``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from flwr.app import ConfigRecord, Context, Message, MetricRecord

from fedmammo.data.patches import LESION_SUBSETS, PatchSet, build_patch_set
from fedmammo.data.prepare import CentreData
from fedmammo.errors import ConfigError, DataError
from fedmammo.evaluation.frechet import frechet_distance
from fedmammo.evaluation.gan_report import plot_sample_grid
from fedmammo.evaluation.metrics import bootstrap_auc, classification_metrics
from fedmammo.federation.centre_runtime import CentreIdentity, centre_data, device, identity_of
from fedmammo.federation.codec import (
    arrays_to_state,
    encode_metric_records,
    get_json,
    state_to_arrays,
)
from fedmammo.federation.egress import EgressError
from fedmammo.federation.handlers import handler
from fedmammo.federation.handlers.audit import audit_generator
from fedmammo.federation.handlers.common import reply
from fedmammo.federation.orchestrator import derive_seed
from fedmammo.federation.privacy_state import finish_dp, open_dp_session
from fedmammo.federation.runspec import load_runspec, scenario_of
from fedmammo.models import build_model
from fedmammo.models.gans import GeneratorDescription, load_generator, sample_patches
from fedmammo.training.cyclegan import train_cyclegan, translate
from fedmammo.training.gan import train_dcgan, train_wgan_gp
from fedmammo.training.patch_classifier import (
    choose_patients,
    count_lesions,
    patch_frame,
    predict_patch_scores,
    train_patch_classifier,
)

__all__ = ["FEATURE_NET", "train_generator", "train_patch_classifier_handler"]

FEATURE_NET = "random_cnn_v1"
_TRAINERS = {"dcgan": train_dcgan, "wgan_gp": train_wgan_gp}
_EVAL_SETS: dict[tuple, PatchSet] = {}
_CLASSIFIER_KEYS = ("epochs", "batch_size", "lr", "momentum", "weight_decay", "patience", "augment")


def _single(data: object, what: str) -> CentreData:
    if not isinstance(data, CentreData):
        raise DataError(f"{what}: runs at one centre, not on pooled data")
    return data


def _deployed(context: Context) -> bool:
    return "centre" in context.node_config or bool(context.run_config.get("scenario"))


def _plot_dir(context: Context, ident: CentreIdentity, cfg: Mapping) -> Path | None:
    if "centre" in context.node_config:  # deployment: the server's run directory is elsewhere
        local = context.node_config.get("output-dir") or Path(ident.data_dir or ".") / "outputs"
        return Path(str(local)) / "plots"
    return Path(str(cfg["plot-dir"])) if cfg.get("plot-dir") else None


def _patches(
    data: CentreData,
    split: str,
    subset: str,
    patch: Mapping,
    *,
    seed: int,
    augment: bool,
    healthy_per_image: int | None = None,
    frame=None,
) -> PatchSet:
    """Lesion and healthy patches of one split (or of the rows ``frame``) of a centre."""
    frame = patch_frame(data, split) if frame is None else frame
    return build_patch_set(
        data.cache.get,
        frame,
        lesion_types=subset,
        healthy_per_image=healthy_per_image,
        out_size=int(patch["size"]),
        seed=seed,
        augment=augment,
        margin_px=float(patch["margin_px"]),
        reference_spacing=float(patch["reference_spacing"]),
        max_background=float(patch["max_background"]),
    )


def _eval_set(data: CentreData, split: str, subset: str, patch: Mapping, seed: int) -> PatchSet:
    """Validation / test patches (balanced, same pre-processing as training), cached."""
    key = (data.name, str(data.cache.cache_dir), split, subset, tuple(sorted(patch.items())), seed)
    if key not in _EVAL_SETS:
        _EVAL_SETS[key] = _patches(
            data, split, subset, patch, seed=seed, augment=bool(patch["augment"])
        )
    return _EVAL_SETS[key]


def _lesions(ps: PatchSet) -> np.ndarray:
    return ps.patches[ps.labels == 1]


# --------------------------------------------------------------------------- sharing centre
@handler("train", "generator", dp=True)
def train_generator(msg: Message, context: Context) -> Message:
    """Train a generator on this centre's lesion patches; reply weights, description, quality."""
    start = time.perf_counter()
    cfg = msg.content["config"]
    ident = identity_of(context)
    if ident.profile is None or not ident.profile.sharing.generators:
        raise ConfigError(
            f"centre {ident.name!r} refuses train.generator: its profile sets "
            "sharing.generators: false (fix: set sharing.generators: true in its profile, or "
            "drop the arms that need its generator)"
        )
    data = _single(centre_data(ident, cfg), "train.generator")
    gan, subset, seed = str(cfg["gan"]), str(cfg["subset"]), int(cfg["seed"])
    if gan not in _TRAINERS or subset not in LESION_SUBSETS:
        raise ConfigError(
            f"train.generator: gan {gan!r} / subset {subset!r} unknown; valid: "
            f"{sorted(_TRAINERS)} / {sorted(LESION_SUBSETS)}"
        )
    patch = get_json(cfg, "patch")
    ps = _patches(
        data,
        "train",
        subset,
        patch,
        seed=derive_seed(seed, "patches"),
        augment=False,
        healthy_per_image=0,
    )
    real = _lesions(ps)
    if len(real) < 2:
        raise DataError(
            f"centre {ident.name!r}: {len(real)} {subset} lesion patches in its "
            "training split; a generator needs at least 2"
        )
    kinds = sorted(set(ps.kinds[ps.labels == 1].tolist()))
    gan_params = get_json(cfg, "gan-params")
    # DP (privacy in the profile): only the discriminator is private; refused before training
    # when the generator's planned steps would exceed the ledger's budget.
    privacy = open_dp_session(
        context,
        ident,
        cfg,
        n_examples=len(real),
        steps_per_epoch=math.ceil(len(real) / int(gan_params.get("batch_size", 16))),
        epochs=int(gan_params["epochs"]),
        phase="gan",
    )
    result = _TRAINERS[gan](
        real,
        **gan_params,
        seed=seed,
        device=device(),
        lesion_types=kinds,
        centre=ident.name,
        privacy=privacy,
    )
    desc, states = result.description, result.sampling_states()
    epochs = [e for e, _ in result.snapshots] or [desc.epochs]
    fake = sample_patches(
        [(desc, states)],
        int(cfg.get("frechet-samples", 500)),
        seed=derive_seed(seed, "frechet"),
        device=device(),
    )
    fd = frechet_distance(real, fake, feature_net=FEATURE_NET)
    half = np.random.default_rng(seed).permutation(len(real))
    floor = math.nan
    if len(real) >= 8:
        mid = len(real) // 2
        floor = frechet_distance(real[half[:mid]], real[half[mid:]], feature_net=FEATURE_NET)
    plot_dir = _plot_dir(context, ident, cfg)
    if plot_dir is not None:
        columns = int(cfg.get("grid-columns", 12))
        plot_sample_grid(
            [(f"real {ident.name}", real[half]), (f"{gan} 1", fake[::2]), (f"{gan} 2", fake[1::2])],
            plot_dir / f"synthetic_samples_{ident.name}_{gan}_{subset}.png",
            title=f"Centre {ident.name}, lesion subset {subset!r}: real patches (top) and "
            f"samples of its {gan} ({len(states)} snapshot(s)); drawn inside the centre",
            columns=columns,
        )
    records: dict = {
        f"gen-e{e:05d}": state_to_arrays(s) for e, s in zip(epochs, states, strict=True)
    }
    records["description"] = ConfigRecord(
        {
            "kind": desc.kind,
            "centre": ident.name,
            "subset": subset,
            "lesion-types": kinds,
            "d-norm": desc.d_norm,
            "feature-net": FEATURE_NET,
        }
    )
    if privacy is not None:
        records["privacy"] = finish_dp(context, privacy, cfg, result.critic_steps)
    if bool(cfg.get("audit", False)):
        held_out = np.concatenate(
            [
                _lesions(_patches(data, split, subset, patch, seed=derive_seed(seed, split),
                                  augment=False, healthy_per_image=0))
                for split in ("val", "test")
            ]
        )
        budget = privacy.budget if privacy is not None else None
        audits = audit_generator(
            desc, result.discriminator_state, real, held_out, fake,
            epsilon=result.epsilon, delta=budget.delta if budget else None, device=device(),
        )
        records["audit"] = MetricRecord(
            {f"{a}.{k}": float(v) for a, r in audits.items() for k, v in r.items()}
        )
    records["metrics"] = MetricRecord(
        {
            "patch-size": desc.patch_size,
            "latent-dim": desc.latent_dim,
            "width": desc.width,
            "n-training-patches": desc.n_training_patches,
            "epochs": desc.epochs,
            "n-snapshots": len(states),
            "generator-steps": result.generator_steps,
            "critic-steps": result.critic_steps,
            "frechet-distance": fd,
            "frechet-real-floor": floor,
            "frechet-samples": len(fake),
            "compute-seconds": time.perf_counter() - start,
        }
    )
    return reply(msg, context, records, model=load_generator(desc, states[-1]))


# --------------------------------------------------------------------------- receiving centre
def _received_generators(msg: Message) -> list[tuple[GeneratorDescription, list[dict]]]:
    out = []
    for entry in get_json(msg.content["config"], "generators", []):
        desc = GeneratorDescription.from_dict(entry["description"])
        states = [arrays_to_state(msg.content[name]) for name in entry["records"]]
        out.append((desc, states))
    return out


def _names(generators: list[tuple[GeneratorDescription, list[dict]]]) -> str:
    return "+".join(f"{desc.centre}_{desc.kind}" for desc, _ in generators)


def _real_lesion_patches(
    context: Context, cfg: Mapping, centre: str, subset: str, patch: Mapping, n: int, seed: int
) -> np.ndarray:
    """Another centre's real lesion patches, read from the shared data directory (simulation)."""
    if _deployed(context):
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
    data = _single(centre_data(other, cfg), "real-patch arm")
    ps = _patches(
        data, "train", subset, patch, seed=seed, augment=bool(patch["augment"]), healthy_per_image=0
    )
    lesions = _lesions(ps)
    keep = np.random.default_rng(seed).permutation(len(lesions))[:n]
    return lesions[np.sort(keep)]


def _own_patches(data: CentreData, cfg: Mapping, subset: str, patch: Mapping, seed: int):
    """The receiver's lesion patches and a shuffled pool of its healthy ones (its fraction)."""
    frame = choose_patients(
        patch_frame(data, "train"),
        float(cfg["fraction"]),
        subset=subset,
        seed=derive_seed(seed, "fraction"),
    )
    needed = count_lesions(frame, subset) + int(cfg["n-synthetic"])
    per_image = max(1, math.ceil(1.25 * needed / max(int(sum(frame["lesions"] == "[]")), 1)))
    pool = _patches(
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
    return _lesions(pool), healthy[order]


def _added_lesions(
    msg: Message,
    context: Context,
    ident: CentreIdentity,
    own: np.ndarray,
    subset: str,
    patch: Mapping,
    seed: int,
) -> np.ndarray:
    """The arm's added lesion patches: real (simulation only), synthetic or harmonised."""
    cfg = msg.content["config"]
    n, real_from = int(cfg["n-synthetic"]), str(cfg.get("real-from", ""))
    if real_from:
        return _real_lesion_patches(
            context, cfg, real_from, subset, patch, n, derive_seed(seed, "real", real_from)
        )
    generators = _received_generators(msg)
    if not generators:
        return np.zeros((0, *own.shape[1:]), np.float32)
    synthetic = sample_patches(generators, n, seed=derive_seed(seed, "sample"), device=device())
    if not bool(cfg.get("harmonise", False)):
        return synthetic
    # seed 004: a CycleGAN between own lesion patches and the synthetic ones, then B -> A
    result = train_cyclegan(
        own,
        synthetic,
        **get_json(cfg, "cyclegan"),
        seed=derive_seed(seed, "cyclegan"),
        device=device(),
    )
    added = translate(result.generator("ba", device=device()), synthetic)
    plot_dir = _plot_dir(context, ident, cfg)
    if bool(cfg.get("draw", False)) and plot_dir is not None:
        plot_sample_grid(
            [
                ("synthetic", synthetic),
                (f"in {ident.name} style", added),
                (f"real {ident.name}", own),
            ],
            plot_dir / f"harmonised_samples_{ident.name}_{_names(generators)}_{subset}.png",
            title=f"Harmonised synthetic patches at centre {ident.name} (CycleGAN, seed 004); "
            "drawn inside the centre",
            columns=int(cfg.get("grid-columns", 12)),
        )
    return added


def _model(spec: Mapping, patch_size: int, seed: int) -> torch.nn.Module:
    options = dict(spec.get("options", {}))
    if spec["name"] == "patch_cnn":
        options.setdefault("patch_size", patch_size)
    torch.manual_seed(seed)
    return build_model(spec["name"], **options)


@handler("train", "patch_classifier")
def train_patch_classifier_handler(msg: Message, context: Context) -> Message:
    """Train and test the receiver's patch classifier for one arm; reply test metrics only."""
    start = time.perf_counter()
    cfg = msg.content["config"]
    ident = identity_of(context)
    data = _single(centre_data(ident, cfg), "train.patch_classifier")
    subset, seed = str(cfg["subset"]), int(cfg["seed"])
    patch, clf = get_json(cfg, "patch"), get_json(cfg, "classifier")
    own, healthy = _own_patches(data, cfg, subset, patch, seed)
    added = _added_lesions(msg, context, ident, own, subset, patch, seed)
    n_lesion = len(own) + len(added)  # class balance: as many of the receiver's healthy
    x = np.concatenate([own, added, healthy[:n_lesion]])
    y = np.r_[np.ones(n_lesion, np.int64), np.zeros(min(n_lesion, len(healthy)), np.int64)]
    val = _eval_set(data, "val", subset, patch, derive_seed(cfg["data-seed"], "val"))
    test = _eval_set(data, "test", subset, patch, derive_seed(cfg["data-seed"], "test"))
    if len(test) == 0:
        raise DataError(f"centre {ident.name!r}: no {subset} test patches")
    model = _model(clf["model"], int(patch["size"]), derive_seed(seed, "init"))
    result = train_patch_classifier(
        model,
        x,
        y,
        val.patches,
        val.labels,
        **{k: clf[k] for k in _CLASSIFIER_KEYS},
        seed=derive_seed(seed, "train"),
        device=device(),
    )
    scores = predict_patch_scores(model, test.patches, device=device())
    values = classification_metrics(test.labels, scores)
    values["auc"] = values.pop("auroc")  # the records' name of the AUROC
    records = [
        {"segment": None, "metric": k, "value": values[k]}
        for k in ("accuracy", "f1", "auc", "auprc", "n", "n_pos")
    ]
    _, low, high = bootstrap_auc(
        test.labels, scores, n_boot=int(cfg.get("n-boot", 0)), seed=derive_seed(seed, "boot")
    )
    records[2].update(ci_low=low, ci_high=high)  # NaN without a bootstrap
    metrics = encode_metric_records(records)
    metrics.update(
        {
            "best-epoch": result.best_epoch,
            "val-auprc": result.best_val_auprc,
            "epochs-run": result.epochs_run,
            "n-own-lesion": len(own),
            "n-added-lesion": len(added),
            "n-healthy": int((y == 0).sum()),
            "healthy-shortfall": max(0, n_lesion - len(healthy)),
            "real-pixels-moved": int(bool(cfg.get("real-from", ""))),
            "compute-seconds": time.perf_counter() - start,
        }
    )
    return reply(msg, context, {"metrics": metrics})
