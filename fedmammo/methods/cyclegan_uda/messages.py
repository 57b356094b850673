"""CycleGAN-UDA's messages: the source's tile generator, the target's translator, the
classifier of an arm and its test.

Record names: ``generator`` (the source's tile DCGAN generator weights, in a
``train.uda_translator`` message), ``translator`` (the target's CycleGAN generator source ->
target, in its reply and in a ``train.uda_classifier`` message of a ``uda`` arm), ``arrays``
(classifier weights).
"""

from __future__ import annotations

from fedmammo.federation.messages import (
    ArmConfig,
    BaselineFields,
    EvaluationMetrics,
    Metrics,
    ModelConfig,
    TrainMetrics,
    message,
    wire,
)

__all__ = [
    "GENERATOR",
    "TRANSLATOR",
    "EvaluateUdaClassifier",
    "TileGeneratorMetrics",
    "TrainTileGenerator",
    "TrainTranslator",
    "TrainUdaClassifier",
    "TranslatorMetrics",
    "UdaTrainMetrics",
]

GENERATOR = "generator"
TRANSLATOR = "translator"


@message("train.uda_tile_generator reply")
class TileGeneratorMetrics(Metrics):
    """The shared tile generator's sizes and training steps."""

    tile_size: int = wire("tile-size")
    latent_dim: int = wire("latent-dim")
    width: int = wire("width")
    n_tiles: int = wire("n-tiles")
    epochs: int = wire("epochs")
    generator_steps: int = wire("generator-steps")
    compute_seconds: float = wire("compute-seconds", 0.0)


@message("train.uda_tile_generator", reply=TileGeneratorMetrics)
class TrainTileGenerator(ArmConfig):
    """Train a DCGAN on square breast tiles of the centre's training images (``tiles``:
    :class:`~fedmammo.methods.cyclegan_uda.params.TileGanParams`); reply its generator only."""

    tiles: dict = wire("tiles", as_json=True)


@message("train.uda_translator reply")
class TranslatorMetrics(Metrics):
    """The target's CycleGAN: tiles on each side, steps and its last epoch's losses."""

    n_own_tiles: int = wire("n-own-tiles")
    n_synthetic: int = wire("n-synthetic")
    steps: int = wire("steps")
    cycle_loss: float = wire("cycle-loss")
    identity_loss: float = wire("identity-loss")
    compute_seconds: float = wire("compute-seconds", 0.0)


@message("train.uda_translator", reply=TranslatorMetrics)
class TrainTranslator(ArmConfig):
    """Train a CycleGAN between this (target) centre's breast tiles and tiles sampled from the
    source's shared generator (record ``generator``, described by ``generator_description``);
    reply only the CycleGAN generator that maps the source style to this centre's."""

    generator_description: dict = wire("generator-description", as_json=True)
    tiles: dict = wire("tiles", as_json=True)
    cyclegan: dict = wire("cyclegan", as_json=True)


@message("train.uda_classifier reply")
class UdaTrainMetrics(TrainMetrics):
    """A classifier's training reply plus how many translated images it trained on."""

    n_translated: int = wire("n-translated", 0)


@message("train.uda_classifier", reply=UdaTrainMetrics)
class TrainUdaClassifier(ModelConfig):
    """Train the classifier ``model`` (initialised at the centre from ``init_seed``) on the
    centre's labelled training images with ``train``; with a ``translator`` record, also on
    those images translated by it (``translator_arch``: its width and residual blocks), and
    draws some of them next to their translations inside the centre (phantom data only)."""

    init_seed: int = wire("init-seed")
    train: dict = wire("train", as_json=True)
    translator_arch: dict = wire("translator-arch", {}, as_json=True)
    target: str = wire("target", "")  # the translator's style (figure title and file name)
    plot_dir: str = wire("plot-dir", "")


@message("evaluate.uda_classifier", reply=EvaluationMetrics)
class EvaluateUdaClassifier(ModelConfig, BaselineFields):
    """Metrics (the AUROC with a bootstrap CI of ``n_boot`` resamples) of the received
    classifier on one split of the centre; with a ``baseline`` arm, only its paired
    comparison with that arm's classifier."""

    split: str = wire("split")
    n_boot: int = wire("n-boot", 0)
