"""Apply a plan: the pruned model and its masked twin."""

from spa.surgery.apply import kept_indices, masked_twin, prune_model, twin_kept

__all__ = ["kept_indices", "masked_twin", "prune_model", "twin_kept"]
