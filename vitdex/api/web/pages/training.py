"""Datasets (/datasets, /datasets/{id}), jobs (/jobs) and training run (/runs/{id}) pages."""

from __future__ import annotations

from litestar import Controller


class TrainingPages(Controller):
    """Datasets (/datasets, /datasets/{id}), jobs (/jobs) and training run (/runs/{id}) pages."""

    include_in_schema = False
