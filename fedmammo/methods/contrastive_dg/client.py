"""Handlers of ``contrastive_dg`` at the centres (the work itself is in :mod:`.tasks` and
:mod:`.styles`; the messages in :mod:`.messages`).

What leaves a centre: its tile DCGAN (``train.tile_generator``), the averaged encoder's local
update (``train.encoder``), its fine-tuned task models (``train.downstream``) or its local
update of the averaged task model (``train.downstream_round``), and counts and metrics.
Style banks, translators and translated images stay on the centre's disk: in simulation
under the server's ``store-dir`` (same machine), in deployment under the centre's own
``<output-dir>/contrastive_dg`` (node config ``output-dir``, default ``<data-dir>/outputs``).
Figures (style sample grids, t-SNE maps) are drawn inside the centre: in simulation into the
server's ``plot-dir``, in deployment into ``<output-dir>/plots``.

No DP: contrastive pre-training cannot be made DP-SGD private (the NT-Xent loss of an image
depends on the other images of its batch), so no handler declares a DP path and a centre
whose profile asks for DP refuses them (the DP guard; the server refuses such a scenario
before it starts).
"""

from __future__ import annotations

import time
from pathlib import Path

from flwr.app import Context, Message

from fedmammo.data.prepare import CentreData
from fedmammo.errors import DataError
from fedmammo.federation.centre_models import model_from, model_with_weights
from fedmammo.federation.centre_runtime import CentreIdentity, centre_data, identity_of
from fedmammo.federation.codec import arrays_to_state, state_to_arrays
from fedmammo.federation.handlers import check_injected_fault, handler, reply
from fedmammo.federation.messages import ARRAYS, INFO, METRICS, EvaluationMetrics, TrainMetrics
from fedmammo.federation.site import output_dir, plot_dir, single_centre
from fedmammo.methods.contrastive_dg.messages import (
    DownstreamMetrics,
    EmbeddingInfo,
    EvaluateDownstream,
    EvaluateEncoder,
    QueryEmbeddings,
    StyleBankMetrics,
    TileGeneratorInfo,
    TileGeneratorMetrics,
    TrainDownstream,
    TrainDownstreamRound,
    TrainEncoder,
    TrainStyleBank,
    TrainTileGenerator,
    models_of,
)
from fedmammo.methods.contrastive_dg.params import (
    CycleGanParams,
    FinetuneParams,
    PretrainParams,
    TileGanParams,
    round_epochs,
)
from fedmammo.methods.contrastive_dg.styles import (
    StyleStore,
    build_centre_styles,
    build_pooled_styles,
    plot_style_grid,
    train_rows,
    train_tile_generator,
)
from fedmammo.methods.contrastive_dg.tasks import (
    embedding_map,
    evaluate_task,
    finetune_task,
    pretrain,
    pretrain_inputs,
    task_inputs,
    task_model,
    validation_records,
)
from fedmammo.models import build_model_to_load
from fedmammo.models.gans import GeneratorDescription, load_generator
from fedmammo.seeds import derive_seed

__all__ = [
    "HANDLERS",
    "evaluate_downstream",
    "evaluate_encoder",
    "query_embeddings",
    "train_downstream",
    "train_downstream_round",
    "train_encoder",
    "train_style_bank",
    "train_tile_generator_handler",
]

STORE = "contrastive_dg"


def _store(context: Context, ident: CentreIdentity, server_dir: str) -> StyleStore | None:
    """This centre's style store: its own output dir when deployed, else the server's path."""
    root = output_dir(context, ident, STORE, server_dir)
    return None if root is None else StyleStore(root, ident.name)


def _plots(context: Context, ident: CentreIdentity, server_dir: str) -> Path | None:
    return plot_dir(context, ident, server_dir)


def _description(info: TileGeneratorInfo) -> GeneratorDescription:
    return GeneratorDescription(
        kind="dcgan",
        patch_size=info.patch_size,
        latent_dim=info.latent_dim,
        width=info.width,
        centre=info.style,
    )


