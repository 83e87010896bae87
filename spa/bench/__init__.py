"""Benchmarking models (``spa bench``): latency, MACs, parameters and size, each against the first model.

One job per module:

* :mod:`~spa.bench.fp16` — float16 copies for ``--fp16``;
* :mod:`~spa.bench.profile` — ONNX Runtime profiling and its summary;
* :mod:`~spa.bench.report` — ``spa bench``: runs it all and assembles the JSON report (``docs/bench.md``);
* :mod:`~spa.bench.plot` — the figures: the ``pareto.png`` of ``spa sweep`` (:mod:`spa.sweep`), the pages' plots;
* :mod:`~spa.bench.page` — the ``--html`` page of prune, recover and sweep reports (``spa report``);
* :mod:`~spa.bench.tables` — the rich tables the CLI prints.

Sessions, providers, feeds and timing live in :mod:`spa.runtime`; MACs and parameters in
:mod:`spa.analysis.metrics`.
"""
