"""train.generator / train.patch_classifier on tiny phantom centres, called without Ray."""

from __future__ import annotations

import math

import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, RecordDict
from helpers.flower_messages import make_incoming

from fedmammo.config import CentreProfile
from fedmammo.data.prepare import materialise_centre
from fedmammo.errors import ConfigError
from fedmammo.federation.centre_runtime import CentreIdentity
from fedmammo.federation.codec import decode_metric_records, put_json
from fedmammo.federation.egress import EgressError, egress_mod
from fedmammo.methods.share_gans import client as handlers
from fedmammo.methods.share_gans import receiver
from fedmammo.methods.share_gans.params import ClassifierParams, CycleGanParams
from fedmammo.models.gans import GeneratorDescription, build_generator
from fedmammo.training.patch_classifier import patch_frame

SIZE = (64, 48)
PATCH = {
    "size": 16,
    "margin_px": 60,
    "reference_spacing": 0.07,
    "max_background": 0.4,
    "augment": True,
}
GAN = {"epochs": 4, "batch_size": 4, "width": 4, "latent_dim": 8, "snapshot_every": 2, "warmup": 2}
CLF = ClassifierParams(
    model={"name": "patch_cnn", "options": {"width": 4, "hidden": 8}}, epochs=3, batch_size=8
).model_dump()
CYC = CycleGanParams(epochs=1, batch_size=4, width=4, n_blocks=1, d_width=4).model_dump()
N_SYNTH = 10


def _profile(name: str, *, generators: bool) -> CentreProfile:
    return CentreProfile.model_validate(
        {
            "name": name,
            "source": name,
            "data": {
                "synthetic": {
                    "image_height": 64,
                    "calcification_fraction": 0.5,
                    "segments": [
                        {
                            "manufacturer": "Ma",
                            "patients": 16,
                            "prevalence": 0.5,
                            "lesion_prevalence": 0.6,
                        }
                    ],
                }
            },
            "sharing": {"generators": generators},
            "split": {"train": 0.5, "val": 0.25, "test": 0.25},
        }
    )


@pytest.fixture(scope="module")
def centres(tmp_path_factory):
    root = tmp_path_factory.mktemp("gan_centres")
    out = {}
    for name, shares in (("ta", False), ("tb", True)):
        data = materialise_centre(
            _profile(name, generators=shares), root, image_size=SIZE, data_dir=root / name
        )
        out[name] = (data, root / name)
    return out


def _context(data_dir, name, out_dir) -> Context:
    node = {"centre": name, "data-dir": str(data_dir), "output-dir": str(out_dir)}
    return Context(run_id=1, node_id=7, node_config=node, state=RecordDict(), run_config={})


def _send(fn, kind, context, arrays=None, **config):
    cfg = ConfigRecord({"image-size": list(SIZE), "data-seed": 0, "seed": 5, "subset": "all"})
    for key, value in config.items():
        if isinstance(value, dict | list) and key != "lesion-types":
            put_json(cfg, key, value)
        else:
            cfg[key] = value
    content = RecordDict({"config": cfg, **(arrays or {})})
    out = egress_mod(make_incoming(content, kind), context, fn)  # the real reply path
    assert not out.has_error()
    return out.content


def _generator(centres, tmp_path, gan="dcgan", params=GAN):
    _, data_dir = centres["tb"]
    context = _context(data_dir, "tb", tmp_path)
    return _send(
        handlers.train_generator,
        "train.generator",
        context,
        gan=gan,
        patch=PATCH,
        **{"gan-params": params, "frechet-samples": 20, "grid-columns": 4},
    )


@pytest.fixture(scope="module")
def dcgan_reply(centres, tmp_path_factory):
    out = tmp_path_factory.mktemp("out_tb")
    return _generator(centres, out), out


