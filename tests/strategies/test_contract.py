"""Contract tests over the whole strategy registry: the checks of ``clad.testing``, which a
plugin strategy runs with ``check_strategy``, each strategy fed a small built-in detector it
accepts (conv_ae, patchcore or vae at 32 px)."""

from __future__ import annotations

import pytest
import torch

import clad.strategies  # noqa: F401  (fills the strategy table)
from clad.registry import strategy_table
from clad.strategies.base import Strategy
from clad.testing import STRATEGY_CHECKS, ContractError, check_strategy, strategy_case

SETTINGS = {  # small memories, so that the tiny tasks fill them
    "replay": {"mem_size": 4},
    "downscaled_replay": {"mem_size": 4},
    "latent_replay": {"mem_size": 4},
    "generative_replay": {"mem_size": 4},
    "cl": {"mem_size_cl": 200},
    "der": {"mem_size": 4},
    "agem": {"patterns_per_experience": 4, "sample_size": 4},
    "compressed_replay_sr": {  # a tiny restorer: CLAD's pix2pix is minutes per task on a CPU
        "mem_size": 4,
        "stored_side": 8,
        "restorer_ngf": 2,
        "restorer_ndf": 2,
        "restorer_depth": 3,
        "restorer_epochs": 1,
        "restorer_batch_size": 4,
    },
}


@pytest.mark.parametrize("check", STRATEGY_CHECKS, ids=lambda check: check.__name__)
@pytest.mark.parametrize("name", sorted(strategy_table()))
def test_every_strategy_keeps_the_contract(name, check):
    check(strategy_case(name, SETTINGS.get(name, {})))


def test_a_strategy_that_forgets_its_state_fails_the_checks_by_name():
    class Amnesic(strategy_table()["naive"]):
        def load_state_dict(self, state: dict) -> None:
            torch.manual_seed(99)
            self.detector = self.make_detector()  # a fresh, unfitted detector

    with pytest.raises(ContractError, match="Amnesic'.*(state round trip|predict)"):
        check_strategy(Amnesic)


def test_a_class_that_is_not_a_strategy_is_refused():
    with pytest.raises(ContractError, match="not a subclass of clad.strategies.base.Strategy"):
        check_strategy(dict)  # type: ignore[arg-type]
    assert issubclass(strategy_table()["naive"], Strategy)
