"""Handler of the sharing centres of generator sharing (GAN-sharing paper): ``train.generator``.

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

The lesion-patch helpers here are shared with the receiver's handler
(:mod:`fedmammo.methods.share_gans.receiver`). Figures are drawn inside the centre
that holds the pixels: in simulation into the server's ``plot-dir`` (the run's ``plots/`` on
the same machine), in deployment into the centre's own ``<output-dir>/plots`` (node config
``output-dir``, default ``<data-dir>/outputs``); replies never carry paths. The sharing centre
draws ``synthetic_samples_<centre>_<gan>_<subset>.png`` (its real patches above its
generator's samples).
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping

import numpy as np
from flwr.app import Context, Message

from fedmammo.data.patches import LESION_SUBSETS, PatchSet, build_patch_set
from fedmammo.data.prepare import CentreData
from fedmammo.errors import ConfigError, DataError
from fedmammo.evaluation.frechet import frechet_distance
from fedmammo.federation.centre_runtime import centre_data, device, identity_of
from fedmammo.federation.codec import state_to_arrays
from fedmammo.federation.consent import check_consent
from fedmammo.federation.handlers import handler, reply
from fedmammo.federation.messages import AUDIT, METRICS, PRIVACY, encode_attacks
from fedmammo.federation.privacy.ledger import finish_dp, open_dp_session
from fedmammo.federation.site import plot_dir, single_centre
from fedmammo.methods.share_gans.audit import audit_generator
from fedmammo.methods.share_gans.messages import (
    DESCRIPTION,
    GeneratorInfo,
    GeneratorMetrics,
    TrainGenerator,
    snapshot_record,
)
from fedmammo.methods.share_gans.report import plot_sample_grid
from fedmammo.models.gans import load_generator, sample_patches
from fedmammo.seeds import derive_seed
from fedmammo.training.gan import train_dcgan, train_wgan_gp
from fedmammo.training.patch_classifier import (
    patch_frame,
)

__all__ = [
    "HANDLERS",
    "FEATURE_NET",
    "lesion_patches",
    "lesions",
    "train_generator",
]

FEATURE_NET = "random_cnn_v1"
_TRAINERS = {"dcgan": train_dcgan, "wgan_gp": train_wgan_gp}


def lesion_patches(
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


def lesions(ps: PatchSet) -> np.ndarray:
    """The lesion patches of a patch set."""
    return ps.patches[ps.labels == 1]


# --------------------------------------------------------------------------- sharing centre
@handler(TrainGenerator.KIND, dp=True, consent="generators")
def train_generator(msg: Message, context: Context) -> Message:
    """Train a generator on this centre's lesion patches; reply weights, description, quality."""
    start = time.perf_counter()
    m = TrainGenerator.of(msg)
    ident = identity_of(context)
    if ident.profile is None or not ident.profile.sharing.generators:
        raise ConfigError(
            f"centre {ident.name!r} refuses train.generator: its profile sets "
            "sharing.generators: false (fix: set sharing.generators: true in its profile, or "
            "drop the arms that need its generator)"
        )
    if m.audit:  # attack results on its training patches: its audits consent, before any work
        check_consent(ident.name, ident.profile.sharing, m.KIND, "audits")
    data = single_centre(centre_data(ident, m), m.KIND)
    gan, subset, seed = m.gan, m.subset, m.seed
    if gan not in _TRAINERS or subset not in LESION_SUBSETS:
        raise ConfigError(
            f"train.generator: gan {gan!r} / subset {subset!r} unknown; valid: "
            f"{sorted(_TRAINERS)} / {sorted(LESION_SUBSETS)}"
        )
    patch = m.patch
    ps = lesion_patches(
        data,
        "train",
        subset,
        patch,
        seed=derive_seed(seed, "patches"),
        augment=False,
        healthy_per_image=0,
    )
    real = lesions(ps)
    if len(real) < 2:
        raise DataError(
            f"centre {ident.name!r}: {len(real)} {subset} lesion patches in its "
            "training split; a generator needs at least 2"
        )
    kinds = sorted(set(ps.kinds[ps.labels == 1].tolist()))
    gan_params = m.gan_params
    # DP (privacy in the profile): only the discriminator is private; refused before training
    # when the generator's planned steps would exceed the ledger's budget.
    privacy = open_dp_session(
        context,
        ident,
        m,
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
        m.frechet_samples,
        seed=derive_seed(seed, "frechet"),
        device=device(),
    )
    fd = frechet_distance(real, fake, feature_net=FEATURE_NET)
    half = np.random.default_rng(seed).permutation(len(real))
    floor = math.nan
    if len(real) >= 8:
        mid = len(real) // 2
        floor = frechet_distance(real[half[:mid]], real[half[mid:]], feature_net=FEATURE_NET)
    where = plot_dir(context, ident, m.plot_dir)
    if where is not None:
        # its own patches only when they are synthetic: the figure reaches report.html
        own = [(f"real {ident.name}", real[half])] if ident.synthetic_data else []
        plot_sample_grid(
            [*own, (f"{gan} 1", fake[::2]), (f"{gan} 2", fake[1::2])],
            where / f"synthetic_samples_{ident.name}_{gan}_{subset}.png",
            title=f"Centre {ident.name}, lesion subset {subset!r}: "
            + ("its phantom patches (top) and " if own else "")
            + f"samples of its {gan} ({len(states)} snapshot(s)); drawn inside the centre",
            columns=m.grid_columns,
        )
    records: dict = {
        snapshot_record(e): state_to_arrays(s) for e, s in zip(epochs, states, strict=True)
    }
    records[DESCRIPTION] = GeneratorInfo(
        kind=desc.kind,
        centre=ident.name,
        subset=subset,
        lesion_types=kinds,
        d_norm=desc.d_norm,
        feature_net=FEATURE_NET,
    ).to_config()
    if privacy is not None:
        records[PRIVACY] = finish_dp(context, privacy, m, result.critic_steps)
    if m.audit:
        held_out = np.concatenate(
            [
                lesions(
                    lesion_patches(
                        data,
                        split,
                        subset,
                        patch,
                        seed=derive_seed(seed, split),
                        augment=False,
                        healthy_per_image=0,
                    )
                )
                for split in ("val", "test")
            ]
        )
        budget = privacy.budget if privacy is not None else None
        audits = audit_generator(
            desc,
            result.discriminator_state,
            real,
            held_out,
            fake,
            epsilon=result.epsilon,
            delta=budget.delta if budget else None,
            device=device(),
        )
        records[AUDIT] = encode_attacks(audits)
    records[METRICS] = GeneratorMetrics(
        patch_size=desc.patch_size,
        latent_dim=desc.latent_dim,
        width=desc.width,
        n_training_patches=desc.n_training_patches,
        epochs=desc.epochs,
        n_snapshots=len(states),
        generator_steps=result.generator_steps,
        critic_steps=result.critic_steps,
        frechet_distance=fd,
        frechet_real_floor=floor,
        frechet_samples=len(fake),
        compute_seconds=time.perf_counter() - start,
    ).to_metrics()
    return reply(msg, context, records, model=load_generator(desc, states[-1]))


# --------------------------------------------------------------------------- receiving centre


HANDLERS = (train_generator,)