def test_generator_reply_holds_only_generator_weights_description_and_quality(centres, dcgan_reply):
    # Prepare
    content, out = dcgan_reply
    reference = build_generator(patch_size=16, latent_dim=8, width=4).state_dict()
    data, _ = centres["tb"]
    # Execute
    arrays = {k: v for k, v in content.items() if isinstance(v, ArrayRecord)}
    # Assert: one record per snapshot (epochs 2 and 4), each exactly the generator's state
    assert sorted(arrays) == ["gen-e00002", "gen-e00004"]
    for record in arrays.values():
        state = record.to_torch_state_dict()
        assert {k: tuple(v.shape) for k, v in state.items()} == {
            k: tuple(v.shape) for k, v in reference.items()
        }
    info, metrics = content["description"], content["metrics"]
    assert info["kind"] == "dcgan" and info["centre"] == "tb" and info["subset"] == "all"
    assert set(info["lesion-types"]) <= {"mass", "calcification", "distortion"}
    assert metrics["patch-size"] == 16 and metrics["latent-dim"] == 8 and metrics["width"] == 4
    assert metrics["n-snapshots"] == 2 and metrics["epochs"] == 4
    n_real = int(patch_frame(data, "train")["lesions"].map(lambda s: s.count('"box"')).sum())
    assert 2 <= metrics["n-training-patches"] <= n_real
    assert math.isfinite(metrics["frechet-distance"]) and metrics["frechet-distance"] >= 0
    # the sample grid was drawn inside the centre (deployment: its own output dir)
    assert (out / "plots" / "synthetic_samples_tb_dcgan_all.png").stat().st_size > 1000


@pytest.mark.parametrize("synthetic", [True, False])
def test_the_sample_grid_shows_own_patches_only_for_synthetic_data(
    centres, tmp_path, monkeypatch, synthetic
):
    # Prepare: the centre's data called real (as a CBIS-DDSM site's would be), rows recorded
    drawn: list[list[str]] = []

    def recording(rows, path, **kw):
        drawn.append([label for label, _ in rows])

    monkeypatch.setattr(handlers, "plot_sample_grid", recording)
    monkeypatch.setattr(CentreIdentity, "synthetic_data", property(lambda self: synthetic))
    # Execute
    _generator(centres, tmp_path)
    # Assert: the generator's samples always; the centre's own patches only when synthetic
    assert drawn == [(["real tb"] if synthetic else []) + ["dcgan 1", "dcgan 2"]]


def test_a_centre_holds_synthetic_data_only_when_every_profile_it_holds_is_a_phantom():
    phantom = _profile("ta", generators=False)
    real = phantom.model_copy(
        update={"data": phantom.data.model_copy(update={"synthetic": None, "format": "cbis-ddsm"})}
    )
    assert phantom.data.synthetic is not None
    assert CentreIdentity("ta", "trainer", phantom, "").synthetic_data
    assert not CentreIdentity("ta", "trainer", real, "").synthetic_data
    assert not CentreIdentity("pooled", "pooled", None, "").synthetic_data
    pooled = ((phantom, "a"), (real, "b"))
    assert not CentreIdentity("pooled", "pooled", None, "", pooled=pooled).synthetic_data
    assert CentreIdentity("pooled", "pooled", None, "", pooled=pooled[:1]).synthetic_data


def test_wgan_gp_shares_its_last_generator_only(centres, tmp_path):
    # Prepare
    params = dict(GAN, snapshot_every=None, warmup=0, n_critic=2)
    # Execute
    content = _generator(centres, tmp_path, gan="wgan_gp", params=params)
    # Assert
    assert [k for k, v in content.items() if isinstance(v, ArrayRecord)] == ["gen-e00004"]
    assert content["metrics"]["critic-steps"] == 2 * content["metrics"]["generator-steps"]


def test_centre_that_shares_no_generators_refuses(centres, tmp_path):
    # Prepare: ta's profile sets sharing.generators: false
    _, data_dir = centres["ta"]
    context = _context(data_dir, "ta", tmp_path)
    # Execute / Assert
    with pytest.raises(ConfigError, match="sharing.generators: false"):
        _send(
            handlers.train_generator,
            "train.generator",
            context,
            gan="dcgan",
            patch=PATCH,
            **{"gan-params": GAN},
        )


def _classify(centres, tmp_path, arrays=None, generators=(), fraction=1.0, clf=CLF, **config):
    _, data_dir = centres["ta"]
    context = _context(data_dir, "ta", tmp_path)
    content = _send(
        receiver.train_patch_classifier_handler,
        "train.patch_classifier",
        context,
        arrays=arrays,
        arm="x",
        fraction=fraction,
        patch=PATCH,
        classifier=clf,
        cyclegan=CYC,
        generators=list(generators),
        **{"n-synthetic": N_SYNTH},
        **config,
    )
    assert not any(isinstance(v, ArrayRecord) for v in content.values())  # metrics only
    metrics = content["metrics"]
    return metrics, {r["metric"]: r["value"] for r in decode_metric_records(metrics)}


