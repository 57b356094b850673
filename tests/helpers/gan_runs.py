"""A tiny share_gans scenario and an in-process run of its runner (no Ray)."""

from __future__ import annotations

from pathlib import Path

import yaml

from fedmammo.config import load_scenario
from fedmammo.federation.runspec import RunSpec
from fedmammo.methods.share_gans.server import run as run_share_gans
from helpers.flower_messages import run_strategy_in_process

ROOT = Path(__file__).resolve().parents[2]
ARMS = [
    "A",
    "A+real_B",
    "A+synth_B_dcgan",
    "A+synth_B_wgan_gp",
    "A+synth_C_dcgan",
    "A+synth_B_dcgan+synth_C_dcgan",
    "A+harmonised_B_dcgan",
    "A+untrained_dcgan",
    "A+own_lesions",
]
METRICS = ("accuracy", "f1", "auc", "auprc")


def tiny_gan_scenario(
    tmp: Path, *, centres: dict | None = None, scenario: dict | None = None, **params
) -> Path:
    """A 3-centre share_gans scenario of 64-px phantoms; ``params`` override the recipe,
    ``centres`` adds per-centre overrides by name, ``scenario`` adds top-level keys."""
    small = {"data.synthetic.image_height": 64}
    overrides = {
        "params.arms": ARMS,
        "params.subsets": ["all"],
        "params.fractions": [1.0, 0.5],
        "params.n_synthetic": 8,
        "params.patches.size": 16,
        "params.frechet_samples": 16,
        "params.gans.dcgan": {
            "epochs": 2,
            "width": 4,
            "batch_size": 4,
            "snapshot_every": 1,
            "warmup": 1,
        },
        "params.gans.wgan_gp": {
            "epochs": 2,
            "width": 4,
            "batch_size": 4,
            "n_critic": 2,
            "snapshot_every": None,
            "warmup": 0,
            "lr": None,  # WGAN-GP's own default (1e-4), not the recipe's
        },
        "params.classifier.epochs": 2,
        "params.classifier.model.options": {"width": 4, "hidden": 8},
        "params.classifier.extra_models": {},  # the CNN only (the recipe's Swin is 64 px)
        "params.cyclegan": {"epochs": 1, "batch_size": 4, "width": 4, "n_blocks": 1, "d_width": 4},
    }
    overrides.update({f"params.{k}": v for k, v in params.items()})
    data = {
        "name": "gans_tiny",
        "centres": [
            {
                "profile": str(ROOT / "centres" / "inbreast_gan.yaml"),
                "name": "A",
                "role": "receiver",
                "overrides": {
                    **small,
                    # 7-8 cancer patients among 15 in test: CIs (metrics.MIN_UNITS_PER_CLASS)
                    "data.synthetic.segments.0.patients": 40,
                    "data.synthetic.segments.0.prevalence": 0.5,
                    "split": {"train": 0.5, "val": 0.125, "test": 0.375},
                },
            },
            {
                "profile": str(ROOT / "centres" / "bcdr.yaml"),
                "name": "B",
                "role": "sharer",
                "overrides": {
                    **small,
                    "sharing.real_patches_in_simulation": True,
                    "data.synthetic.segments.0.patients": 8,
                    "data.synthetic.segments.1.patients": 8,
                },
            },
            {
                "profile": str(ROOT / "centres" / "optimam.yaml"),
                "name": "C",
                "role": "sharer",
                "overrides": {**small, "data.synthetic.segments.0.patients": 12},
            },
        ],
        "strategy": str(ROOT / "strategies" / "share_gans.yaml"),
        "strategy_overrides": overrides,
        "seeds": [0, 1],
        "image_size": [64, 48],
        "data_dir": str(tmp / "data"),
    }
    for entry in data["centres"]:
        entry["overrides"].update((centres or {}).get(entry["name"], {}))
    data.update(scenario or {})
    path = tmp / f"gans_tiny_{len(list(tmp.glob('*.yaml')))}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def run_spec_in_process(spec: RunSpec, scenario, *, resume: bool = False, strict: bool = False):
    """Run share_gans for ``spec`` / ``scenario`` through an :class:`InProcessGrid`
    (``strict``: a handler's exception fails the test instead of becoming an error reply)."""
    return run_strategy_in_process(spec, scenario, run_share_gans, resume=resume, strict=strict)


def run_in_process(
    scenario_file: Path, run_dir: Path, *, resume: bool = False, strict: bool = False
):
    """Run the share_gans runner through an :class:`InProcessGrid`; (orchestrator, grid)."""
    spec = RunSpec(scenario_file=str(scenario_file), run_dir=str(run_dir))
    return run_spec_in_process(spec, load_scenario(scenario_file), resume=resume, strict=strict)
