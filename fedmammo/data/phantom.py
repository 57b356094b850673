"""The synthetic multi-vendor mammography phantom: a virtual centre written as real DICOM files.

``generate_centre(profile, out_dir)`` writes, under ``out_dir``:

- ``dicom/<patient_id>/<sop_uid>.dcm``: one exam (R-CC, L-CC, R-MLO, L-MLO) per patient,
  Digital Mammography X-Ray Image Storage - For Presentation, in the segment's vendor style;
  L images have the chest wall on the left, R images on the right, as they are hung;
- ``lesions.json``: per image, the true density and each lesion's box, outline (polygon),
  centre and, for calcification clusters, the speck positions (stored-image pixels);
- ``contact_sheet.png``: a few exams to look at;
- ``manifest.csv``: the canonical manifest, written last (its presence means complete).

CLI: ``python -m fedmammo.data.phantom PROFILE.yaml --out DIR [--patients N] [--seed S]
[--height H]``. The same profile and seed give byte-identical files.

ACR assessments are a reader's (:func:`reader_acr`): the category is drawn given the breast's
finding, so that P(malignant | category) lies in the BI-RADS ranges; ``labels.reader_noise``
sets the reader's disagreement (and moves density labels one class).

Prevalence is patient-level: a cancer patient has one malignant lesion in one breast, seen in
its CC and MLO images, so about ``prevalence / 2`` of a segment's images are malignant.
Counts are rounded, not sampled: a segment of n patients has round(prevalence * n) cancers
and round(lesion_prevalence * (n - cancers)) patients with a benign lesion.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import zlib
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fedmammo.config import CentreProfile, SegmentSpec, SyntheticSpec, load_profile
from fedmammo.data.manifest import (
    LABEL_TASKS,
    encode_lesions,
    make_segment,
    normalise_manifest,
    write_manifest,
)
from fedmammo.data.phantom_anatomy import image_shape, render_breast, sample_breast
from fedmammo.data.phantom_dicom import DicomEncoder, ImageMeta, uid_from_rng
from fedmammo.data.phantom_lesions import LesionSpec, draw_lesion, mirror_annotation, sample_lesion
from fedmammo.data.phantom_report import save_contact_sheet, summary_table
from fedmammo.data.phantom_styles import AcquisitionStyle, acquire, get_style
from fedmammo.errors import ConfigError, FedmammoError

__all__ = [
    "acr_probabilities",
    "generate_centre",
    "main",
    "reader_acr",
    "resolve_styles",
    "segment_patient_counts",
]

log = logging.getLogger(__name__)

#: Exam order (hanging protocol): laterality, view.
EXAM: tuple[tuple[str, str], ...] = (("R", "CC"), ("L", "CC"), ("R", "MLO"), ("L", "MLO"))
_TASK_COLUMN = {"malignancy": "malignant", "acr": "acr", "density": "density", "view": "view"}
_NORMAL, _BENIGN, _CANCER = 0, 1, 2
_MIN_HEIGHT, _MAX_HEIGHT = 32, 4096


def _round(x: float) -> int:
    return int(math.floor(x + 0.5))


def _synthetic(profile: CentreProfile) -> SyntheticSpec:
    if profile.data.synthetic is None:
        raise ConfigError(
            f"centre {profile.name!r}: key 'data.synthetic' is missing; the phantom only "
            "generates synthetic centres (fix: add a data.synthetic section to the profile)"
        )
    return profile.data.synthetic


def resolve_styles(profile: CentreProfile) -> list[AcquisitionStyle]:
    """The acquisition style of each segment (``style``, default ``manufacturer.lower()``)."""
    styles = []
    for i, seg in enumerate(_synthetic(profile).segments):
        where = f"centre {profile.name!r}: key 'data.synthetic.segments.{i}.style'"
        styles.append(get_style(seg.style or seg.manufacturer.lower(), where=where))
    return styles


def segment_patient_counts(segments: list[SegmentSpec], total: int | None = None) -> list[int]:
    """Patients per segment: the profile's, or ``total`` split in proportion (largest remainder)."""
    counts = [s.patients for s in segments]
    if total is None:
        return counts
    if total < 1:
        raise ConfigError(f"patients must be >= 1, got {total}")
    exact = [total * c / sum(counts) for c in counts]
    out = [int(math.floor(e)) for e in exact]
    for i in sorted(range(len(exact)), key=lambda i: (out[i] - exact[i], i))[: total - sum(out)]:
        out[i] += 1
    return out


def _plan_segment(n: int, seg: SegmentSpec, rng: np.random.Generator) -> np.ndarray:
    """Status of each patient: cancer, benign lesion or normal (rounded counts, shuffled)."""
    n_cancer = min(n, _round(seg.prevalence * n))
    n_benign = min(n - n_cancer, _round(seg.lesion_prevalence * (n - n_cancer)))
    status = np.full(n, _NORMAL, dtype=np.int8)
    status[:n_cancer] = _CANCER
    status[n_cancer : n_cancer + n_benign] = _BENIGN
    return rng.permutation(status)


