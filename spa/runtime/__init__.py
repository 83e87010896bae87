"""ONNX Runtime, in one place: every session spa opens, the feeds it runs on, and how runs are timed.

* :mod:`~spa.runtime.session` — :func:`~spa.runtime.session.session`, the one session factory
  (providers, intra/inter-op threads, optimisation level, profiling, models above 2 GB through
  external data);
* :mod:`~spa.runtime.providers` — which execution provider really works here (probed, not listed);
* :mod:`~spa.runtime.feeds` — the inputs of a model or session (:func:`~spa.runtime.feeds.input_specs`),
  concrete input shapes (``--batch``, ``--shape``) and seeded random inputs;
* :mod:`~spa.runtime.timing` — io-binding runners and alternating timing;
* :mod:`~spa.runtime.compare` — element-wise comparison of two runs' outputs.
"""
