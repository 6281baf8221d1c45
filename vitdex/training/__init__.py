"""DreamBooth from search results: curate, crop and caption, train, convert, register.

Submodules import torch and diffusers only when a function that needs them runs, so the
API process can list datasets and checkpoints without loading either.
"""
