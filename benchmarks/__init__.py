"""Benchmarks of resource-router against the libraries it is measured against (see ``README.md``).

``python -m benchmarks.run --quick`` (under a minute), ``--full`` (the figures in ``README.md``),
``--smoke`` (seconds; what the test suite runs). ``python -m benchmarks.registry_p50`` prints the
p50 of the registry's basic operations.
"""
