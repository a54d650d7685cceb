"""CLAD's published numbers, shown beside ours for the detector/strategy pairs it reports."""

from __future__ import annotations

from clad.tracking.comparison.rows import Row

CLAD_PUBLISHED: dict[tuple[str, str], dict[str, float]] = {
    ("draem", "replay"): {
        "image_auroc": 0.75,
        "pixel_auroc": 0.82,
        "aupro": 0.65,
        "forgetting_pct": 27.1,
    },
    ("patchcore", "cl"): {
        "image_auroc": 0.97,
        "pixel_auroc": 0.98,
        "aupro": 0.89,
        "forgetting_pct": 0.7,
    },
    ("padim", "cl"): {
        "image_auroc": 0.56,
        "pixel_auroc": 0.73,
        "aupro": 0.53,
        "forgetting_pct": 19.1,
    },
    ("cfa", "replay"): {
        "image_auroc": 0.92,
        "pixel_auroc": 0.93,
        "aupro": 0.75,
        "forgetting_pct": -4.7,
    },
    ("stfpm", "replay"): {
        "image_auroc": 0.87,
        "pixel_auroc": 0.93,
        "aupro": 0.85,
        "forgetting_pct": 14.8,
    },
    ("efficientad", "replay"): {
        "image_auroc": 0.81,
        "pixel_auroc": 0.88,
        "aupro": 0.67,
        "forgetting_pct": 19.1,
    },
    ("fastflow", "replay"): {
        "image_auroc": 0.84,
        "pixel_auroc": 0.91,
        "aupro": 0.73,
        "forgetting_pct": 17.4,
    },
}
"""CLAD (CVPR 2024 workshop) on the 10 MVTec AD object tasks, best strategy per detector: image
AUROC, pixel AUROC, pixel AU-PRO and average forgetting in % (CLAD's own forgetting measure)."""


def clad_text(row: Row) -> str:
    published = CLAD_PUBLISHED.get((row.detector, row.strategy))
    if published is None:
        return ""
    return (
        f"{published['image_auroc']:.2f} / {published['pixel_auroc']:.2f} / "
        f"{published['aupro']:.2f} / {published['forgetting_pct']:.1f}%"
    )


CLAD_NOTE = (
    "CLAD published: image AUROC / pixel AUROC / AU-PRO / average forgetting (%, CLAD's own "
    "measure) on the 10 MVTec AD object tasks (CVPR 2024 workshop), for the detector/strategy "
    "pairs it reports."
)
