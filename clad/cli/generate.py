"""``clad generate <set>``: write one of the built-in synthetic datasets to a folder (runs generate
them on first use by themselves; this is for looking at them or preparing them ahead).

    python main.py generate synthetic --out data/synthetic --seed 0 --image-size 128
    python main.py generate synthetic --out data/synthetic_visa --layout visa
    python main.py generate synthetic3d --out data/synthetic3d --seed 0 --image-size 64
    python main.py generate synthetic-audio --out data/synthetic_audio --layout dcase2022
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from clad.benchmarks import generated
from clad.benchmarks import synthetic as images
from clad.benchmarks import synthetic3d as depth
from clad.benchmarks import synthetic_audio as sounds
from clad.benchmarks import synthetic_drawing as drawing
from clad.benchmarks import synthetic_layouts as layouts


def synthetic(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="clad generate synthetic",
        description="Write seeded synthetic anomaly-detection categories in the MVTec AD layout "
        "(<out>/<category>/{train/good, test/<defect>, ground_truth/<defect>}), or with "
        "--layout visa (<out>/<category>/Data/{Images,Masks}/..., <out>/split_csv/1cls.csv) or "
        "mvtec_ad2 (<out>/<category>/{train/good, validation/good, test_public/{good, bad, "
        "ground_truth/bad}}).",
    )
    parser.add_argument("--out", type=Path, required=True, help="dataset root folder")
    parser.add_argument(
        "--layout",
        choices=layouts.LAYOUTS,
        default="mvtec",
        help="folder layout to write (default mvtec)",
    )
    parser.add_argument("--seed", type=int, default=0, help="generation seed (default 0)")
    parser.add_argument(
        "--categories",
        nargs="+",
        default=list(images.SYNTHETIC_CATEGORIES),
        metavar="NAME",
        help=f"categories to write (default: all of {', '.join(images.SYNTHETIC_CATEGORIES)})",
    )
    parser.add_argument("--image-size", type=int, default=64, help="image side in pixels")
    parser.add_argument("--n-train", type=int, default=40, help="normal training images")
    parser.add_argument("--n-test-good", type=int, default=10, help="normal test images")
    parser.add_argument(
        "--n-test-per-defect", type=int, default=4, help="test images per defect kind"
    )
    args = parser.parse_args(argv)
    settings = dict(
        seed=args.seed,
        image_size=args.image_size,
        n_train=args.n_train,
        n_test_good=args.n_test_good,
        n_test_per_defect=args.n_test_per_defect,
        layout=args.layout,
    )
    try:
        params = {c: images.generation_params(c, **settings) for c in args.categories}
    except ValueError as err:
        parser.error(str(err))
    for category in args.categories:
        already = generated.is_complete(args.out / category, params[category])
        folder = images.generate_category(args.out, category=category, **settings)
        defects = drawing.defect_kinds(category)
        status = "already complete" if already else "written"
        validation = params[category].get("n_validation")
        extra = f", {validation} validation" if validation else ""
        print(
            f"{category}: {args.n_train} train{extra}, {args.n_test_good} good + "
            f"{args.n_test_per_defect} x {len(defects)} defective test images "
            f"({', '.join(defects)}), {args.image_size}px, layout {args.layout} -> {folder} "
            f"({status})"
        )
    if args.layout == "visa":
        print(f"split file: {args.out / layouts.VISA_SPLIT_DIR / layouts.VISA_SPLIT_NAME}")
    return 0


def synthetic3d(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="clad generate synthetic3d",
        description="Write a synthetic MVTec 3D-AD-layout dataset.",
    )
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--categories", nargs="+", default=None)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--n-train", type=int, default=30)
    args = parser.parse_args(argv)
    depth.generate_dataset_3d(args.out, args.seed, args.categories, args.image_size, args.n_train)
    print(f"wrote {', '.join(args.categories or depth.SYNTHETIC_3D_CATEGORIES)} to {args.out}")
    return 0


def synthetic_audio(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="clad generate synthetic-audio",
        description="Write seeded synthetic machine sounds in a DCASE Task 2 layout "
        "(dcase2020: <out>/dev_data/<machine>/{train,test}/{normal,anomaly}_id_XX_*.wav; "
        "dcase2022: <out>/<machine>/{train,test}/section_XX_{source,target}_*.wav).",
    )
    parser.add_argument("--out", type=Path, required=True, help="dataset root folder")
    parser.add_argument("--seed", type=int, default=0, help="generation seed (default 0)")
    parser.add_argument("--layout", choices=sounds.LAYOUTS, default="dcase2022")
    parser.add_argument(
        "--machines",
        nargs="+",
        default=list(sounds.SYNTHETIC_MACHINES),
        metavar="NAME",
        help=f"machine types (default: all of {', '.join(sounds.SYNTHETIC_MACHINES)})",
    )
    parser.add_argument("--sections", type=int, default=2, help="sections (ids) per machine")
    parser.add_argument(
        "--n-train",
        type=int,
        default=30,
        help="normal training clips per section (source domain in dcase2022)",
    )
    parser.add_argument(
        "--n-train-target",
        type=int,
        default=3,
        help="dcase2022: target-domain training clips per section",
    )
    parser.add_argument(
        "--n-test",
        type=int,
        default=10,
        help="normal and anomalous test clips each, per section (and domain)",
    )
    parser.add_argument("--duration", type=float, default=2.0, help="clip length in seconds")
    parser.add_argument("--sample-rate", type=int, default=16000)
    args = parser.parse_args(argv)
    settings = (
        args.layout,
        args.seed,
        args.sections,
        args.n_train,
        args.n_train_target,
        args.n_test,
        args.duration,
        args.sample_rate,
    )
    try:
        plans = {m: sounds.generation_params(m, *settings) for m in args.machines}
    except ValueError as err:
        parser.error(str(err))
    for machine, params in plans.items():
        already = sounds.is_complete(sounds.machine_folder(args.out, machine, args.layout), params)
        folder = sounds.generate_machine(args.out, machine, *settings)
        count = len(sounds.plan_machine(params))
        status = "already complete" if already else "written"
        print(
            f"{machine}: {count} clips of {args.duration:g} s, {args.sections} sections, "
            f"layout {args.layout} -> {folder} ({status})"
        )
    return 0


GENERATORS = {
    "synthetic": synthetic,
    "synthetic3d": synthetic3d,
    "synthetic-audio": synthetic_audio,
}


def cmd_generate(argv: list[str]) -> int:
    if not argv or argv[0] not in GENERATORS:
        names = ", ".join(GENERATORS)
        if argv and argv[0] in ("-h", "--help"):
            print(__doc__.strip() + f"\n\nsets: {names}; `clad generate <set> --help` for each")
            return 0
        raise SystemExit(
            f"clad generate: name a set ({names}), e.g. clad generate synthetic "
            "--out data/synthetic"
        )
    return GENERATORS[argv[0]](argv[1:])
