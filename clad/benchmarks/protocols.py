"""Named continual anomaly-detection protocols: which categories each step learns, in which
order, and where the definition comes from.

A protocol is a list of steps, each a list of categories learnt together (multi-class
training, as the papers do). Names follow the papers: ``15x1`` is fifteen steps of one class,
``14-1`` a base step of fourteen classes then one, ``10-1x5`` a base of ten then five steps of
one. Every order below was read from the reference code (repository, file); the papers use the
same orders. Light on purpose: no torch, nothing read from disk.

Continuous drift (``drift_color``, ``drift_blur``, ``drift_geometric``) is a protocol of another
kind: one category (``dataset.categories``, exactly one) seen at ten steps, each step's images
corrupted more than the last's (``clad.benchmarks.drift``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from clad.benchmarks.catalog import CLAD_TASK_ORDER, MVTEC_OBJECTS, MVTEC_TEXTURES, VISA_CATEGORIES

MVTEC_ALPHABETICAL = tuple(sorted(MVTEC_OBJECTS + MVTEC_TEXTURES))
"""MVTec AD's fifteen categories in alphabetical order: the order of UCAD, IUF and CDAD."""
VISA_ALPHABETICAL = tuple(sorted(VISA_CATEGORIES))
DNE_ORDER = (
    "leather",
    "bottle",
    "metal_nut",
    "grid",
    "screw",
    "zipper",
    "tile",
    "hazelnut",
    "toothbrush",
    "wood",
    "transistor",
    "pill",
    "carpet",
    "capsule",
    "cable",
)
"""DNE's default class order (``dataset_order: 1``, vijaylee/Continual_Anomaly_Detection,
``datasets/utils/__init__.py``)."""
SYNTHETIC_ORDER = ("stripes", "checker", "weave", "disc", "nut", "capsule")

DRIFT_KINDS = ("color", "blur", "geometric")
DRIFT_STEPS = 10


@dataclass(frozen=True)
class Protocol:
    """A named protocol.

    Attributes:
        name: how configurations name it (``dataset.protocol``).
        dataset: the dataset it is defined on (``mvtec``, ``visa``, ``synthetic``); None for a
            drift protocol, which applies to any image dataset.
        steps: the categories of each step, in the protocol's order (empty for drift).
        source: the paper and the file of its reference code that define it.
    """

    name: str
    dataset: str | None
    steps: tuple[tuple[str, ...], ...]
    source: str

    @property
    def categories(self) -> tuple[str, ...]:
        """Every category, in the protocol's order."""
        return tuple(c for step in self.steps for c in step)

    @property
    def sizes(self) -> tuple[int, ...]:
        """How many categories each step learns."""
        return tuple(len(step) for step in self.steps)

    @property
    def drift(self) -> str | None:
        """The corruption of a drift protocol (``color``, ``blur``, ``geometric``), else None."""
        return self.name.removeprefix("drift_") if self.name.startswith("drift_") else None

    def shape(self) -> str:
        """The steps and the categories each learns, unambiguously (the papers' ``15x1`` and
        ``3x5`` count in opposite orders): ``15 steps of 1``, ``2 steps: 14, 1``."""
        if self.drift is not None:
            return f"{DRIFT_STEPS} steps of 1 category"
        sizes = list(self.sizes)
        if len(set(sizes)) == 1:
            return f"{len(sizes)} steps of {sizes[0]}"
        return f"{len(sizes)} steps: {', '.join(str(s) for s in sizes)}"


def split(order: Sequence[str], sizes: Sequence[int]) -> tuple[tuple[str, ...], ...]:
    """``order`` cut into consecutive steps of ``sizes`` categories."""
    if sum(sizes) != len(order):
        raise ValueError(f"step sizes {list(sizes)} do not add up to {len(order)} categories")
    steps, start = [], 0
    for size in sizes:
        steps.append(tuple(order[start : start + size]))
        start += size
    return tuple(steps)


