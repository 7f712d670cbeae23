"""Benchmarks of tglc-builder on this machine, against the local archive over loopback (not part of the tests).

Layout:

- :mod:`benchmarks.harness`: fresh processes, timing, memory sampling of whole process trees, the local servers
  (the demo archive, an S3 server), the machine description and the command line;
- :mod:`benchmarks.stages`: one module per stage, all registered in ``benchmarks/stages/__init__.py``;
- :mod:`benchmarks.goals`: every goal, written once, and the figures of the results before the redesign;
- :mod:`benchmarks.report`: the table and ``RESULTS.md`` (its hand-written "Analysis" section is kept);
- :mod:`benchmarks.data`: synthetic sectors on disk (generated in their own processes, never in a measured one).

Run ``python benchmarks/run.py --help``.
"""
