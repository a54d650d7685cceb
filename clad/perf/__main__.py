"""``python -m clad.perf``: the benchmark commands."""

from clad.perf.commands import main

main()
