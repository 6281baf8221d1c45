"""Typed settings read from ``VITDEX_*`` environment variables.

One class per concern; :func:`load_settings` reads them all once and lets the CLI override
single fields with its flags.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from vitdex.errors import ConfigError

DEFAULT_MODEL = "google/vit-base-patch16-224"
#: Final-layer [CLS] plus the [CLS] two thirds of the way up (layer 8 of ViT-B/16's 12):
#: mid layers keep more of the layout and texture of a photo, which suits near-duplicate
#: and style search. A relative depth fits every ViT, however many layers it has.
DEFAULT_SPACES = ("cls", "cls@2/3")

_LAYER_SPEC = re.compile(r"^(cls|mean)(?:@(?:(-?\d+)|(\d+)/(\d+)))?$")
_SPEC_HELP = (
    "use 'cls', 'mean', 'cls@K' or 'mean@K' (K = hidden-state index, 0 = patch "
    "embeddings, negative counts from the end) or 'cls@P/Q' or 'mean@P/Q' (a relative "
    "depth, 0 < P/Q <= 1, e.g. 2/3)"
)

Device = Literal["auto", "cpu", "cuda", "mps"]
Precision = Literal["auto", "fp32", "bf16", "fp16", "int8"]
Runtime = Literal["auto", "torch", "onnxruntime", "openvino"]


def _config(*, protected: tuple[str, ...] = ("model_validate", "model_dump")) -> SettingsConfigDict:
    # "model_*" fields (model_revision) are ours, not pydantic's reserved namespace.
    return SettingsConfigDict(env_prefix="VITDEX_", extra="ignore", protected_namespaces=protected)


def parse_layer_spec(spec: str) -> tuple[str, int | Fraction | None]:
    """Split a layer spec into its pooling and layer: ``cls``, ``mean`` → ``None`` (the
    final, layer-normed output); ``cls@K`` → the hidden-state index ``K``; ``cls@P/Q`` →
    the relative depth ``Fraction(P, Q)``, which only the model's layer count turns into
    an index (see :mod:`vitdex.indexer.spaces`).

    Raises :class:`ConfigError` for anything else, a depth outside ``(0, 1]`` included.
    """
    match = _LAYER_SPEC.match(spec.strip())
    if match is None:
        raise ConfigError(f"invalid layer spec {spec.strip()!r}: {_SPEC_HELP}")
    pooling, index, num, den = match.groups()
    if index is not None:
        return pooling, int(index)
    if num is None:
        return pooling, None
    if not 0 < int(num) <= int(den):
        raise ConfigError(
            f"invalid layer spec {spec.strip()!r}: a relative depth P/Q must lie in (0, 1], "
            "i.e. 0 < P <= Q (1/1 is the last layer)"
        )
    return pooling, Fraction(int(num), int(den))


def parse_layer_specs(specs: Sequence[str] | str) -> list[str]:
    """Layer specs (a list, or one comma-separated string) checked, stripped, each once.

    Raises :class:`ConfigError` for an invalid spec, or for none at all.
    """
    if isinstance(specs, str):
        specs = [part for part in specs.split(",") if part.strip()]
    seen: list[str] = []
    for spec in specs:
        parse_layer_spec(spec)
        if spec.strip() not in seen:
            seen.append(spec.strip())
    if not seen:
        raise ConfigError("at least one space (layer spec) is needed")
    return seen


class StorageSettings(BaseSettings):
    """Where vitdex keeps its catalog and vectors."""

    model_config = _config()

    home: Path = Field(default_factory=lambda: Path.home() / ".vitdex")
    database_url: str | None = None

    @field_validator("home", mode="after")
    @classmethod
    def _expand_home(cls, value: Path) -> Path:
        return value.expanduser().resolve()

    @property
    def resolved_database_url(self) -> str:
        """The configured database URL, or SQLite under ``home``."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{self.home / 'catalog.db'}"


