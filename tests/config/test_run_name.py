"""``run_name`` is a plain folder name of at most 200 characters, refused at load otherwise."""

from __future__ import annotations

import json

import pytest

from clad.config import load_config
from clad.errors import ConfigError

BASE = {
    "dataset": {"name": "synthetic", "root": "data/x", "image_size": 32},
    "detector": {"name": "conv_ae"},
    "strategy": {"name": "naive"},
}


def test_a_5_mb_run_name_is_refused_at_load_naming_the_key(tmp_path):
    path = tmp_path / "run.json"
    path.write_text(json.dumps({**BASE, "run_name": "a" * 5_000_000}))
    with pytest.raises(ConfigError, match=r"run_name: .*at most 200 characters") as refused:
        load_config(path, check_machine=False)
    assert len(str(refused.value)) < 1000  # the value is not echoed in full


def test_a_run_name_of_200_characters_loads(tmp_path):
    path = tmp_path / "run.json"
    path.write_text(json.dumps({**BASE, "run_name": "a" * 200}))
    assert load_config(path, check_machine=False).run_name == "a" * 200
    path.write_text(json.dumps({**BASE, "run_name": "a" * 201}))
    with pytest.raises(ConfigError, match="run_name"):
        load_config(path, check_machine=False)