# --------------------------------------------------------------------------- styles
@handler(TrainTileGenerator.KIND, consent="generators")
def train_tile_generator_handler(msg: Message, context: Context) -> Message:
    """Train a DCGAN on this centre's breast tiles; reply the generator and what it is."""
    start = time.perf_counter()
    m = TrainTileGenerator.of(msg)
    ident = identity_of(context)
    data = single_centre(centre_data(ident, m), m.KIND)
    tiles = TileGanParams(**m.tiles)
    _, images = train_rows(data)
    result, n_tiles = train_tile_generator(images, tiles, seed=m.seed, centre=ident.name)
    desc = result.description
    info = TileGeneratorInfo(
        style=ident.name, patch_size=desc.patch_size, latent_dim=desc.latent_dim, width=desc.width
    )
    metrics = TileGeneratorMetrics(
        n_tiles=n_tiles,
        steps=result.generator_steps,
        compute_seconds=time.perf_counter() - start,
    )
    records = {
        ARRAYS: state_to_arrays(result.generator_state),
        INFO: info.to_config(),
        METRICS: metrics.to_metrics(),
    }
    return reply(msg, context, records, model=load_generator(desc, result.generator_state))


@handler(TrainStyleBank.KIND, consent="metrics")
def train_style_bank(msg: Message, context: Context) -> Message:
    """Build (or reuse) this centre's style bank from the received tile generators."""
    start = time.perf_counter()
    m = TrainStyleBank.of(msg)
    ident = identity_of(context)
    data = centre_data(ident, m)
    store = _store(context, ident, m.store_dir)
    if store is None or not m.styles:
        raise DataError(f"{m.KIND}: no store-dir or styles key in the message")
    tiles, cyclegan = TileGanParams(**m.tiles), CycleGanParams(**m.cyclegan)
    parts = [data] if isinstance(data, CentreData) else list(data.parts)
    stores = {p.name: store if p is data else StyleStore(store.folder, p.name) for p in parts}
    rows = {p.name: train_rows(p) for p in parts}
    steps = 0
    if not all(s.has(m.styles) for s in stores.values()):
        if isinstance(data, CentreData):
            gens = {
                info.style: (_description(info), arrays.to_torch_state_dict())
                for info, arrays in m.received(msg.content)
            }
            bank, translators, steps = build_centre_styles(
                rows[data.name][1],
                own_style=ident.name,
                generators=gens,
                tiles=tiles,
                cyclegan=cyclegan,
                seed=m.seed,
            )
            banks, all_translators = {data.name: bank}, {data.name: translators}
        else:  # the pooled what-if: CycleGANs between the real vendors it holds
            banks, all_translators, steps = build_pooled_styles(
                {name: images for name, (_, images) in rows.items()},
                tiles=tiles,
                cyclegan=cyclegan,
                seed=m.seed,
            )
        for name, bank in banks.items():
            ids = list(rows[name][0]["image_id"].astype(str))
            stores[name].save(m.styles, bank, ids, all_translators[name], cyclegan)
    first = parts[0].name
    bank = stores[first].bank(m.styles, list(rows[first][0]["image_id"].astype(str)))
    where = _plots(context, ident, m.plot_dir)
    # the grid shows the centre's images and their translations: drawn only when they are
    # synthetic (the figure reaches report.html; a real dataset's pixels never do)
    if where is not None and ident.synthetic_data:
        plot_style_grid(
            bank,
            where / f"style_samples_{ident.name}.png",
            n_images=m.grid_images,
            seed=m.seed,
            title=(
                f"Centre {ident.name}: own images in every seen style and blends, drawn inside "
                "the centre"
                if isinstance(data, CentreData)
                else f"Pooled what-if (simulation only), part {first}: real-vendor CycleGANs"
            ),
        )
    metrics = StyleBankMetrics(
        n_images=sum(len(r[0]) for r in rows.values()),
        n_styles=len(bank.styles),
        steps=steps,
        plotted=int(where is not None),
        compute_seconds=time.perf_counter() - start,
    )
    return reply(msg, context, {METRICS: metrics.to_metrics()})


