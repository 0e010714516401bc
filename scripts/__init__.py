"""The project's command-line tools (benchmarks, the GPU command, the study's publisher): each
runs as `python scripts/NAME.py`; the tests import them as `scripts.NAME`."""
