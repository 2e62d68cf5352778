"""Fidelity and quality of a synthetic cohort against the real sites (the paper's Tables 2 and 3), on 2D slices.

Input: per site an array of slices ``(N, 5, H, W)`` in the prepared-data layout (T1, T1C, T2, FLAIR z-scored, mask),
for the real sites and for the synthetic cohort of each site (keyed by the site it imitates). Per sequence:

- **FID, KID, precision/recall** of every synthetic site against every real site (the cross-site matrix; the paper's
  diagonal — a site's synthetic cases vs its own real cases — should be the lowest of each row), on up to
  ``samples`` slices per side drawn without replacement (seeded). Features come from a named extractor
  (:mod:`catphish.evaluation.features`) and are standardised with the mean and standard deviation of all real slices
  of that sequence, so that no feature dominates by its unit.
- **Real-vs-real baselines** computed the same way: every pair of real sites, and split halves of each real site. FID
  is biased upwards for small samples, so a split-half FID (N/2 vs N/2) sits above a same-distribution FID at N;
  KID is unbiased and compares fairly across sample sizes.
- **No-reference quality** (BRISQUE, PIQE) of every sampled slice, real and synthetic, summarised per site.

Every slice goes through :func:`catphish.evaluation.quality.mri_slice_protocol` first (brain bounding box, min–max).
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from catphish.config import SEQUENCES
from catphish.errors import CatphishError
from catphish.evaluation import fidelity, quality
from catphish.evaluation.features import SliceFeatureExtractor, describe, feature_extractor, resize_slice
from catphish.evaluation.tables import Table, Value
from catphish.runtime import track

if TYPE_CHECKING:
    from catphish.config import StudyConfig
    from catphish.data.prepared import PreparedSubject

SYNTHETIC_PREFIX = "synthetic-"


@dataclass(frozen=True)
class FidelitySettings:
    samples: int = 300
    """Slices drawn per site and source (all when fewer)."""
    kid_subsets: int = 100
    kid_subset_size: int = 100
    """Capped at half the smaller sample, so that subsets differ and their spread means something."""
    neighbours: int = 3
    """k of the k-NN manifolds of precision/recall."""
    seed: int = 0
    quality: bool = True
    """Also compute BRISQUE and PIQE."""


@dataclass
class FidelityEvaluation:
    tables: list[Table]
    figures: dict[str, Any]
    notes: dict[str, Any]

    def table(self, name: str) -> Table:
        return next(t for t in self.tables if t.name == name)


def site_of_synthetic(name: str) -> str:
    """``synthetic-TCGA`` → ``TCGA`` (the real site a synthetic cohort imitates)."""
    return name[len(SYNTHETIC_PREFIX):] if name.startswith(SYNTHETIC_PREFIX) else name


def sample_slices(slices: np.ndarray, samples: int, seed: int, label: str) -> np.ndarray:
    """Up to ``samples`` slices without replacement; the draw depends only on ``seed`` and ``label``."""
    if len(slices) <= samples:
        return slices
    rng = np.random.default_rng([seed, zlib.crc32(label.encode())])
    return slices[np.sort(rng.choice(len(slices), samples, replace=False))]


def protocol_slices(slices: np.ndarray, channel: int, size: tuple[int, int] | None) -> np.ndarray:
    """One sequence of every slice through the MRI protocol, resized to the extractor's input size (an extractor
    without a fixed size gets whole slices, min–max scaled, since brain boxes differ in size)."""
    if size is None:
        return np.stack([quality.min_max(s[channel]) for s in slices])
    return np.stack([resize_slice(quality.mri_slice_protocol(s, channel), size) for s in slices])


def evaluate_synthetic_cohort(real: Mapping[str, np.ndarray], synthetic: Mapping[str, np.ndarray],
                              extractor: SliceFeatureExtractor | None = None,
                              settings: FidelitySettings | None = None,
                              brisque_model: quality.BrisqueModel | None = None) -> FidelityEvaluation:
    """Every fidelity and quality table for ``synthetic`` (site → slices) against ``real`` (site → slices)."""
    settings = settings or FidelitySettings()
    extractor = extractor or feature_extractor("handcrafted")
    real = {site: _check_slices(slices, f"real site {site}") for site, slices in sorted(real.items())}
    synthetic = {site_of_synthetic(site): _check_slices(slices, f"synthetic site {site}")
                 for site, slices in sorted(synthetic.items())}
    if not real or not synthetic:
        raise CatphishError("fidelity needs at least one real and one synthetic site")
    real = {site: sample_slices(s, settings.samples, settings.seed, f"real/{site}") for site, s in real.items()}
    synthetic = {site: sample_slices(s, settings.samples, settings.seed, f"synthetic/{site}")
                 for site, s in synthetic.items()}
    pair_rows: list[dict[str, Value]] = []
    baseline_rows: list[dict[str, Value]] = []
    matrices: dict[str, dict[str, Any]] = {}
    for channel, sequence in enumerate(track(SEQUENCES, "fidelity per sequence")):
        real_features, synthetic_features = _standardised_features(real, synthetic, channel, extractor)
        rows = [_pair_row(sequence, syn_site, real_site, synthetic_features[syn_site], real_features[real_site],
                          settings) for syn_site in synthetic_features for real_site in real_features]
        pair_rows.extend(rows)
        matrices[sequence] = _matrices(rows, list(synthetic_features), list(real_features))
        baseline_rows.extend(_baselines(sequence, real_features, settings))
    notes = _notes(extractor, settings, brisque_model)
    tables = [
        Table("fidelity_pairs", "FID, KID and precision/recall of each synthetic site against each real site, per "
              "sequence (rows with same_site = yes are the paper's Table 2 diagonal).", pair_rows, notes),
        Table("fid_matrix", "Cross-site FID per sequence: rows = synthetic site, columns = real site.",
              _wide_matrix(matrices, "fid"), notes),
        Table("fidelity_summary", "Per sequence: mean FID/KID on the diagonal (synthetic vs its own site) and off it, "
              "and how many synthetic sites are closest to their own site.", _summary(pair_rows), notes),
        Table("real_baselines", "The same distances between real data: split halves of each site and every pair of "
              "sites; the scale against which synthetic-vs-real values are read.", baseline_rows, notes),
    ]
    if settings.quality:
        tables.append(Table("quality", "No-reference quality per sequence, real vs synthetic, per site: BRISQUE and "
                            "PIQE (lower is better), mean and standard deviation over slices.",
                            _quality_rows(real, synthetic, brisque_model), notes))
    figures = {"notes": notes, "fid_matrix": {s: m["fid"] for s, m in matrices.items()},
               "kid_matrix": {s: m["kid"] for s, m in matrices.items()}}
    return FidelityEvaluation(tables=tables, figures=figures, notes=notes)


def _check_slices(slices: np.ndarray, what: str) -> np.ndarray:
    slices = np.asarray(slices)
    if slices.ndim != 4 or slices.shape[1] < len(SEQUENCES):
        raise CatphishError(f"{what}: slices must have shape (N, 5, H, W), got {slices.shape}")
    if len(slices) < 4:
        raise CatphishError(f"{what}: needs at least 4 slices for fidelity statistics, got {len(slices)}")
    if not np.isfinite(slices).all():
        raise CatphishError(f"{what}: slices contain NaN or infinite values")
    return slices


def _standardised_features(real: dict[str, np.ndarray], synthetic: dict[str, np.ndarray], channel: int,
                           extractor: SliceFeatureExtractor) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    def extract(slices: np.ndarray) -> np.ndarray:
        return extractor(protocol_slices(slices, channel, extractor.input_size).astype(np.float32))

    real_features = {site: extract(s) for site, s in real.items()}
    synthetic_features = {site: extract(s) for site, s in synthetic.items()}
    pooled = np.concatenate(list(real_features.values()))
    mean, std = pooled.mean(0), pooled.std(0)
    std = np.where(std > 1e-12, std, 1.0)
    return ({site: (f - mean) / std for site, f in real_features.items()},
            {site: (f - mean) / std for site, f in synthetic_features.items()})


def _kid(generated: np.ndarray, reference: np.ndarray, settings: FidelitySettings) -> fidelity.KidResult:
    size = min(settings.kid_subset_size, max(2, min(len(generated), len(reference)) // 2))
    return fidelity.kernel_inception_distance(generated, reference, settings.kid_subsets, size, settings.seed)


def _pair_row(sequence: str, syn_site: str, real_site: str, generated: np.ndarray, reference: np.ndarray,
              settings: FidelitySettings) -> dict[str, Value]:
    kid = _kid(generated, reference, settings)
    pr = fidelity.precision_recall(generated, reference, settings.neighbours)
    return {"sequence": sequence, "synthetic_site": syn_site, "real_site": real_site,
            "same_site": "yes" if syn_site == real_site else "no", "n_synthetic": len(generated),
            "n_real": len(reference), "fid": fidelity.frechet_distance(generated, reference), "kid": kid.mean,
            "kid_std": kid.std, "precision": pr.precision, "recall": pr.recall}


def _matrices(rows: list[dict[str, Value]], synthetic_sites: list[str], real_sites: list[str]) -> dict[str, Any]:
    lookup = {(r["synthetic_site"], r["real_site"]): r for r in rows}
    return {metric: {"synthetic_sites": synthetic_sites, "real_sites": real_sites,
                     "values": [[lookup[(s, r)][metric] for r in real_sites] for s in synthetic_sites]}
            for metric in ("fid", "kid")}


def _wide_matrix(matrices: dict[str, dict[str, Any]], metric: str) -> list[dict[str, Value]]:
    rows: list[dict[str, Value]] = []
    for sequence, matrix in matrices.items():
        data = matrix[metric]
        for syn_site, values in zip(data["synthetic_sites"], data["values"], strict=True):
            rows.append({"sequence": sequence, "synthetic_site": syn_site,
                         **{f"real_{site}": v for site, v in zip(data["real_sites"], values, strict=True)}})
    return rows


def _summary(rows: list[dict[str, Value]]) -> list[dict[str, Value]]:
    summary: list[dict[str, Value]] = []
    for sequence in dict.fromkeys(str(r["sequence"]) for r in rows):
        chosen = [r for r in rows if r["sequence"] == sequence]
        diagonal = [r for r in chosen if r["same_site"] == "yes"]
        off = [r for r in chosen if r["same_site"] == "no"]
        rows_with_diagonal = [r["synthetic_site"] for r in diagonal]
        lowest = sum(1 for site in rows_with_diagonal
                     if min((r for r in chosen if r["synthetic_site"] == site), key=lambda r: float(r["fid"]))
                     ["same_site"] == "yes")
        summary.append({"sequence": sequence, "n_diagonal": len(diagonal), "n_off_diagonal": len(off),
                        "fid_diagonal_mean": _mean(diagonal, "fid"), "fid_off_diagonal_mean": _mean(off, "fid"),
                        "kid_diagonal_mean": _mean(diagonal, "kid"), "kid_off_diagonal_mean": _mean(off, "kid"),
                        "rows_where_diagonal_lowest": lowest, "rows_with_diagonal": len(rows_with_diagonal)})
    return summary


def _mean(rows: list[dict[str, Value]], key: str) -> float:
    return float(np.mean([float(r[key]) for r in rows])) if rows else float("nan")  # type: ignore[arg-type]


def _baselines(sequence: str, features: dict[str, np.ndarray], settings: FidelitySettings) -> list[dict[str, Value]]:
    rows: list[dict[str, Value]] = []
    sites = list(features)
    for site in sites:
        values = features[site]
        if len(values) < 8:
            continue
        order = np.random.default_rng([settings.seed, zlib.crc32(f"split/{site}".encode())]).permutation(len(values))
        half = len(values) // 2
        rows.append(_baseline_row(sequence, site, site, "split-half", values[order[:half]],
                                  values[order[half:2 * half]], settings))
    for i, site_a in enumerate(sites):
        for site_b in sites[i + 1:]:
            rows.append(_baseline_row(sequence, site_a, site_b, "between-sites", features[site_a], features[site_b],
                                      settings))
    return rows


def _baseline_row(sequence: str, site_a: str, site_b: str, kind: str, a: np.ndarray, b: np.ndarray,
                  settings: FidelitySettings) -> dict[str, Value]:
    kid = _kid(a, b, settings)
    return {"sequence": sequence, "kind": kind, "site_a": site_a, "site_b": site_b, "n_a": len(a), "n_b": len(b),
            "fid": fidelity.frechet_distance(a, b), "kid": kid.mean, "kid_std": kid.std}


def _quality_rows(real: dict[str, np.ndarray], synthetic: dict[str, np.ndarray],
                  model: quality.BrisqueModel | None) -> list[dict[str, Value]]:
    model = model or quality.default_brisque_model()
    rows: list[dict[str, Value]] = []
    groups = [("real", site, s) for site, s in real.items()] + [("synthetic", site, s) for site, s in synthetic.items()]
    for source, site, slices in track(groups, "BRISQUE and PIQE"):
        for channel, sequence in enumerate(SEQUENCES):
            images = [quality.mri_slice_protocol(s, channel) for s in slices]
            brisque = np.array([quality.brisque(im, model) if min(im.shape) >= 8 else np.nan for im in images])
            piqe = np.array([quality.piqe(im) for im in images])
            rows.append({"sequence": sequence, "source": source, "site": site, "n": len(images),
                         "brisque_mean": _nanmean(brisque), "brisque_std": _nanstd(brisque),
                         "piqe_mean": float(piqe.mean()), "piqe_std": float(piqe.std())})
    return rows


def _nanmean(values: np.ndarray) -> float:
    return float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")


def _nanstd(values: np.ndarray) -> float:
    return float(np.nanstd(values)) if np.isfinite(values).any() else float("nan")


def _notes(extractor: SliceFeatureExtractor, settings: FidelitySettings,
           brisque_model: quality.BrisqueModel | None) -> dict[str, Any]:
    notes: dict[str, Any] = {
        "feature_extractor": describe(extractor),
        "not_inception": "FID/KID here are computed on the named features, not Inception-v3: compare synthetic-vs-real "
                         "with the real-vs-real baselines, not with published FID values",
        "standardisation": "features z-scored with the mean and std of all sampled real slices of the sequence",
        "slice_protocol": "crop to the brain bounding box (|z| > 0.1 in any sequence), min-max scale to [0, 1]"
                          + (f", resize to {extractor.input_size[0]}x{extractor.input_size[1]} for features"
                             if extractor.input_size else ""),
        "samples_per_site": settings.samples,
        "kid": f"unbiased MMD^2, cubic polynomial kernel (x.y/D + 1)^3, mean and std over {settings.kid_subsets} "
               f"random subsets of min({settings.kid_subset_size}, N/2) slices per side",
        "precision_recall": f"k-NN manifolds (Kynkäänniemi et al. 2019), k = {settings.neighbours}",
        "seed": settings.seed,
    }
    if settings.quality:
        model = brisque_model or quality.default_brisque_model()
        notes["brisque_model"] = model.name
        notes["quality"] = "BRISQUE (RBF SVR on 36 NSS features) and PIQE on the protocol slices; lower is better"
    return notes


# ---------------------------------------------------------------------------------------------- from datasets
def slices_of_cases(images: np.ndarray) -> np.ndarray:
    """``(N, 5, H, W)`` slices of 2D cases as they are; for 3D cases ``(N, 5, X, Y, Z)`` the axial slice (last axis)
    with the largest tumour area of each."""
    images = np.asarray(images, dtype=np.float32)
    if images.ndim == 4:
        return images
    areas = images[:, 4].reshape(len(images), -1, images.shape[-1]).sum(1)
    return np.stack([case[..., int(np.argmax(area))] for case, area in zip(images, areas, strict=True)])


def slices_by_site(subjects: Iterable[PreparedSubject]) -> dict[str, np.ndarray]:
    """Stack prepared subjects into ``site → (N, 5, H, W)``: every slice of a 2D subject; for a 3D subject the axial
    slice with the largest tumour area."""
    groups: dict[str, list[np.ndarray]] = {}
    for subject in subjects:
        groups.setdefault(subject.site, []).append(slices_of_cases(subject.image))
    return {site: np.concatenate(images) for site, images in sorted(groups.items())}


def load_cohort_slices(path: str | Path, config: StudyConfig, cache_dir: str | Path,
                       skip_invalid: bool = False) -> dict[str, np.ndarray]:
    """Slices per site of a dataset: a prepared cache (``<site>/<subject>.safetensors``) is read as it is; a raw
    dataset (site folders + labels.csv) is prepared into ``cache_dir`` first with ``config``'s data settings."""
    from catphish.data.prepared import load_prepared, load_prepared_dir
    from catphish.data.preprocess import prepare_dataset

    path = Path(path)
    if not path.is_dir():
        raise CatphishError(f"{path}: dataset folder does not exist")
    if any(path.glob("*/*.safetensors")):
        subjects = load_prepared_dir(path)
    else:
        subjects = [load_prepared(file) for file in prepare_dataset(path, config, cache_dir, skip_invalid=skip_invalid)]
    if not subjects:
        raise CatphishError(f"{path}: no subjects found")
    return slices_by_site(subjects)
