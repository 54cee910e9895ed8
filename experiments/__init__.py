"""Experiment entry points: thin absl mains around library ``run`` functions."""
