"""CycleGAN-UDA's centre side: what each centre computes, and the only things it replies.

- ``train.uda_tile_generator`` (the source centre): a DCGAN on square breast tiles of its own
  training images; replies the generator's weights and sizes (consent ``generators``).
- ``train.uda_translator`` (the target centre): samples source-style tiles from the received
  generator, trains a CycleGAN between its own tiles (domain A) and those (domain B), and
  replies only ``G_ba``, the generator mapping the source style to its own (consent
  ``generators``).
- ``train.uda_classifier`` (the training centre of an arm): trains the arm's classifier on its
  labelled training images, plus the same images translated by a received translator in a
  ``uda`` arm (translated on the spot, never stored or sent); replies the weights (consent
  ``models``).
- ``evaluate.uda_classifier`` (the target centre; the source centre too for its own
  ``source_only`` and ``uda`` classifiers): test AUROC with its 95% CI, metrics only
  (consent ``metrics``).

No handler replies an image: every ArrayRecord is exactly a model it declared (the egress
guard checks it).
"""

from __future__ import annotations

import time

import numpy as np
import torch
from flwr.app import Context, Message
from torch.utils.data import ConcatDataset, TensorDataset

from fedmammo.config.recipe import LocalTrainingParams
from fedmammo.errors import DataError
from fedmammo.evaluation.metrics import metrics_by_segment
from fedmammo.evaluation.tables import comparison_records
from fedmammo.federation.centre_models import baseline_model, model_from
from fedmammo.federation.centre_runtime import centre_data, device, identity_of
from fedmammo.federation.codec import arrays_to_state, state_to_arrays
from fedmammo.federation.handlers import handler, reply
from fedmammo.federation.messages import ARRAYS, METRICS, EvaluationMetrics
from fedmammo.federation.site import plot_dir, single_centre
from fedmammo.methods.cyclegan_uda.messages import (
    GENERATOR,
    TRANSLATOR,
    EvaluateUdaClassifier,
    TileGeneratorMetrics,
    TrainTileGenerator,
    TrainTranslator,
    TrainUdaClassifier,
    TranslatorMetrics,
    UdaTrainMetrics,
)
from fedmammo.methods.cyclegan_uda.params import CycleGanParams, TileGanParams
from fedmammo.methods.cyclegan_uda.report import plot_translations
from fedmammo.models import build_model
from fedmammo.models.cyclegan import ResnetGenerator
from fedmammo.models.gans import GeneratorDescription, load_generator, sample_generator
from fedmammo.seeds import derive_seed
from fedmammo.training.classifier import predict_scores, train_classifier
from fedmammo.training.contrastive_styles import breast_tiles, translate_images
from fedmammo.training.cyclegan import train_cyclegan
from fedmammo.training.gan import train_dcgan

__all__ = ["HANDLERS", "evaluate", "train_classifier_handler", "train_tile_generator"]


def _train_images(data, *, labelled: bool) -> tuple[np.ndarray, np.ndarray]:
    """Rows of the training split (labelled ones only when ``labelled``) and their images."""
    rows = data.rows("train", label="malignant" if labelled else None)
    if len(rows) == 0:
        raise DataError(f"centre {data.name!r}: no {'labelled ' * labelled}training images")
    return rows, data.cache.images(rows)


def _tiles(images: np.ndarray, tiles: TileGanParams, seed: int) -> np.ndarray:
    return breast_tiles(
        images,
        n=tiles.n_tiles,
        size=tiles.tile_size,
        seed=derive_seed(seed, "tiles"),
        max_background=tiles.max_background,
    )


@handler(TrainTileGenerator.KIND, consent="generators")
def train_tile_generator(msg: Message, context: Context) -> Message:
    """Train a DCGAN on this centre's breast tiles; reply the generator weights only."""
    start = time.perf_counter()
    m = TrainTileGenerator.of(msg)
    ident = identity_of(context)
    data = single_centre(centre_data(ident, m), m.KIND)
    tiles = TileGanParams(**m.tiles)
    _, images = _train_images(data, labelled=False)
    real = _tiles(images, tiles, m.seed)
    result = train_dcgan(
        real, **tiles.gan_kwargs(), seed=m.seed, centre=ident.name, device=device()
    )
    desc, state = result.description, result.generator_state
    metrics = TileGeneratorMetrics(
        tile_size=desc.patch_size,
        latent_dim=desc.latent_dim,
        width=desc.width,
        n_tiles=len(real),
        epochs=desc.epochs,
        generator_steps=result.generator_steps,
        compute_seconds=time.perf_counter() - start,
    )
    records = {GENERATOR: state_to_arrays(state), METRICS: metrics.to_metrics()}
    return reply(msg, context, records, model=load_generator(desc, state))


