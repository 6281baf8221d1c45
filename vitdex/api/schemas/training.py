"""Bodies of DreamBooth datasets, training runs and registered checkpoints."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from vitdex.api.schemas.base import FromDict
from vitdex.db.models import JobState


@dataclass
class DatasetOut(FromDict):
    """A curated dataset with its item counts."""

    id: int
    name: str
    prompt: str
    class_prompt: str | None
    #: The subject's rare token (``sks``); default captions start with it.
    trigger_word: str | None
    #: The subject's class (``dog``).
    class_word: str | None
    #: ``square`` crops or aspect-ratio ``buckets`` on export.
    crop_mode: Literal["square", "buckets"]
    space: str | None
    #: How it was curated: seeds, k, min_score, dedup, min_distance, max, mmr, sampler,
    #: tags, hide_duplicates, space (and the representative sampler's clusters).
    params: dict[str, Any]
    export_path: str | None
    #: ``instance`` and ``class`` (included), ``excluded`` and ``candidates``.
    counts: dict[str, int]
    created_at: str
    updated_at: str


@dataclass
class DatasetItemOut(FromDict):
    """A candidate of a dataset, in or out, and why."""

    image_id: int
    path: str
    width: int | None
    height: int | None
    role: Literal["instance", "class"]
    rank: int
    #: Similarity to the seeds; null for the seeds themselves.
    score: float | None
    included: bool
    #: seed, neighbour, diverse, representative, not_sampled, below_min_score,
    #: near_duplicate, over_max, excluded_by_hand, ...
    reason: str
    duplicate_of: int | None
    #: The caption the export writes: the item's own, else the (class) prompt.
    caption: str | None
    #: ``item`` (set by hand or by a find/replace) or ``default`` (the prompt's).
    caption_source: Literal["item", "default"]
    crop: dict[str, Any] | None


@dataclass
class BucketBin(FromDict):
    """One aspect-ratio bucket and how many included instance images fall in it."""

    width: int
    height: int
    count: int


@dataclass
class BucketHistogram(FromDict):
    """How the included instance images fall into buckets at a base resolution."""

    resolution: int
    #: Largest count first.
    bins: list[BucketBin]

    nested: ClassVar[Mapping[str, type[FromDict]]] = {"bins": BucketBin}


@dataclass
class DatasetView(FromDict):
    """A dataset with every candidate and its bucket histogram."""

    dataset_id: int
    dataset: DatasetOut
    items: list[DatasetItemOut]
    buckets: BucketHistogram

    nested: ClassVar[Mapping[str, type[FromDict]]] = {
        "dataset": DatasetOut,
        "items": DatasetItemOut,
        "buckets": BucketHistogram,
    }


@dataclass
class CaptionRow(FromDict):
    """An item's effective caption."""

    image_id: int
    role: Literal["instance", "class"]
    included: bool
    path: str
    caption: str | None
    caption_source: Literal["item", "default"]


@dataclass
class DatasetCaptions(FromDict):
    """Every item's caption, and the defaults per role."""

    dataset_id: int
    #: ``instance`` and ``class``: what an item without a caption of its own gets.
    defaults: dict[str, str | None]
    captions: list[CaptionRow]

    nested: ClassVar[Mapping[str, type[FromDict]]] = {"captions": CaptionRow}


@dataclass
class CaptionChange(FromDict):
    """One caption a find/replace changes."""

    image_id: int
    role: Literal["instance", "class"]
    before: str
    after: str


@dataclass
class CaptionsReplaced(FromDict):
    """What a find/replace changed (or, as a dry run, would change)."""

    dataset_id: int
    changed: int
    #: Items looked at.
    scanned: int
    dry_run: bool
    #: The first changes (at most 20).
    examples: list[CaptionChange]

    nested: ClassVar[Mapping[str, type[FromDict]]] = {"examples": CaptionChange}


@dataclass
class DatasetChanged(DatasetView):
    """A dataset after a change by hand, with the items it touched."""

    changed: list[DatasetItemOut]

    nested: ClassVar[Mapping[str, type[FromDict]]] = {
        **DatasetView.nested,
        "changed": DatasetItemOut,
    }


