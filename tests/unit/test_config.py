"""Settings: VITDEX_* variables, CLI overrides, validation messages."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import pytest

from vitdex.config import DEFAULT_MODEL, load_settings, parse_layer_spec
from vitdex.errors import ConfigError


def test_defaults(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    settings = load_settings()
    assert settings.storage.home == (tmp_path / ".vitdex").resolve()
    assert settings.storage.resolved_database_url == f"sqlite:///{tmp_path / '.vitdex'}/catalog.db"
    assert settings.model.model == DEFAULT_MODEL
    # The final layer and the one two thirds up: cls@8 on ViT-B/16, and valid on any ViT.
    assert settings.model.spaces == ["cls", "cls@2/3"]
    assert (settings.model.device, settings.model.precision) == ("auto", "auto")


def test_environment_then_overrides(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("VITDEX_HOME", str(tmp_path / "h"))
    monkeypatch.setenv("VITDEX_SPACES", " cls , mean@-2,cls ")
    monkeypatch.setenv("VITDEX_BATCH_SIZE", "3")
    monkeypatch.setenv("VITDEX_MAX_MEGAPIXELS", "12.5")
    monkeypatch.setenv("VITDEX_DATABASE_URL", "postgresql://u@h/db")
    settings = load_settings(batch_size=7, model="/models/vit", spaces=None)
    assert settings.storage.home == (tmp_path / "h").resolve()
    assert settings.model.spaces == ["cls", "mean@-2"]
    assert settings.model.batch_size == 7
    assert settings.model.model == "/models/vit"
    assert settings.index.max_megapixels == 12.5
    assert settings.storage.resolved_database_url == "postgresql://u@h/db"


@pytest.mark.parametrize(
    ("name", "value", "needle"),
    [
        ("VITDEX_SPACES", "cls@x", "VITDEX_SPACES"),
        ("VITDEX_SPACES", "cls,cls@3/2", "VITDEX_SPACES.*relative depth"),
        ("VITDEX_BATCH_SIZE", "0", "VITDEX_BATCH_SIZE"),
        ("VITDEX_PRECISION", "int3", "VITDEX_PRECISION"),
        ("VITDEX_MAX_MEGAPIXELS", "-1", "VITDEX_MAX_MEGAPIXELS"),
        ("VITDEX_QDRANT_SHARDS", "0", "VITDEX_QDRANT_SHARDS"),
        ("VITDEX_QDRANT_WRITE_CONSISTENCY", "2", "VITDEX_QDRANT_WRITE_CONSISTENCY.*of 1 replica"),
    ],
)
def test_bad_values_name_the_variable(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, needle: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match=needle):
        load_settings()


def test_unknown_override() -> None:
    with pytest.raises(ConfigError, match="unknown settings: colour"):
        load_settings(colour="blue")


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("cls", ("cls", None)),
        ("cls@8", ("cls", 8)),
        ("mean@-4", ("mean", -4)),
        ("cls@2/3", ("cls", Fraction(2, 3))),
        (" mean@4/6 ", ("mean", Fraction(2, 3))),
        ("cls@1/1", ("cls", Fraction(1))),
    ],
)
def test_parse_layer_spec(spec: str, expected: tuple[str, int | Fraction | None]) -> None:
    assert parse_layer_spec(spec) == expected


@pytest.mark.parametrize(
    "spec",
    ["", "pooler", "cls@", "cls@1.5", "max@3", "cls@/3", "cls@2/", "cls@-1/3", "cls@2/3/4"],
)
def test_parse_layer_spec_rejects(spec: str) -> None:
    with pytest.raises(ConfigError, match="layer spec"):
        parse_layer_spec(spec)


@pytest.mark.parametrize("spec", ["cls@0/3", "cls@4/3", "mean@2/0", "cls@0/0"])
def test_relative_depth_must_lie_in_0_to_1(spec: str) -> None:
    with pytest.raises(ConfigError, match=r"relative depth P/Q must lie in \(0, 1\]"):
        parse_layer_spec(spec)
