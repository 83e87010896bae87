"""UPSCALE-style unconstrained pruning and channel reordering (see :mod:`spa.reorder.unconstrained`)."""
