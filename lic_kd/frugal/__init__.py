"""Frugal networks from trained ones: channel pruning and fixed-point quantization (conf/prune, conf/quant)."""
