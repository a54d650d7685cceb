"""Where the tests find the repository and the optional real data."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
"""The repository root (configurations/, README.md, main.py)."""
SHARED_DATA = REPO.parent / "shared" / "data"
"""Real data for the ``realdata`` tests; absent in CI (those tests skip, naming it)."""