def _reader(rng: np.random.Generator, value: int, noise: float, lo: int, hi: int) -> int:
    """A reader's label: ``value`` moved one class up or down with probability ``noise``."""
    if rng.random() < noise:
        value += int(rng.choice((-1, 1)))
    return int(min(max(value, lo), hi))


# The reader's ACR assessment (categories 1..6) of a breast given its finding (rows: normal,
# benign lesion, cancer), as a careful reader (reader_noise 0) and as a confused one (1); a
# profile's reader_noise mixes the two. Disagreement: cancers read 4 or 5 (a few missed, read
# 1-2; ACR 6 = biopsy-proven), benign lesions 2, 3 or 4 (a few overlooked), normal breasts
# mostly 1 with some 2, 3 and recalls at 4. No cancer is read 3 and no benign finding 5: the
# shipped centres range from screening (prevalence 0.025) to enriched (0.87) populations,
# where any such mass pushes P(malignant | 3) over 2 % or P(malignant | 5) under 95 %.
# With it, P(malignant | category) stays in the BI-RADS ranges (1-2: ~0 %, 3: < 2 %,
# 4: 2-95 %, 5-6: > 95 %) at every shipped profile (tests/data/test_phantom_acr.py).
_ACR_CAREFUL = np.array(
    [
        [0.86, 0.08, 0.03, 0.03, 0.0, 0.0],
        [0.0, 0.55, 0.30, 0.15, 0.0, 0.0],
        [0.005, 0.0, 0.0, 0.395, 0.40, 0.20],
    ]
)
_ACR_CONFUSED = np.array(
    [
        [0.70, 0.16, 0.07, 0.07, 0.0, 0.0],
        [0.10, 0.35, 0.30, 0.25, 0.0, 0.0],
        [0.02, 0.01, 0.0, 0.62, 0.25, 0.10],
    ]
)


def acr_probabilities(noise: float) -> np.ndarray:
    """P(ACR category 1..6 | finding): a (3, 6) array, rows normal, benign lesion, cancer."""
    if not 0.0 <= noise <= 1.0:
        raise ConfigError(f"reader_noise must be in [0, 1], got {noise}")
    return (1.0 - noise) * _ACR_CAREFUL + noise * _ACR_CONFUSED


def reader_acr(rng: np.random.Generator, findings: Any, noise: float) -> np.ndarray:
    """A reader's ACR category (1..6) for each breast finding (0 normal, 1 benign, 2 cancer).

    One uniform draw per breast from ``rng`` (inverse CDF of :func:`acr_probabilities`), so
    the same generator state gives the same categories.
    """
    f = np.asarray(findings, dtype=np.int64).reshape(-1)
    cdf = np.cumsum(acr_probabilities(noise), axis=1)[f]
    u = rng.random(len(f))
    return np.minimum((u[:, None] >= cdf).sum(axis=1), 5) + 1


@dataclass(frozen=True)
class _Context:
    profile: CentreProfile
    spec: SyntheticSpec
    out: Path
    seed: int
    shape: tuple[int, int]
    encoder: DicomEncoder

    def rng(self, *key: int) -> np.random.SeedSequence:
        crc = zlib.crc32(self.profile.name.encode())
        return np.random.SeedSequence([self.seed & (2**64 - 1), crc, *key])


def _age(rng: np.random.Generator, spec: SyntheticSpec) -> int:
    a = spec.age
    lo, hi = min(a.min, a.max), max(a.min, a.max)
    for _ in range(20):
        x = rng.normal(a.mean, a.sd)
        if lo <= x <= hi:
            return int(round(x))
    return int(round(min(max(a.mean, lo), hi)))