# --------------------------------------------------------------------------- pre-training
@handler(TrainEncoder.KIND, consent="models", averaged=True)
def train_encoder(msg: Message, context: Context) -> Message:
    """One round of local pre-training of the received encoder; reply its weights."""
    start = time.perf_counter()
    m = TrainEncoder.of(msg)
    check_injected_fault(m)
    ident = identity_of(context)
    encoder = model_from(m, msg.content[ARRAYS], context, keep_local_bn=False)
    data = centre_data(ident, m)
    styles, frame = pretrain_inputs(data, _store(context, ident, m.store_dir), m.styles, m.scheme)
    result = pretrain(
        encoder,
        styles,
        frame,
        scheme=m.scheme,
        p=PretrainParams(**m.pretrain),
        seed=m.seed,
        steps_scale=m.steps_scale,
    )
    metrics = TrainMetrics(
        num_examples=len(frame),
        train_loss=result.loss,
        steps=result.steps,
        compute_seconds=time.perf_counter() - start,
        num_images=len(frame),  # the weighting count (self-supervised: no labels)
    )
    records = {ARRAYS: state_to_arrays(encoder.state_dict()), METRICS: metrics.to_metrics()}
    return reply(msg, context, records, encoder)


@handler(EvaluateEncoder.KIND, consent="metrics")
def evaluate_encoder(msg: Message, context: Context) -> Message:
    """Validation loss of the received encoder on one split of this centre."""
    start = time.perf_counter()
    m = EvaluateEncoder.of(msg)
    encoder = model_from(m, msg.content[ARRAYS], context, keep_local_bn=False)
    data = single_centre(centre_data(identity_of(context), m), m.KIND)
    frame, images = train_rows(data, m.split)
    p = PretrainParams(**m.pretrain)
    records = validation_records(encoder, images, frame, scheme=m.scheme, p=p, seed=m.seed)
    metrics = EvaluationMetrics(
        records=records, num_examples=len(frame), compute_seconds=time.perf_counter() - start
    )
    return reply(msg, context, {METRICS: metrics.to_metrics()})


# --------------------------------------------------------------------------- downstream
@handler(TrainDownstream.KIND, consent="models")
def train_downstream(msg: Message, context: Context) -> Message:
    """Fine-tune one task from the received encoder on this centre's labelled training split."""
    start = time.perf_counter()
    m = TrainDownstream.of(msg)
    encoder = model_from(m, msg.content[ARRAYS], context, keep_local_bn=False)
    data = single_centre(centre_data(identity_of(context), m), m.KIND)
    ft = FinetuneParams(**m.finetune)
    inputs = task_inputs(data, m.task, "train", ft, fraction=m.fraction, seed=m.seed)
    result = finetune_task(m.task, encoder, inputs, ft, image_size=tuple(m.image_size), seed=m.seed)
    metrics = DownstreamMetrics(
        num_examples=len(inputs),
        n_patients=inputs.n_patients,
        train_loss=result.loss,
        steps=result.steps,
        compute_seconds=time.perf_counter() - start,
    )
    records = {ARRAYS: state_to_arrays(result.model.state_dict()), METRICS: metrics.to_metrics()}
    return reply(msg, context, records, result.model)


