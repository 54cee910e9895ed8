"""Latency and accuracy estimators for OFA sub-networks."""
