"""Importance criteria: a score per channel of every prunable group (higher = more important)."""

from spa.criteria.magnitude import CRITERIA, score_groups

__all__ = ["CRITERIA", "score_groups"]
