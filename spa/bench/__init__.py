"""Measuring models: MACs, parameters, latency (``spa bench``) and pruning sweeps (``spa sweep``).

One job per module:

* :mod:`~spa.bench.metrics` — MACs and parameters from shapes;
* :mod:`~spa.bench.providers` — which ONNX Runtime provider really works here (probed, not listed);
* :mod:`~spa.bench.feeds` — concrete input shapes (``--batch``, ``--shape``) and seeded random inputs;
* :mod:`~spa.bench.latency` — sessions, io-binding runners, alternating timing;
* :mod:`~spa.bench.fp16` — float16 copies for ``--fp16``;
* :mod:`~spa.bench.profile` — ONNX Runtime profiling and its summary;
* :mod:`~spa.bench.report` — ``spa bench``: runs it all and assembles the JSON report (``docs/bench.md``);
* :mod:`~spa.bench.sweep` and :mod:`~spa.bench.plot` — ``spa sweep`` and its ``pareto.png``;
* :mod:`~spa.bench.tables` — the rich tables the CLI prints.
"""
