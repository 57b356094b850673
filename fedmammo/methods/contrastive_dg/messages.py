"""The messages of ``contrastive_dg``: one typed definition per message kind, both sides use it.

Style diversification (once per run):

- ``train.tile_generator`` (:class:`TrainTileGenerator`): a seen centre trains a DCGAN on
  square tiles of its own breast tissue; replies the generator (``arrays``), what it is
  (``info``, :class:`TileGeneratorInfo`) and counts (:class:`TileGeneratorMetrics`).
- ``train.style_bank`` (:class:`TrainStyleBank`): a seen centre receives the other seen
  centres' tile generators (``arrays-<k>``), trains one CycleGAN per other vendor against
  their synthetic tiles, translates its own training images and keeps them (counts only
  reply, :class:`StyleBankMetrics`). The pooled what-if node gets no generators: it trains
  CycleGANs between the real vendors it holds.

Pre-training (FedAvg rounds through :func:`fedmammo.federation.rounds.train_rounds`):
``train.encoder`` (:class:`TrainEncoder`) and ``evaluate.encoder`` (:class:`EvaluateEncoder`).

Downstream (per arm, task and label fraction): ``train.downstream`` (:class:`TrainDownstream`:
replies the fine-tuned task model) and ``evaluate.downstream`` (:class:`EvaluateDownstream`:
the task models of one or several fine-tuning centres, ``arrays-<k>``, on a centre's test
split; without ``sources``, the one model in ``arrays``). ``downstream: federated`` trains the
task model by FedAvg rounds instead: ``train.downstream_round``
(:class:`TrainDownstreamRound`, through ``train_rounds``, validated each round with
``evaluate.downstream`` on the val split). ``query.embeddings`` (:class:`QueryEmbeddings`)
draws the t-SNE map inside a centre.
"""

from __future__ import annotations

from flwr.app import ArrayRecord

from fedmammo.federation.messages import (
    ARRAYS,
    ArmConfig,
    Config,
    EvaluationMetrics,
    Metrics,
    ModelConfig,
    TrainConfig,
    TrainMetrics,
    fields_of,
    message,
    model_record,
    wire,
)

__all__ = [
    "DownstreamMetrics",
    "EmbeddingInfo",
    "EvaluateDownstream",
    "EvaluateEncoder",
    "QueryEmbeddings",
    "StyleBankMetrics",
    "TileGeneratorInfo",
    "TileGeneratorMetrics",
    "TrainDownstream",
    "TrainDownstreamRound",
    "TrainEncoder",
    "TrainStyleBank",
    "TrainTileGenerator",
    "models_of",
]


# --------------------------------------------------------------------------- shared fields
@fields_of
class StoreFields(Config):
    """Where a centre keeps its style bank (simulation: under the run directory; a deployed
    centre ignores it and uses its own ``<output-dir>``) and which bank (``styles``)."""

    store_dir: str = wire("store-dir", "", omit_default=True)
    styles: str = wire("styles", "", omit_default=True)


@fields_of
class PlotFields(Config):
    """Where a centre draws in simulation (a deployed centre draws in its own output dir)."""

    plot_dir: str = wire("plot-dir", "", omit_default=True)


# --------------------------------------------------------------------------- styles
@message("train.tile_generator reply")
class TileGeneratorMetrics(Metrics):
    """Counts of a tile generator's training."""

    n_tiles: int = wire("n-tiles")
    steps: int = wire("steps")
    compute_seconds: float = wire("compute-seconds", 0.0)


@message("train.tile_generator", reply=TileGeneratorMetrics)
class TrainTileGenerator(ArmConfig):
    """Train a DCGAN on the centre's own breast tiles (``tiles``: TileGanParams)."""

    tiles: dict = wire("tiles", as_json=True)


@message("train.tile_generator info")
class TileGeneratorInfo(Config):
    """What a shared tile generator is: whose style, and its architecture."""

    style: str = wire("style")
    patch_size: int = wire("patch-size")
    latent_dim: int = wire("latent-dim")
    width: int = wire("width")


@message("train.style_bank reply")
class StyleBankMetrics(Metrics):
    """Counts of a style bank: images, styles (own included), CycleGAN steps, figures."""

    n_images: int = wire("n-images")
    n_styles: int = wire("n-styles")
    steps: int = wire("steps", 0)
    plotted: int = wire("plotted", 0)
    compute_seconds: float = wire("compute-seconds", 0.0)


@message("train.style_bank", reply=StyleBankMetrics)
class TrainStyleBank(ArmConfig, StoreFields, PlotFields):
    """Build the centre's style bank from the other seen centres' generators (``arrays-<k>``).

    ``generators``: one :class:`TileGeneratorInfo` dict per received generator, in record
    order. ``tiles``: TileGanParams; ``cyclegan``: CycleGanParams.
    """

    generators: list = wire("generators", [], as_json=True)
    tiles: dict = wire("tiles", as_json=True)
    cyclegan: dict = wire("cyclegan", as_json=True)
    grid_images: int = wire("grid-images", 4)

    def received(self, content) -> list[tuple[TileGeneratorInfo, ArrayRecord]]:
        """The received generators: (info, weights) per entry of ``generators``."""
        return [
            (TileGeneratorInfo.from_config(g), content[model_record(k)])
            for k, g in enumerate(self.generators)
        ]


