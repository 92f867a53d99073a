"""Benchmarks for rerankd: a load generator, the seed design's baseline servers, comparisons.

``python -m bench`` (or ``rerankd bench``) runs the load generator; ``python -m bench.compare``,
``python -m bench.overhead``, ``python -m bench.baselines``, ``python -m bench.plot`` and
``python -m bench.make_qwen3_shaped`` are described in docs/benchmarks.md.
"""
