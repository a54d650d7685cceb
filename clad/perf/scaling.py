"""PatchCore under ``cl`` over many synthetic tasks: bank size, learn time and search speed after
every task, with the budget and without one (``python -m clad.perf cl-scaling``)."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from clad.benchmarks.mvtec import ImageDataset, read_category
from clad.benchmarks.synthetic import SYNTHETIC_CATEGORIES, generate_dataset
from clad.models.base import training_for
from clad.models.patchcore import PatchCore
from clad.records import Task, dataset_length
from clad.strategies.memory_bank import ContinualMemoryBank


def cl_scaling(args: argparse.Namespace) -> list[dict]:
    """PatchCore under ``cl``: bank size, learn time and search speed after every task, with
    the budget and without one."""
    torch.manual_seed(args.seed)
    tasks = []
    for t in range(args.tasks):
        seed, category = divmod(t, len(SYNTHETIC_CATEGORIES))
        root = Path(args.cache_dir) / f"cl_scaling_{args.image_size}_seed{seed}"
        generate_dataset(
            root,
            seed=seed,
            categories=[SYNTHETIC_CATEGORIES[category]],
            image_size=args.image_size,
            n_train=args.n_train,
            n_test_good=8,
            n_test_per_defect=2,
        )
        train, test = read_category(root, SYNTHETIC_CATEGORIES[category])
        tasks.append(
            Task(
                task_id=t,
                name=f"{SYNTHETIC_CATEGORIES[category]}#{seed}",
                train=ImageDataset(train, args.image_size),
                val=None,  # type: ignore[arg-type]  # the cl strategy never reads it
                test=ImageDataset(test, args.image_size),
            )
        )
    probe = torch.stack(
        [tasks[0].test[i][0] for i in range(min(16, dataset_length(tasks[0].test)))]
    )

    def make() -> PatchCore:
        return PatchCore(
            backbone=args.backbone,
            weights=args.weights,
            coreset_ratio=args.coreset_ratio,
            training=training_for(PatchCore, device=args.device),
        )

    rows = []
    for label, budget in (("cl", args.mem_size_cl), ("no budget", 10**12)):
        strategy = ContinualMemoryBank(make, mem_size_cl=budget)
        for task in tasks:
            began = time.perf_counter()
            strategy.learn(task)
            learnt = time.perf_counter() - began
            strategy.predict(probe[:2], None)  # warm-up
            began = time.perf_counter()
            strategy.predict(probe, None)
            rate = len(probe) / (time.perf_counter() - began)
            row = {
                "variant": label,
                "task": task.task_id,
                "name": task.name,
                "bank_rows": strategy.memory_items(),
                "bank_mb": strategy.cost_bytes()["memory"] / 2**20,
                "learn_s": learnt,
                "infer_images_per_s": rate,
            }
            rows.append(row)
            print(
                f"| {label} | {task.task_id} | {task.name} | {row['bank_rows']} | "
                f"{row['bank_mb']:.2f} | {learnt:.1f} | {rate:.1f} |",
                flush=True,
            )
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return rows