def _patient(
    ctx: _Context, seg_idx: int, k: int, status: int, style: AcquisitionStyle
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[np.ndarray]]:
    """Generate one patient's exam: manifest rows, lesion records and stored pixel arrays."""
    seg = ctx.spec.segments[seg_idx]
    source = seg.source or ctx.profile.source
    streams = ctx.rng(seg_idx, k).spawn(4)  # the first three streams as before; 4th: reader
    rng_meta, rng_anat, rng_uid, rng_reader = (np.random.default_rng(s) for s in streams)
    noise = ctx.profile.labels.reader_noise
    patient_id = f"{ctx.profile.name}-{seg_idx}-{k:05d}"
    age = _age(rng_meta, ctx.spec)
    density_true = int(rng_meta.choice(4, p=np.asarray(ctx.spec.density) / sum(ctx.spec.density)))
    density_true += 1
    density_label = _reader(rng_meta, density_true, noise, 1, 4)
    study_date = pd.Timestamp("2019-01-01") + pd.Timedelta(days=int(rng_meta.integers(730)))
    lesion: LesionSpec | None = None
    lesion_side = str(rng_meta.choice(("L", "R")))
    if status != _NORMAL:
        lesion = sample_lesion(
            rng_meta,
            malignant=status == _CANCER,
            calcification_fraction=ctx.spec.calcification_fraction,
        )
    findings = [status if side == lesion_side else _NORMAL for side in "LR"]
    acr = dict(zip("LR", map(int, reader_acr(rng_reader, findings, noise)), strict=True))
    beta = float(rng_meta.uniform(2.7, 3.3))
    study_uid, series_uid = uid_from_rng(rng_uid), uid_from_rng(rng_uid)

    h, w = ctx.shape
    spacing = style.spacing_for(h)
    geoms = {side: sample_breast(rng_anat, ctx.shape) for side in ("R", "L")}
    rows, records, pixels = [], [], []
    for n, (side, view) in enumerate(EXAM, start=1):
        geom = geoms[side][view]
        dens, thick, mask = render_breast(
            geom, ctx.shape, density=density_true, spacing_mm=spacing, rng=rng_anat, beta=beta
        )
        anns = []
        if lesion is not None and side == lesion_side:
            anns.append(
                draw_lesion(
                    dens,
                    thick,
                    geom,
                    lesion,
                    spacing_mm=spacing,
                    contrast=ctx.spec.lesion_contrast,
                    rng=rng_anat,
                )
            )
        stored = acquire(
            style, dens, mask, rng_anat, thickness=thick, view_text=side + view, mirror=side == "R"
        )
        if side == "R":  # chest wall on the right, as R images are hung
            stored = np.ascontiguousarray(stored[:, ::-1])
            anns = [mirror_annotation(a, w) for a in anns]
        sop_uid = uid_from_rng(rng_uid)
        path = ctx.out / "dicom" / patient_id / f"{sop_uid}.dcm"
        meta = ImageMeta(
            patient_id=patient_id,
            study_uid=study_uid,
            series_uid=series_uid,
            sop_uid=sop_uid,
            laterality=side,
            view=view,
            age=age,
            manufacturer=seg.manufacturer,
            study_date=study_date.strftime("%Y%m%d"),
            instance_number=n,
            pixel_spacing=spacing,
            institution=ctx.profile.name,
        )
        ctx.encoder.write(path, stored, style, meta)
        malignant = int(any(a["malignant"] for a in anns))
        rows.append(
            {
                "image_id": sop_uid,
                "patient_id": patient_id,
                "study_id": study_uid,
                "centre": ctx.profile.name,
                "source": source,
                "manufacturer": seg.manufacturer,
                "segment": make_segment(source, seg.manufacturer),
                "laterality": side,
                "view": view,
                "path": str(path),
                "malignant": malignant,
                "acr": acr[side],
                "density": density_label,
                "age": float(age),
                "pixel_spacing": spacing,
                "lesions": encode_lesions(
                    {k2: a[k2] for k2 in ("kind", "shape", "malignant", "box")} for a in anns
                ),
            }
        )
        records.append(
            {
                "image_id": sop_uid,
                "patient_id": patient_id,
                "segment": rows[-1]["segment"],
                "style": style.name,
                "laterality": side,
                "view": view,
                "density_true": density_true,
                "lesions": anns,
            }
        )
        pixels.append(stored)
    return rows, records, pixels


def _apply_label_policy(df: pd.DataFrame, profile: CentreProfile, rng: np.random.Generator) -> None:
    """Drop each task's labels at the profile's missing fraction (NA) and fill u_<task>."""
    n = len(df)
    for task in LABEL_TASKS:
        col = _TASK_COLUMN[task]
        n_drop = min(n, _round(profile.labels.missing.get(task, 0.0) * n))
        drop = np.zeros(n, dtype=bool)
        drop[rng.permutation(n)[:n_drop]] = True
        df[col] = df[col].astype("object").where(~drop, pd.NA)
        u = np.full(n, profile.labels.uncertainty.get(task, 0.0), dtype=np.float64)
        df[f"u_{task}"] = pd.array(np.where(drop, np.nan, u), dtype="Float32")  # NaN -> NA


def _sheet_picks(plans: list[np.ndarray]) -> set[tuple[int, int]]:
    """Patients shown on the contact sheet: a cancer (else the first) per segment, up to 4."""
    picks: list[tuple[int, int]] = []
    for s, plan in enumerate(plans[:4]):
        if plan.size:
            cancer = np.flatnonzero(plan == _CANCER)
            picks.append((s, int(cancer[0]) if cancer.size else 0))
    for s, plan in enumerate(plans):
        for k in np.flatnonzero(plan != _CANCER)[:2]:
            if len(picks) < 3 and (s, int(k)) not in picks:
                picks.append((s, int(k)))
    return set(picks)


