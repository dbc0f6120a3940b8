"""specd.demo: training of the tiny demo target and draft models."""
