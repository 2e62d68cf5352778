"""Subject montages: the four sequences side by side with the whole-tumour contour, one row per subject.

Used by ``catphish data show`` (quick look at real or phantom data), the README figure and the report. Works on
arrays only; the caller reads the files.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from nibabel.orientations import apply_orientation, io_orientation
from PIL import Image

from catphish.artifacts import atomic_output_path
from catphish.config import SEQUENCES

SEQUENCE_TITLES: dict[str, str] = {"t1": "T1", "t1c": "T1C", "t2": "T2", "flair": "FLAIR"}
CONTOUR_COLOUR = "#ff3b30"
PALETTE_COLOURS = 128


@dataclass
class MontageRow:
    """One subject: a caption, its four sequences (3D, same grid) and its segmentation (> 0 = tumour)."""

    caption: str
    volumes: dict[str, np.ndarray]
    segmentation: np.ndarray
    affine: np.ndarray | None = None
    """Voxel-to-world affine; when given, volumes are shown in RAS orientation (anterior up)."""


def canonical(volume: np.ndarray, affine: np.ndarray | None) -> np.ndarray:
    """Reorder axes so that the array is RAS (x right, y anterior, z superior), whatever the file's orientation."""
    if affine is None:
        return volume
    return apply_orientation(volume, io_orientation(affine))


def tumour_slice(segmentation: np.ndarray) -> int:
    """The axial slice with the largest tumour area (the middle slice when there is no tumour)."""
    area = (segmentation > 0).sum(axis=(0, 1))
    return int(np.argmax(area)) if area.any() else segmentation.shape[2] // 2


def _window(image: np.ndarray) -> tuple[float, float]:
    """Display range from the 0.5–99.5 percentiles of the non-zero (brain) voxels."""
    values = image[image > 0]
    if values.size == 0:
        return 0.0, 1.0
    low, high = np.percentile(values, [0.5, 99.5])
    return float(low), float(max(high, low + 1e-6))


def _crop(mask: np.ndarray, margin: int = 2) -> tuple[slice, slice]:
    """2D bounding box of the brain (non-zero voxels), so rows show brain rather than background."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return slice(None), slice(None)
    return (slice(max(rows[0] - margin, 0), rows[-1] + margin + 1), slice(max(cols[0] - margin, 0), cols[-1] + margin + 1))


def render_montage(rows: list[MontageRow], out_path: str | Path, *, panel_inches: float = 1.9, dpi: int = 110,
                   title: str | None = None) -> Path:
    """Draw ``rows`` (T1, T1C, T2, FLAIR columns; tumour contour on each) and write a PNG atomically."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    n_rows = max(len(rows), 1)
    fig, axes = plt.subplots(n_rows, len(SEQUENCES), figsize=(panel_inches * len(SEQUENCES), panel_inches * n_rows * 1.08),
                             squeeze=False, facecolor="black")
    for r, row in enumerate(rows):
        segmentation = canonical(row.segmentation, row.affine)
        z = tumour_slice(segmentation)
        volumes = {name: canonical(row.volumes[name], row.affine) for name in SEQUENCES}
        crop = _crop(np.any([volumes[name][:, :, z] > 0 for name in SEQUENCES], axis=0))
        tumour = (segmentation[:, :, z] > 0)[crop]
        for c, name in enumerate(SEQUENCES):
            ax = axes[r, c]
            image = volumes[name][:, :, z][crop]
            low, high = _window(volumes[name][:, :, z])
            # transpose + origin lower: anterior at the top, like a radiology viewer's axial view
            ax.imshow(image.T, cmap="gray", origin="lower", vmin=low, vmax=high, interpolation="nearest")
            if tumour.any():
                ax.contour(tumour.T.astype(float), levels=[0.5], colors=CONTOUR_COLOUR, linewidths=0.7, origin="lower")
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            if r == 0:
                ax.set_title(SEQUENCE_TITLES[name], color="white", fontsize=9)
            if c == 0:
                ax.set_ylabel(row.caption, color="white", fontsize=6.5)
    if title:
        fig.suptitle(title, color="white", fontsize=10)
    fig.tight_layout(pad=0.3, h_pad=0.3, w_pad=0.2)
    rendered = io.BytesIO()
    fig.savefig(rendered, format="png", dpi=dpi, facecolor=fig.get_facecolor())
    plt.close(fig)
    # grey levels plus one contour colour fit a 128-colour palette: a third of the bytes, no visible change
    image = Image.open(rendered).convert("RGB").quantize(colors=PALETTE_COLOURS, method=Image.Quantize.MEDIANCUT,
                                                         dither=Image.Dither.NONE)
    out_path = Path(out_path)
    with atomic_output_path(out_path) as tmp:
        image.save(tmp, format="PNG", optimize=True)
    return out_path