class ModelSettings(BaseSettings):
    """Which ViT checkpoint embeds photos, where it runs, and which vectors it keeps."""

    model_config = _config()

    model: str = DEFAULT_MODEL
    model_revision: str | None = None
    #: Layer specs, comma-separated in VITDEX_SPACES (see :func:`parse_layer_spec`).
    spaces: Annotated[list[str], NoDecode] = Field(default_factory=lambda: list(DEFAULT_SPACES))
    device: Device = "auto"
    #: VITDEX_RUNTIME: torch, onnxruntime or openvino (an export under VITDEX_HOME, made
    #: on first use), or auto: the fastest installed one, measured once per model and CPU
    #: (torch on a GPU).
    runtime: Runtime = "auto"
    #: VITDEX_PRECISION; int8 runs on onnxruntime and openvino only (a ConfigError on torch).
    precision: Precision = "auto"
    batch_size: int = Field(default=16, ge=1, le=4096)
    #: Run the model through ``torch.compile`` (VITDEX_COMPILE): ~10% faster on a CPU
    #: after a 20-40 s compile, so worth it for long runs only.
    compile: bool = False

    @field_validator("precision", mode="after")
    @classmethod
    def _int8_runtime(cls, value: str, info: ValidationInfo) -> str:
        if value == "int8" and info.data.get("runtime") == "torch":
            raise ValueError(
                "int8 runs on VITDEX_RUNTIME=onnxruntime or openvino (or auto), not on torch; "
                "torch runs fp32, bf16 or fp16"
            )
        return value

    @field_validator("spaces", mode="before")
    @classmethod
    def _split_spaces(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [part for part in value.split(",") if part.strip()]
        return value

    @field_validator("spaces", mode="after")
    @classmethod
    def _check_spaces(cls, value: list[str]) -> list[str]:
        try:
            return parse_layer_specs(value)
        except ConfigError as exc:
            raise ValueError(exc.message) from None


class IndexSettings(BaseSettings):
    """How photo folders are read."""

    model_config = _config()

    max_megapixels: float = Field(default=100.0, gt=0)
    #: Decode threads allowed beside a running forward pass; 0 = automatic: none beside a
    #: CPU forward pass (every core decodes while the model waits), all cores but one
    #: beside a GPU's (see vitdex.indexer.cores).
    decode_workers: int = Field(default=0, ge=0, le=64)
    follow_symlinks: bool = True


class VectorSettings(BaseSettings):
    """Which vector store holds the vectors, and how it is reached."""

    model_config = _config()

    vector_backend: Literal["faiss", "qdrant"] = "faiss"
    #: Qdrant server or cluster URL (http://host:6333); with none, ``qdrant_path`` is used.
    qdrant_url: str | None = None
    qdrant_api_key: str | None = None
    #: Qdrant's embedded local mode (a folder; default VITDEX_HOME/qdrant). For tests and
    #: small libraries; a server is much faster past a few tens of thousands of vectors.
    qdrant_path: Path | None = None
    qdrant_collection_prefix: str = "vitdex_"
    qdrant_hnsw_m: int | None = Field(default=None, ge=4, le=128)
    qdrant_hnsw_ef_construct: int | None = Field(default=None, ge=4)
    qdrant_search_ef: int | None = Field(default=None, ge=1)
    qdrant_quantization: Literal["int8"] | None = None
    #: For a Qdrant cluster, set when a collection is created: shards spread the points
    #: over nodes, replicas keep copies of each shard, and a write waits for this many.
    qdrant_shards: int | None = Field(default=None, ge=1, le=1000)
    qdrant_replicas: int | None = Field(default=None, ge=1, le=100)
    qdrant_write_consistency: int | None = Field(default=None, ge=1, le=100)
    #: Keep the original vectors memory-mapped on the server's disk instead of in RAM.
    qdrant_on_disk: bool = False

    @field_validator("qdrant_write_consistency", mode="after")
    @classmethod
    def _reachable(cls, value: int | None, info: ValidationInfo) -> int | None:
        replicas = info.data.get("qdrant_replicas") or 1
        if value is not None and value > replicas:
            raise ValueError(f"a write cannot wait for {value} of {replicas} replica(s)")
        return value

    #: OpenMP threads per FAISS search; unset lets FAISS use every core. The API sets 1:
    #: its requests already run side by side, and nested threads fight over the cores.
    search_threads: int | None = Field(default=None, ge=1, le=256)


class ApiSettings(BaseSettings):
    """The HTTP API and its job queue."""

    model_config = _config()

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    #: Folders libraries may be registered under (comma-separated); empty allows none.
    allowed_roots: Annotated[list[Path], NoDecode] = Field(default_factory=list)
    #: Keys accepted as `Authorization: Bearer KEY` or `X-API-Key: KEY`; empty: no auth.
    api_keys: Annotated[list[str], NoDecode] = Field(default_factory=list)
    max_upload_mb: float = Field(default=50.0, gt=0)
    #: rq's Redis; unset runs jobs in a background thread of the API process.
    redis_url: str | None = None
    #: Prefix of the rq queue; the catalog's id is appended (see queue.rq_queue_name).
    queue_name: str = "vitdex"

    @field_validator("allowed_roots", "api_keys", mode="before")
    @classmethod
    def _split_list(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("allowed_roots", mode="after")
    @classmethod
    def _resolve_roots(cls, value: list[Path]) -> list[Path]:
        return [p.expanduser().resolve() for p in value]


#: Seconds between two heartbeats of a running job (see vitdex.db.recovery).
HEARTBEAT_S = 5.0
#: A running job whose heartbeat is older than this many seconds is an orphan.
STALE_AFTER_S = 60.0


class JobSettings(BaseSettings):
    """How a running job shows it is alive, and when a silent one counts as dead."""

    model_config = _config()

    #: VITDEX_JOB_HEARTBEAT_S: how often a running job writes its heartbeat.
    job_heartbeat_s: float = Field(default=HEARTBEAT_S, gt=0, le=3600)
    #: VITDEX_JOB_STALE_AFTER_S: a running job silent for longer is requeued (or, when
    #: its cancel was asked for, cancelled). Keep it a few heartbeats long.
    job_stale_after_s: float = Field(default=STALE_AFTER_S, gt=0, le=7 * 24 * 3600)

    @field_validator("job_stale_after_s", mode="after")
    @classmethod
    def _longer_than_heartbeat(cls, value: float, info: ValidationInfo) -> float:
        beat = info.data.get("job_heartbeat_s") or HEARTBEAT_S
        if value < 2 * beat:
            raise ValueError(
                f"must be at least twice VITDEX_JOB_HEARTBEAT_S ({beat:g} s), or live jobs "
                "would be taken for dead ones"
            )
        return value


class Settings:
    """All settings, grouped by concern."""

    def __init__(
        self,
        storage: StorageSettings,
        model: ModelSettings,
        index: IndexSettings,
        vectors: VectorSettings,
        api: ApiSettings,
        jobs: JobSettings,
    ) -> None:
        self.storage = storage
        self.model = model
        self.index = index
        self.vectors = vectors
        self.api = api
        self.jobs = jobs


def load_settings(**overrides: Any) -> Settings:
    """Read the environment once and apply overrides (CLI flags), skipping ``None`` values.

    Override keys are field names of any settings class (``home``, ``model``,
    ``batch_size``...). A value that fails validation raises :class:`ConfigError`.
    """
    from pydantic import ValidationError

    given = {k: v for k, v in overrides.items() if v is not None}
    groups: dict[str, type[BaseSettings]] = {
        "storage": StorageSettings,
        "model": ModelSettings,
        "index": IndexSettings,
        "vectors": VectorSettings,
        "api": ApiSettings,
        "jobs": JobSettings,
    }
    built: dict[str, Any] = {}
    for name, cls in groups.items():
        mine = {k: v for k, v in given.items() if k in cls.model_fields}
        try:
            built[name] = cls(**mine)
        except ValidationError as exc:
            problems = "; ".join(
                f"VITDEX_{'_'.join(str(p) for p in err['loc']).upper()}: {err['msg']}"
                for err in exc.errors()
            )
            raise ConfigError(f"invalid settings: {problems}") from None
    unknown = set(given) - {f for cls in groups.values() for f in cls.model_fields}
    if unknown:
        raise ConfigError(f"unknown settings: {', '.join(sorted(unknown))}")
    return Settings(**built)