@handler(TrainTranslator.KIND, consent="generators")
def train_translator(msg: Message, context: Context) -> Message:
    """Train a CycleGAN between own tiles and the source generator's; reply ``G_ba`` only."""
    start = time.perf_counter()
    m = TrainTranslator.of(msg)
    ident = identity_of(context)
    data = single_centre(centre_data(ident, m), m.KIND)
    tiles, cyclegan = TileGanParams(**m.tiles), CycleGanParams(**m.cyclegan)
    desc = GeneratorDescription.from_dict(m.generator_description)
    if desc.patch_size != tiles.tile_size:
        raise DataError(
            f"the source generator makes {desc.patch_size}-px tiles, the recipe's "
            f"tiles.tile_size is {tiles.tile_size}"
        )
    state = arrays_to_state(msg.content[GENERATOR])
    synthetic = sample_generator(
        desc, [state], tiles.n_synthetic, seed=derive_seed(m.seed, "sample"), device=device()
    )
    _, images = _train_images(data, labelled=False)
    own = _tiles(images, tiles, m.seed)
    # domain A: this (target) centre's tiles; domain B: the source style. G_ba: source -> here.
    result = train_cyclegan(
        own, synthetic, **cyclegan.model_dump(), seed=derive_seed(m.seed, "cyclegan")
    )
    g_ba = result.generator("ba")
    last = result.history[-1] if result.history else {}
    metrics = TranslatorMetrics(
        n_own_tiles=len(own),
        n_synthetic=len(synthetic),
        steps=result.steps,
        cycle_loss=float(last.get("cycle_loss", float("nan"))),
        identity_loss=float(last.get("identity_loss", float("nan"))),
        compute_seconds=time.perf_counter() - start,
    )
    records = {TRANSLATOR: state_to_arrays(g_ba.state_dict()), METRICS: metrics.to_metrics()}
    return reply(msg, context, records, model=g_ba)


def _translator(msg: Message, m: TrainUdaClassifier) -> ResnetGenerator | None:
    if TRANSLATOR not in msg.content:
        return None
    arch = m.translator_arch
    gen = ResnetGenerator(width=int(arch["width"]), n_blocks=int(arch["n_blocks"]))
    gen.load_state_dict(arrays_to_state(msg.content[TRANSLATOR], like=gen.state_dict()))
    return gen.to(device()).eval()


@handler(TrainUdaClassifier.KIND, consent="models")
def train_classifier_handler(msg: Message, context: Context) -> Message:
    """Train the arm's classifier on own labelled images (+ their translations); reply weights."""
    start = time.perf_counter()
    m = TrainUdaClassifier.of(msg)
    ident = identity_of(context)
    data = single_centre(centre_data(ident, m), m.KIND)
    rows = data.rows("train")
    if len(rows) == 0:
        raise DataError(f"centre {ident.name!r}: no labelled training images")
    labels, segments = data.labels(rows), data.segments(rows)
    dataset = data.dataset(rows)
    translator = _translator(msg, m)
    n_translated = 0
    if translator is not None:
        images = data.cache.images(rows)
        translated = translate_images(translator, images)
        n_translated = len(translated)
        where = plot_dir(context, ident, m.plot_dir)
        if where is not None and ident.synthetic_data:  # its images reach report.html
            plot_translations(
                images,
                translated,
                where / f"translated_{ident.name}_to_{m.target}.png",  # the last seed's
                title=f"Centre {ident.name}'s phantom images (top) in {m.target}'s style "
                "(the CycleGAN generator it received); drawn inside the centre",
            )
        extra = TensorDataset(torch.from_numpy(translated)[:, None], torch.from_numpy(labels))
        dataset = ConcatDataset([dataset, extra])
        labels = np.concatenate([labels, labels])
        segments = np.concatenate([segments, [f"{s}/translated" for s in segments]])
    torch.manual_seed(m.init_seed)
    model = build_model(m.model["name"], **m.model.get("options", {}))
    result = train_classifier(
        model,
        dataset,
        labels,
        segments,
        params=LocalTrainingParams(**m.train),
        seed=m.seed,
        device=device(),
    )
    metrics = UdaTrainMetrics(
        num_examples=result.num_examples,
        train_loss=result.loss,
        steps=result.steps,
        compute_seconds=time.perf_counter() - start,
        num_images=len(data.rows("train", label=None)),
        num_labelled=len(rows),
        n_translated=n_translated,
    )
    records = {ARRAYS: state_to_arrays(model.state_dict()), METRICS: metrics.to_metrics()}
    return reply(msg, context, records, model)


@handler(EvaluateUdaClassifier.KIND, consent="metrics")
def evaluate(msg: Message, context: Context) -> Message:
    """Test metrics of the received classifier on one split here (AUROC with its CI); with a
    baseline arm, its paired difference to that arm's classifier."""
    start = time.perf_counter()
    m = EvaluateUdaClassifier.of(msg)
    model = model_from(m, msg.content[ARRAYS], context, keep_local_bn=False)
    data = single_centre(centre_data(identity_of(context), m), m.KIND)
    rows = data.rows(m.split)
    records = []
    if len(rows):
        dataset, y, segments = data.dataset(rows), data.labels(rows), data.segments(rows)
        boot = dict(n_boot=m.n_boot, seed=m.seed)
        patients = data.patients(rows)
        scores = predict_scores(model, dataset, device=device())
        if m.baseline:  # whole-centre records only: each domain is one centre
            base = predict_scores(baseline_model(msg.content, m), dataset, device=device())
            records = comparison_records(
                y, base, scores, segments, [None], patients=patients, **boot
            )
        else:
            records = metrics_by_segment(y, scores, segments, groups=patients, with_ci=m.n_boot > 0)
            records = [r for r in records if r["segment"] is None]
    metrics = EvaluationMetrics(
        records=records, num_examples=len(rows), compute_seconds=time.perf_counter() - start
    )
    return reply(msg, context, {METRICS: metrics.to_metrics()})


HANDLERS = (train_tile_generator, train_translator, train_classifier_handler, evaluate)