@dataclass
class DatasetsPage(FromDict):
    """Datasets, newest first, with the total."""

    limit: int
    offset: int
    total: int
    datasets: list[DatasetOut]

    nested: ClassVar[Mapping[str, type[FromDict]]] = {"datasets": DatasetOut}


@dataclass
class DatasetDeleted(FromDict):
    """A deleted dataset (its photos and exported files stay)."""

    id: int
    name: str
    export_path: str | None
    deleted: bool


@dataclass
class RunCheckpoint(FromDict):
    """The newest checkpoint a run registered."""

    id: int
    path: str
    sha256: str


@dataclass
class RunOut(FromDict):
    """A training run with its job's state and newest checkpoint."""

    id: int
    state: JobState
    step: int
    total_steps: int
    loss: float | None
    base_model: str
    version: str
    dataset_id: int | None
    job_id: int | None
    job_state: JobState | None
    output_dir: str
    error: str | None
    #: The full training config.
    config: dict[str, Any]
    checkpoint: RunCheckpoint | None
    created_at: str
    updated_at: str

    nested: ClassVar[Mapping[str, type[FromDict]]] = {"checkpoint": RunCheckpoint}


@dataclass
class RunsOut:
    """Training runs, newest first."""

    runs: list[RunOut]


@dataclass
class CheckpointOut(FromDict):
    """A registered single-file Stable Diffusion checkpoint and how to reproduce it."""

    id: int
    name: str
    #: ``invalid`` when validation failed (the file is kept for inspection).
    status: Literal["ready", "invalid"]
    #: ``checkpoint`` (a whole model) or ``lora`` (its difference to the base).
    kind: Literal["checkpoint", "lora"]
    #: The checkpoint a LoRA was extracted from (null: a whole model, or unregistered).
    source_id: int | None
    #: A LoRA's rank (null for whole models).
    lora_rank: int | None
    base_model: str
    version: str
    run_id: int | None
    dataset_id: int | None
    #: sha256 over the sorted sha256s of the dataset's included images.
    dataset_hash: str | None
    steps: int | None
    final_loss: float | None
    path: str
    sha256: str
    size_bytes: int
    #: ``safetensors`` or ``ckpt``.
    format: str
    #: Half precision (fp16) weights.
    half: bool
    yaml_path: str | None
    sample_path: str | None
    config: dict[str, Any]
    created_at: str


@dataclass
class CheckpointDetail(CheckpointOut):
    """A checkpoint with whether each of its files is still where recorded."""

    #: ``path``, ``yaml_path``, ``sample_path``: present or not (null: none recorded).
    files_present: dict[str, bool | None]


@dataclass
class CheckpointDeleted(CheckpointOut):
    """An unregistered checkpoint and what became of its files."""

    deleted_files: list[str]
    #: Files kept, each with why.
    kept_files: dict[str, str]


@dataclass
class CheckpointsPage(FromDict):
    """Checkpoints, newest first, with the total that match."""

    total: int
    limit: int
    offset: int
    checkpoints: list[CheckpointOut]

    nested: ClassVar[Mapping[str, type[FromDict]]] = {"checkpoints": CheckpointOut}


@dataclass
class LossPoint(FromDict):
    """The training loss reported at one optimizer step."""

    step: int
    loss: float


@dataclass
class RunLosses(FromDict):
    """A run's loss curve, oldest step first (at most one point a second was logged)."""

    run_id: int
    points: list[LossPoint]

    nested: ClassVar[Mapping[str, type[FromDict]]] = {"points": LossPoint}


@dataclass
class SampleOut(FromDict):
    """An image rendered during training with the weights of that step."""

    step: int
    #: Which sample prompt (0-based); its seed is ``sample_seed + index``.
    index: int
    prompt: str
    seed: int
    #: Where the PNG is served (from the run's own samples folder only).
    url: str


@dataclass
class RunDetail(RunOut):
    """A training run with what it measured while training."""

    #: Validation loss on the held-out images, oldest step first (step 0: the base).
    validation: list[LossPoint]
    #: Sample images, by step then prompt.
    samples: list[SampleOut]
    #: Peak accelerator memory of the last training call (CUDA only), in bytes.
    peak_memory_bytes: int | None

    nested: ClassVar[Mapping[str, type[FromDict]]] = {
        **RunOut.nested,
        "validation": LossPoint,
        "samples": SampleOut,
    }
