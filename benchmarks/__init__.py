"""Soniq's benchmark suite: ``nox -s bench`` (with peers) or ``python -m benchmarks`` (see
``benchmarks/README.md``). Nothing here is imported by ``src/``."""
