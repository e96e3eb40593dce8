"""Coding images for real with a trained network (or a classical codec), measured, into one results.json per run."""
