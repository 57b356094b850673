"""Generator sharing's messages: ``train.generator``, ``train.patch_classifier`` and
``evaluate.patch_gain``.

A ``train.generator`` reply carries the generator's snapshots (``gen-e<epoch>``, see
:func:`snapshot_record`), its ``description`` (:class:`GeneratorInfo`), ``metrics``
(:class:`GeneratorMetrics`) and, when audited, an ``audit`` record
(:func:`~fedmammo.federation.messages.encode_attacks`). A ``train.patch_classifier`` message
carries the arm's generators' snapshots as ``g<i>-gen-e<epoch>`` (:func:`generator_record`).
"""

from __future__ import annotations

from fedmammo.federation.messages import (
    ArmConfig,
    CentreConfig,
    Config,
    DPTrainFields,
    EvaluationMetrics,
    Metrics,
    message,
    wire,
)

__all__ = [
    "DESCRIPTION",
    "EvaluatePatchGain",
    "GeneratorInfo",
    "GeneratorMetrics",
    "PatchClassifierMetrics",
    "TrainGenerator",
    "TrainPatchClassifier",
    "generator_record",
    "snapshot_epoch",
    "snapshot_record",
]

DESCRIPTION = "description"  # record name of a generator's description
_SNAPSHOT = "gen-e"


def snapshot_record(epoch: int) -> str:
    """Record name of a generator's snapshot after ``epoch`` epochs."""
    return f"{_SNAPSHOT}{epoch:05d}"


def snapshot_epoch(record: str) -> int:
    """The epoch of a snapshot record name (inverse of :func:`snapshot_record`)."""
    return int(record.removeprefix(_SNAPSHOT))


def generator_record(i: int, snapshot: str) -> str:
    """Record name of snapshot ``snapshot`` of the arm's ``i``-th generator."""
    return f"g{i}-{snapshot}"


@message("train.generator reply description")
class GeneratorInfo(Config):
    """What a shared generator is: GAN kind, centre, lesion subset and types, critic norm and
    the feature network of its Frechet figures."""

    kind: str = wire("kind")
    centre: str = wire("centre")
    subset: str = wire("subset")
    lesion_types: list[str] = wire("lesion-types")
    d_norm: str = wire("d-norm")
    feature_net: str = wire("feature-net")


@message("train.generator reply")
class GeneratorMetrics(Metrics):
    """A shared generator's sizes, training steps and quality (Frechet distance of its samples
    and the real-vs-real floor, computed inside the centre)."""

    patch_size: int = wire("patch-size")
    latent_dim: int = wire("latent-dim")
    width: int = wire("width")
    n_training_patches: int = wire("n-training-patches")
    epochs: int = wire("epochs")
    n_snapshots: int = wire("n-snapshots")
    generator_steps: int = wire("generator-steps")
    critic_steps: int = wire("critic-steps")
    frechet_distance: float = wire("frechet-distance")
    frechet_real_floor: float = wire("frechet-real-floor")
    frechet_samples: int = wire("frechet-samples")
    compute_seconds: float = wire("compute-seconds", 0.0)


@message("train.generator", reply=GeneratorMetrics)
class TrainGenerator(CentreConfig, DPTrainFields):
    """Train a ``gan`` (``dcgan``, ``wgan_gp``) with ``gan_params`` on the centre's ``subset``
    lesion patches (geometry ``patch``); ``audit``: also the GAN-Leaks and LOGAN attacks."""

    seed: int = wire("seed")
    gan: str = wire("gan")
    subset: str = wire("subset")
    patch: dict = wire("patch", as_json=True)
    gan_params: dict = wire("gan-params", as_json=True)
    frechet_samples: int = wire("frechet-samples", 500)
    grid_columns: int = wire("grid-columns", 12)
    plot_dir: str = wire("plot-dir", "")
    audit: bool = wire("audit", False)


@message("train.patch_classifier reply")
class PatchClassifierMetrics(EvaluationMetrics):
    """The receiver's test records plus its best validation epoch and what the arm added."""

    best_epoch: int = wire("best-epoch")
    val_auprc: float = wire("val-auprc")
    epochs_run: int = wire("epochs-run")
    n_own_lesion: int = wire("n-own-lesion")
    n_added_lesion: int = wire("n-added-lesion")
    n_healthy: int = wire("n-healthy")
    healthy_shortfall: int = wire("healthy-shortfall")
    real_pixels_moved: int = wire("real-pixels-moved")


@message("train.patch_classifier", reply=PatchClassifierMetrics)
class TrainPatchClassifier(ArmConfig):
    """Train and test the receiver's patch classifier (``classifier``) for one arm, lesion
    ``subset`` and ``fraction`` of its training images, adding ``n_synthetic`` lesion patches
    sampled from ``generators`` (``[{"description", "records"}]``; ``harmonise``: translated
    into the receiver's style by a CycleGAN trained with ``cyclegan``), another centre's real
    ones (``real_from``, simulation only) or, for a control, its own drawn again
    (``own_lesions``). With ``run_key`` the receiver keeps its test scores, on its own disk, for
    :class:`EvaluatePatchGain`."""

    subset: str = wire("subset")
    fraction: float = wire("fraction")
    patch: dict = wire("patch", as_json=True)
    classifier: dict = wire("classifier", as_json=True)
    cyclegan: dict = wire("cyclegan", as_json=True)
    harmonise: bool = wire("harmonise", False)
    draw: bool = wire("draw", False)
    n_synthetic: int = wire("n-synthetic")
    real_from: str = wire("real-from", "")
    own_lesions: bool = wire("own-lesions", False)
    grid_columns: int = wire("grid-columns", 12)
    plot_dir: str = wire("plot-dir", "")
    n_boot: int = wire("n-boot", 0)
    generators: list[dict] = wire("generators", [], as_json=True)
    run_key: str = wire("run-key", "", omit_default=True)


@message("evaluate.patch_gain", reply=EvaluationMetrics)
class EvaluatePatchGain(ArmConfig):
    """Compare, inside the receiver, the test scores it kept of ``arm`` (a
    ``train.patch_classifier`` run of this ``seed`` and ``run_key``) with those of the
    ``baseline`` run: the same test patches and bootstrap resamples, paired. Reply:
    ``baseline_auc``, ``delta_auc`` (arm - baseline, CI over the test patches' patients) and
    ``p_value``."""

    baseline: str = wire("baseline")
    run_key: str = wire("run-key")
    n_boot: int = wire("n-boot", 0)
