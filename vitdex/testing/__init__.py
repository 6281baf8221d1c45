"""Tiny models the tests, the benchmarks and the demo build and save themselves.

Random weights in the real checkpoint layouts, so the real loading code runs on them
without hub access: a ViT (:mod:`vitdex.testing.vit`) and a Stable Diffusion base
(:mod:`vitdex.testing.sd`).
"""
