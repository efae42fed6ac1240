"""Micro models: small Wan2.2-architecture models trained by wanflow on a procedural data set."""