def _sent_generator(reply) -> tuple[dict, list[dict]]:
    records = {f"g0-{k}": v for k, v in reply.items() if isinstance(v, ArrayRecord)}
    desc = GeneratorDescription(kind="dcgan", patch_size=16, latent_dim=8, width=4, centre="tb")
    return records, [{"description": desc.to_dict(), "records": sorted(records)}]


def test_local_arm_is_class_balanced_and_replies_test_metrics(centres, tmp_path):
    # Execute
    metrics, test = _classify(centres, tmp_path)
    # Assert
    assert metrics["n-added-lesion"] == 0 and metrics["real-pixels-moved"] == 0
    assert metrics["n-healthy"] + metrics["healthy-shortfall"] == metrics["n-own-lesion"] > 0
    assert 1 <= metrics["best-epoch"] <= 3
    for key in ("accuracy", "auc", "auprc"):
        assert 0.0 <= test[key] <= 1.0
    assert test["n_pos"] == test["n"] / 2  # balanced test patches


def test_same_seed_same_result_and_half_data_uses_fewer_own_patches(centres, tmp_path):
    # Execute
    full, test_a = _classify(centres, tmp_path)
    _, test_b = _classify(centres, tmp_path)
    half, _ = _classify(centres, tmp_path, fraction=0.5)
    # Assert
    assert test_a == test_b
    assert 0 < half["n-own-lesion"] < full["n-own-lesion"]


def test_the_recipes_kernel_settings_reach_the_training_loop_and_the_test_scores(
    centres, tmp_path, monkeypatch
):
    # Prepare: the recipe asks for the fast kernels; the loop and the test scoring spied on
    seen: dict[str, dict] = {}

    def spy(name):
        real = getattr(receiver, name)

        def call(*args, **kwargs):
            seen[name] = kwargs
            return real(*args, **kwargs)

        return call

    for name in ("train_patch_classifier", "predict_patch_scores"):
        monkeypatch.setattr(receiver, name, spy(name))
    fast = {**CLF, "channels_last": True, "fused_optimizer": True}
    # Execute
    _classify(centres, tmp_path, clf=fast)
    # Assert
    train = seen["train_patch_classifier"]
    assert train["channels_last"] is train["fused_optimizer"] is True
    assert seen["predict_patch_scores"]["channels_last"] is True


def test_synthetic_arm_adds_sampled_lesions_and_as_many_own_healthy(centres, tmp_path, dcgan_reply):
    # Prepare
    arrays, generators = _sent_generator(dcgan_reply[0])
    # Execute
    metrics, test = _classify(centres, tmp_path, arrays=arrays, generators=generators)
    # Assert
    assert metrics["n-added-lesion"] == N_SYNTH
    balanced = metrics["n-own-lesion"] + N_SYNTH
    assert metrics["n-healthy"] + metrics["healthy-shortfall"] == balanced
    assert metrics["healthy-shortfall"] == 0
    assert 0.0 <= test["auc"] <= 1.0


def test_harmonised_arm_translates_inside_the_receiver_and_draws_it(centres, tmp_path, dcgan_reply):
    # Prepare
    arrays, generators = _sent_generator(dcgan_reply[0])
    # Execute
    metrics, _ = _classify(
        centres, tmp_path, arrays=arrays, generators=generators, harmonise=True, draw=True
    )
    # Assert
    assert metrics["n-added-lesion"] == N_SYNTH
    assert (tmp_path / "plots" / "harmonised_samples_ta_tb_dcgan_all.png").is_file()


def test_real_patch_arm_is_refused_by_a_deployed_centre(centres, tmp_path):
    # Execute / Assert: node config 'centre' = deployment; pixels never move there
    with pytest.raises(EgressError, match="simulation-only"):
        _classify(centres, tmp_path, **{"real-from": "tb"})


def test_generator_weights_round_trip_into_a_sampler(dcgan_reply):
    # Prepare
    content, _ = dcgan_reply
    state = content["gen-e00004"].to_torch_state_dict()
    gen = build_generator(patch_size=16, latent_dim=8, width=4)
    # Execute
    gen.load_state_dict(state)
    with torch.no_grad():
        out = gen.eval()(torch.randn(3, 8))
    # Assert
    assert out.shape == (3, 1, 16, 16) and float(out.abs().max()) <= 1.0
