"""Benchmarks: the system's own cost, side by side with baselines measured in
the same run. ``python -m bench [NAME...]`` (``make bench``); not collected by
pytest (``testpaths = ["tests"]``). See docs/benchmarks.md."""
