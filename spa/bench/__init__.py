"""Measuring models: MACs, parameters, latency."""