# --------------------------------------------------------------------------- pre-training
@message("train.encoder", reply=TrainMetrics)
class TrainEncoder(TrainConfig, StoreFields):
    """One round of local pre-training of the received encoder with ``scheme``.

    ``pretrain``: PretrainParams; ``steps_scale`` multiplies its ``steps_per_epoch`` (the
    pooled node takes as many steps as all centres together).
    """

    scheme: str = wire("scheme")
    pretrain: dict = wire("pretrain", as_json=True)
    steps_scale: int = wire("steps-scale", 1, omit_default=True)


@message("evaluate.encoder", reply=EvaluationMetrics)
class EvaluateEncoder(ModelConfig):
    """Validation loss of the averaged encoder on a split (``val_loss`` record)."""

    split: str = wire("split")
    scheme: str = wire("scheme")
    pretrain: dict = wire("pretrain", as_json=True)
    n_boot: int = wire("n-boot", 0)


# --------------------------------------------------------------------------- downstream
@message("train.downstream reply")
class DownstreamMetrics(Metrics):
    """A fine-tuned task model's training: examples, patients, loss, steps, time."""

    num_examples: int = wire("num-examples")
    n_patients: int = wire("n-patients")
    train_loss: float = wire("train-loss")
    steps: int = wire("steps")
    compute_seconds: float = wire("compute-seconds", 0.0)


@message("train.downstream", reply=DownstreamMetrics)
class TrainDownstream(ModelConfig):
    """Fine-tune ``task`` from the received encoder (``model``: its spec) on the centre's
    training split, detection on ``fraction`` of its patients (``finetune``: FinetuneParams)."""

    task: str = wire("task")
    fraction: float = wire("fraction", 1.0)
    finetune: dict = wire("finetune", as_json=True)


@message("train.downstream_round", reply=TrainMetrics)
class TrainDownstreamRound(TrainConfig):
    """One FedAvg round of ``task``'s fine-tuning (``downstream: federated``): continue the
    received task model (``arrays``; ``model``: the encoder spec it is built on) on the
    centre's training split, detection on ``fraction`` of its patients, for this round's
    share of the task's epochs over ``rounds`` rounds (``params.round_epochs``).
    ``patients_seed`` (the arm's seed) chooses those patients and the matching decoys as
    ``train.downstream`` does (the message seed changes every round)."""

    task: str = wire("task")
    fraction: float = wire("fraction", 1.0)
    finetune: dict = wire("finetune", as_json=True)
    patients_seed: int = wire("patients-seed")
    rounds: int = wire("rounds", 1)


@message("evaluate.downstream", reply=EvaluationMetrics)
class EvaluateDownstream(ModelConfig):
    """Evaluate the task models fine-tuned at ``sources`` (``arrays-<k>``, in order) on a
    split; the metric is averaged over the models, its CI bootstraps the test samples.
    Without ``sources``: the one model in ``arrays`` (a federated round's average)."""

    task: str = wire("task")
    fraction: float = wire("fraction", 1.0)
    finetune: dict = wire("finetune", as_json=True)
    sources: list[str] = wire("sources", [], omit_default=True)
    split: str = wire("split", "test")
    n_boot: int = wire("n-boot", 0)


# --------------------------------------------------------------------------- embeddings
@message("query.embeddings reply")
class EmbeddingInfo(Metrics):
    """A t-SNE map's counts and the vendor silhouette of each arm's embeddings."""

    n_images: int = wire("n-images")
    plotted: int = wire("plotted", 0)
    silhouette: dict[str, float] = wire("silhouette-*", {})


@message("query.embeddings", reply=EmbeddingInfo)
class QueryEmbeddings(ArmConfig, StoreFields, PlotFields):
    """Draw the embeddings of the centre's test images in every seen style (its own and its
    translations), one panel per arm of ``models`` (arm -> spec; weights ``arrays-<k>``)."""

    models: dict = wire("models", as_json=True)
    split: str = wire("split", "test")
    method: str = wire("method", "tsne")


def models_of(m: EvaluateDownstream | QueryEmbeddings, content) -> list[ArrayRecord]:
    """The weights a message carries, one per source (``arrays-<k>``, in order); an
    :class:`EvaluateDownstream` without sources carries one model in ``arrays``."""
    if isinstance(m, EvaluateDownstream) and not m.sources:
        return [content[ARRAYS]]
    n = len(m.sources) if isinstance(m, EvaluateDownstream) else len(m.models)
    return [content[model_record(k)] for k in range(n)]