@handler(TrainDownstreamRound.KIND, consent="models", averaged=True)
def train_downstream_round(msg: Message, context: Context) -> Message:
    """One federated round of a task: continue the received (averaged) task model on this
    centre's labelled training split; reply its weights and the task's sample count."""
    start = time.perf_counter()
    m = TrainDownstreamRound.of(msg)
    check_injected_fault(m)
    ident = identity_of(context)
    data = single_centre(centre_data(ident, m), m.KIND)
    ft = FinetuneParams(**m.finetune)
    net = _task_net(m, msg.content[ARRAYS], ft)
    loop = ft.task(m.task)  # this round's share of the task's epochs
    epochs = round_epochs(loop.epochs, m.rounds, int(m.server_round or 1))
    ft = ft.model_copy(update={m.task: loop.model_copy(update={"epochs": epochs})})
    # the same patients (and matching decoys) as train.downstream: the arm's seed, not the round's
    choice = derive_seed(m.patients_seed, m.task, m.fraction, ident.name)
    inputs = task_inputs(data, m.task, "train", ft, fraction=m.fraction, seed=choice)
    result = finetune_task(
        m.task, None, inputs, ft, image_size=tuple(m.image_size), seed=m.seed, model=net
    )
    metrics = TrainMetrics(
        num_examples=len(inputs),
        train_loss=result.loss,
        steps=result.steps,
        compute_seconds=time.perf_counter() - start,
        num_images=len(inputs),  # the weighting count: the task's training samples here
        num_labelled=len(inputs),
    )
    records = {ARRAYS: state_to_arrays(net.state_dict()), METRICS: metrics.to_metrics()}
    return reply(msg, context, records, net)


def _task_net(m, arrays, ft: FinetuneParams):
    """The task model a message carries: built on the encoder spec ``m.model``, ``arrays``
    loaded."""
    skeleton = build_model_to_load(m.model["name"], **m.model.get("options", {}))
    net = task_model(m.task, skeleton, ft, tuple(m.image_size))
    net.load_state_dict(arrays_to_state(arrays, like=net.state_dict()))
    return net


@handler(EvaluateDownstream.KIND, consent="metrics")
def evaluate_downstream(msg: Message, context: Context) -> Message:
    """The received task models (one per fine-tuning centre) on this centre's test split."""
    start = time.perf_counter()
    m = EvaluateDownstream.of(msg)
    data = single_centre(centre_data(identity_of(context), m), m.KIND)
    ft = FinetuneParams(**m.finetune)
    nets = [_task_net(m, arrays, ft) for arrays in models_of(m, msg.content)]
    inputs = task_inputs(data, m.task, m.split, ft, seed=m.seed)
    records = evaluate_task(
        m.task, nets, inputs, ft, fraction=m.fraction, n_boot=m.n_boot, seed=m.seed
    )
    metrics = EvaluationMetrics(
        records=records, num_examples=len(inputs), compute_seconds=time.perf_counter() - start
    )
    return reply(msg, context, {METRICS: metrics.to_metrics()})


@handler(QueryEmbeddings.KIND, consent="metrics")
def query_embeddings(msg: Message, context: Context) -> Message:
    """Draw the t-SNE map of this centre's test images in every seen style, per arm."""
    m = QueryEmbeddings.of(msg)
    ident = identity_of(context)
    data = single_centre(centre_data(ident, m), m.KIND)
    encoders = {}
    for (arm, spec), arrays in zip(m.models.items(), models_of(m, msg.content), strict=True):
        encoders[arm] = model_with_weights(spec, arrays)
    frame, images = train_rows(data, m.split)
    store = _store(context, ident, m.store_dir)
    translators = store.translators(m.styles) if store is not None and m.styles else {}
    where = _plots(context, ident, m.plot_dir)
    silhouette: dict[str, float] = {}
    if where is not None and len(frame) >= 3:
        silhouette = embedding_map(
            encoders,
            images,
            own_style=ident.name,
            translators=translators,
            path=where / f"embeddings_{ident.name}.png",
            method=m.method,
            seed=m.seed,
            title=f"Centre {ident.name}: {m.split} images in every seen style, by encoder "
            "(drawn inside the centre)",
        )
    info = EmbeddingInfo(n_images=len(frame), plotted=int(bool(silhouette)), silhouette=silhouette)
    return reply(msg, context, {METRICS: info.to_metrics()})


HANDLERS = (
    train_tile_generator_handler,
    train_style_bank,
    train_encoder,
    evaluate_encoder,
    train_downstream,
    train_downstream_round,
    evaluate_downstream,
    query_embeddings,
)