def generate_centre(
    profile: CentreProfile,
    out_dir: str | Path,
    *,
    patients: int | None = None,
    seed: int = 0,
    image_height: int | None = None,
    progress: bool = False,
) -> pd.DataFrame:
    """Generate a synthetic centre as DICOM files plus manifest, lesions and contact sheet.

    Returns the manifest (also written to ``out_dir/manifest.csv``; path absolute, split NA).
    ``patients`` overrides the profile's total (split across segments in proportion),
    ``image_height`` the profile's ``data.synthetic.image_height``. The same profile and
    seed give byte-identical files.
    """
    spec = _synthetic(profile)
    styles = resolve_styles(profile)
    height = int(image_height if image_height is not None else spec.image_height)
    if not _MIN_HEIGHT <= height <= _MAX_HEIGHT:
        raise ConfigError(
            f"centre {profile.name!r}: image height {height} is out of range; "
            f"allowed {_MIN_HEIGHT}..{_MAX_HEIGHT} pixels"
        )
    if patients is not None and patients < 1:
        raise ConfigError(f"centre {profile.name!r}: patients must be >= 1, got {patients}")
    counts = segment_patient_counts(spec.segments, patients)
    out = Path(out_dir).expanduser().resolve()
    (out / "dicom").mkdir(parents=True, exist_ok=True)
    ctx = _Context(
        profile=profile,
        spec=spec,
        out=out,
        seed=int(seed),
        shape=image_shape(height),
        encoder=DicomEncoder(),
    )
    plans = [
        _plan_segment(n, seg, np.random.default_rng(ctx.rng(i, 2**31)))
        for i, (seg, n) in enumerate(zip(spec.segments, counts, strict=True))
    ]
    picks = _sheet_picks(plans)
    rows: list[dict[str, Any]] = []
    records: list[dict[str, Any]] = []
    sheet: list[tuple[list[dict[str, Any]], list[dict[str, Any]], list[np.ndarray], Any]] = []
    bar = _progress(progress)
    with bar if bar is not None else nullcontext():
        task = bar.add_task(f"phantom {profile.name}", total=sum(counts)) if bar else None
        for i, plan in enumerate(plans):
            for k, status in enumerate(plan):
                r, rec, pix = _patient(ctx, i, k, int(status), styles[i])
                rows += r
                records += rec
                if (i, k) in picks:
                    sheet.append((r, rec, pix, styles[i]))
                if bar is not None:
                    bar.advance(task)
    df = pd.DataFrame(rows)
    if df.empty:
        raise ConfigError(f"centre {profile.name!r}: no patients to generate")
    _apply_label_policy(df, profile, np.random.default_rng(ctx.rng(2**31, 1)))
    df["split"] = pd.NA
    payload = {
        "centre": profile.name,
        "seed": int(seed),
        "shape": list(ctx.shape),
        "images": records,
    }
    (out / "lesions.json").write_text(json.dumps(payload, separators=(",", ":")))
    save_contact_sheet(sheet, out / "contact_sheet.png", title=f"{profile.name} (seed {seed})")
    manifest = normalise_manifest(df, where=f"phantom centre {profile.name}")
    write_manifest(manifest, out / "manifest.csv")
    log.info(
        "phantom centre %s: %d images of %d patients in %s", profile.name, len(df), sum(counts), out
    )
    return manifest


def _progress(enabled: bool) -> Any:
    if not enabled:
        return None
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    return Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        transient=True,
    )


def main(argv: list[str] | None = None) -> int:
    """CLI: generate a phantom centre from a profile and print a summary table."""
    parser = argparse.ArgumentParser(
        prog="python -m fedmammo.data.phantom",
        description="Generate a synthetic mammography centre (DICOM + manifest) from a profile.",
    )
    parser.add_argument("profile", help="centre profile YAML with a data.synthetic section")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--patients", type=int, default=None, help="total patients (override)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--height", type=int, default=None, help="image height in pixels")
    args = parser.parse_args(argv)
    try:
        profile = load_profile(args.profile)
        manifest = generate_centre(
            profile,
            args.out,
            patients=args.patients,
            seed=args.seed,
            image_height=args.height,
            progress=sys.stderr.isatty(),
        )
    except FedmammoError as exc:
        print("error: " + " | ".join(str(exc).splitlines()), file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"error: cannot write {args.out}: {exc}", file=sys.stderr)
        return 1
    from rich.console import Console

    Console().print(summary_table(manifest, title=f"phantom centre {profile.name}"))
    print(
        f"wrote {Path(args.out).resolve()}/ (dicom/, manifest.csv, lesions.json, contact_sheet.png)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
