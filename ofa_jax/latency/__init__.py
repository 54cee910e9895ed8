"""Latency measurement of compiled sub-networks, device fingerprints and the latency store."""
