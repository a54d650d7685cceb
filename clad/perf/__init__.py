"""Benchmarking tools: ``python -m clad.perf <command>`` (see ``clad.perf.commands``). They print
numbers; nothing here is used by a run."""
