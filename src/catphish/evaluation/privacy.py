"""The site audits' privacy numbers, collected from the site packages' cards (only aggregates ever leave a site).

Each row is one package: its size, the membership-inference AUC (SSIM-distance attack, training vs held-out cases;
0.5 = no leakage, the paper reports 0.493), the memorisation measure of the DDPM + mutual-information work (max Pearson
correlation of a synthetic case to any training case), nearest-neighbour SSIM to training and to held-out cases,
whether the audit passed its limits, and the autoencoder's held-out mask Dice. A package never audited has only its
size and Dice.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from catphish.artifacts import file_bytes, read_json, verify_folder
from catphish.evaluation.tables import Table, Value

DESCRIPTION = ("Site packages and their privacy audits (measured at each site on its own data): membership-inference "
               "AUC, max Pearson memorisation, nearest-neighbour SSIM to training vs held-out cases.")


def privacy_rows(packages: Sequence[str | Path]) -> list[dict[str, Value]]:
    """One row per package (hashes verified first, so numbers come from an untampered card)."""
    rows: list[dict[str, Value]] = []
    for package in map(Path, packages):
        verify_folder(package, kind="site-package")
        card = read_json(package / "card.json")
        row: dict[str, Value] = {"site": card.get("site"), "task": card.get("task"),
                                 "package MB": round(file_bytes([package]) / 1e6, 2)}
        audit = card.get("audit")
        if audit:
            row.update({"generated cases": audit.get("generated_cases"),
                        "MIA AUC": audit["membership_inference"]["auc"],
                        "max Pearson (memorisation)": audit["memorisation_max_pearson"],
                        "median max-SSIM to training": audit["nearest_to_training"].get("max_ssim_median"),
                        "median max-SSIM to held-out": audit["nearest_to_holdout"].get("max_ssim_median"),
                        "passed": audit.get("passed")})
        recon = card.get("reconstruction_quality") or {}
        if isinstance(recon, dict) and "mask_dice" in recon:
            row["AE mask Dice"] = recon["mask_dice"]
        rows.append(row)
    return rows


def privacy_table(packages: Sequence[str | Path]) -> Table:
    return Table("privacy", DESCRIPTION, privacy_rows(packages),
                 {"mia": "SSIM-distance membership inference: members = the site's training cases, non-members = its "
                         "held-out cases, scored by their max SSIM to any generated case; AUC 0.5 = no leakage",
                  "max_pearson": "largest Pearson correlation of a generated case to any training case (memorisation)",
                  "source": "the `audit` section of each package's card.json, written by `catphish site audit`"})

