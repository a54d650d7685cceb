"""clad from Python: run a continual stream, read its matrices, run it again with two categories
per step, and read a finished run back from its folder.

    python examples/python_api.py

Runs in under a minute on a laptop CPU (PatchCore with a random-init ResNet-18 on two steps of
the built-in synthetic set; a real study would keep the ImageNet weights).
"""

import os

import clad

output = os.environ.get("CLAD_EXAMPLE_OUTPUT", "output/examples")
config = {
    "run_name": "python_api",
    "dataset": {
        "name": "synthetic",
        "root": "data/synthetic_example",
        "categories": ["stripes", "disc", "nut"],
        "image_size": 64,
        "synthetic": {"image_size": 64, "n_train": 16, "n_test_good": 6, "n_test_per_defect": 2},
    },
    "detector": {"name": "patchcore", "backbone": "resnet18", "weights": "none"},
    "strategy": {"name": "cl", "mem_size_cl": 2000},
    "training": {"batch_size": 16, "device": "cpu"},
    "evaluation": {"overlays_per_task": 0},
    "output": {"dir": output, "plots": False},
    "wandb": {"enabled": False},
}

# one category per task: a 3 x 3 matrix per metric (rows: after each step; columns: tasks)
result = clad.run(config, seed=0, overwrite=True)
print(result.tasks, result.matrix("image_auroc").round(3))
print("final average", round(result.summary["final_avg/image_auroc"], 3))
print("forgetting (Chaudhry)", round(result.summary["forgetting/image_auroc"], 3))
print("forgetting (pyCLAD)", round(result.summary["forgetting_pyclad/image_auroc"], 3))

# two categories learnt together, then one: task and category matrices
steps = clad.run(
    config,
    seed=0,
    overrides={
        "run_name": "python_api_steps",
        "dataset.categories": None,
        "dataset.tasks": [["stripes", "disc"], ["nut"]],
    },
    overwrite=True,
)
print(steps.tasks, steps.matrix("image_auroc").shape, steps.matrix("image_auroc", "category").shape)

# a finished run, read back from its folder
again = clad.load_run(result.folder)
print("read back:", again.run_name, again.seed, again.matrix("image_auroc").shape)