UCAD = "UCAD (Liu et al., AAAI 2024), shirowalker/UCAD README.md l. 41, run_ucad.py"
CDAD = "IUF (Tang et al., ECCV 2024) and CDAD (One-for-More, CVPR 2025): FuNz-0/One-for-More"
_PROTOCOLS = (
    Protocol("mvtec_15x1", "mvtec", split(MVTEC_ALPHABETICAL, [1] * 15), UCAD),
    Protocol(
        "mvtec_14-1",
        "mvtec",
        split(MVTEC_ALPHABETICAL, [14, 1]),
        f"{CDAD} data/MVTec-AD/1/train_<k>.json",
    ),
    Protocol(
        "mvtec_10-5",
        "mvtec",
        split(MVTEC_ALPHABETICAL, [10, 5]),
        f"{CDAD} data/MVTec-AD/2/train_<k>.json",
    ),
    Protocol(
        "mvtec_3x5",
        "mvtec",
        split(MVTEC_ALPHABETICAL, [3] * 5),
        f"{CDAD} data/MVTec-AD/3/train_<k>.json (IUF: '3-3 with 4 steps')",
    ),
    Protocol(
        "mvtec_10-1x5",
        "mvtec",
        split(MVTEC_ALPHABETICAL, [10, 1, 1, 1, 1, 1]),
        f"{CDAD} data/MVTec-AD/4/train_<k>.json",
    ),
    Protocol(
        "mvtec_clad",
        "mvtec",
        split(CLAD_TASK_ORDER, [1] * 10),
        "CLAD (Bugarin et al., CVPRW 2024): projectclad769/clad src/datasets.py l. 31",
    ),
    Protocol(
        "dne_3x5",
        "mvtec",
        split(DNE_ORDER, [3] * 5),
        "DNE (Li et al., ACM MM 2022): vijaylee/Continual_Anomaly_Detection, configs/cad.yaml "
        "(data_incre_setting mul), datasets/utils/__init__.py (dataset_order 1)",
    ),
    Protocol(
        "dne_10+1x5",
        "mvtec",
        split(DNE_ORDER, [10, 1, 1, 1, 1, 1]),
        "DNE (Li et al., ACM MM 2022): vijaylee/Continual_Anomaly_Detection, configs/cad.yaml "
        "(data_incre_setting one), datasets/utils/__init__.py (dataset_order 1)",
    ),
    Protocol(
        "visa_12x1",
        "visa",
        split(VISA_ALPHABETICAL, [1] * 12),
        "UCAD (Liu et al., AAAI 2024), shirowalker/UCAD README.md l. 45",
    ),
    Protocol("visa_11-1", "visa", split(VISA_ALPHABETICAL, [11, 1]), f"{CDAD} data/VisA/1/"),
    Protocol("visa_8-4", "visa", split(VISA_ALPHABETICAL, [8, 4]), f"{CDAD} data/VisA/2/"),
    Protocol(
        "visa_8-1x4",
        "visa",
        split(VISA_ALPHABETICAL, [8, 1, 1, 1, 1]),
        f"{CDAD} data/VisA/3/ (IUF: '8-1 with 4 steps')",
    ),
    Protocol(
        "synthetic_6x1",
        "synthetic",
        split(SYNTHETIC_ORDER, [1] * 6),
        "clad's built-in counterpart of 15x1 (tests, demos)",
    ),
    Protocol(
        "synthetic_5-1",
        "synthetic",
        split(SYNTHETIC_ORDER, [5, 1]),
        "clad's built-in counterpart of 14-1",
    ),
    Protocol(
        "synthetic_3x2",
        "synthetic",
        split(SYNTHETIC_ORDER, [3, 3]),
        "clad's built-in counterpart of 3x5",
    ),
    Protocol(
        "synthetic_4-1x2",
        "synthetic",
        split(SYNTHETIC_ORDER, [4, 1, 1]),
        "clad's built-in counterpart of 10-1x5",
    ),
    *(
        Protocol(
            f"drift_{kind}",
            None,
            (),
            "continuous drift of DINOSaur (arXiv 2605.24251; Continue-Edge-AI-Lab/"
            "Rethinking-Continual-AD main.py data_aug), on any one category",
        )
        for kind in DRIFT_KINDS
    ),
)
PROTOCOLS: dict[str, Protocol] = {p.name: p for p in _PROTOCOLS}
"""Every named protocol, by name."""
