"""Continual-learning strategies; importing this package fills the strategy registry."""

from clad.strategies import (  # noqa: F401
    compressed_sr,
    joint,
    memory_bank,
    naive,
    regularization,
    rehearsal,
    replay,
    single_model,
    stored_replay,
)
from clad.strategies.base import Strategy

__all__ = ["Strategy"]
