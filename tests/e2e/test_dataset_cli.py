"""`vitdex dataset ...` end to end: index, create, audit, edit, export, delete."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from tests.photos import make_photo
from vitdex.cli import cli


def vitdex(*args: str, code: int = 0) -> Result:
    # Click's runner in-process: the model and the catalog load once per call, not per
    # interpreter start, which keeps this suite fast on two cores.
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    assert result.exit_code == code, f"vitdex {args} exited {result.exit_code}:\n{result.output}"
    return result


def as_json(result: Result) -> Any:
    return json.loads(result.stdout)


@pytest.fixture
def indexed(vitdex_env: dict[str, str], tmp_path: Path) -> Path:
    lib = tmp_path / "Pictures"
    for i in range(14):
        make_photo(lib / f"img{i:02d}.jpg", size=(96, 72), seed=i)
    make_photo(lib / "img00-small.jpg", size=(64, 48), seed=0, quality=60)
    summary = as_json(vitdex("index", str(lib), "--json", "--no-progress"))
    assert summary["embedded"] == 15
    return lib


def test_dataset_commands(indexed: Path, tmp_path: Path) -> None:
    lib = indexed
    seed_file = lib / "img00.jpg"
    found = as_json(
        vitdex("similar", str(lib / "img05.jpg"), "-k", "1", "--include-self", "--json")
    )
    seed_id = found[0]["hits"][0]["image_id"]
    created = as_json(
        vitdex(
            "dataset", "create", "rex", "--seed", str(seed_file), str(seed_id),
            "--k", "8", "--dedup", "0.99", "--max", "6",
            "--prompt", "a photo of sks dog", "--class-prompt", "a photo of a dog",
            "--class-count", "2", "--json",
        )
    )  # fmt: skip
    dataset_id = created["dataset_id"]
    items = created["items"]
    instance = [it for it in items if it["role"] == "instance"]
    assert [it["reason"] for it in instance[:2]] == ["seed", "seed"]
    assert len(instance) == 2 + 8
    assert sum(it["included"] for it in instance) <= 6
    assert sum(it["included"] for it in items if it["role"] == "class") == 2
    assert {"image_id", "path", "score", "included", "reason", "duplicate_of"} <= set(items[0])
    assert created["dataset"]["params"]["seeds"][1] == {"image_id": seed_id}

    listed = as_json(vitdex("dataset", "list", "--json"))
    assert [d["name"] for d in listed["datasets"]] == ["rex"]
    assert listed["datasets"][0]["counts"]["class"] == 2
    assert "rex" in vitdex("dataset", "list").stdout

    shown = as_json(vitdex("dataset", "show", str(dataset_id), "--role", "class", "--json"))
    assert {it["role"] for it in shown["items"]} == {"class"}
    table = vitdex("dataset", "show", "rex").stdout
    assert "seed" in table and "a photo of sks dog" in table

    neighbour = next(it for it in instance if it["reason"] == "neighbour")
    out = vitdex("dataset", "exclude", "rex", str(neighbour["image_id"])).stdout
    assert f"excluded instance image {neighbour['image_id']}" in out
    back = as_json(vitdex("dataset", "include", "rex", str(neighbour["image_id"]), "--json"))
    assert back["changed"][0]["reason"] == "included_by_hand"

    folder = tmp_path / "train-data"
    exported = as_json(
        vitdex("dataset", "export", "rex", "--out", str(folder), "--resolution", "64", "--json")
    )
    assert exported["path"] == str(folder) and exported["class"] == 2
    assert len(list((folder / "instance").glob("*.png"))) == exported["instance"]
    assert len(list((folder / "instance").glob("*.txt"))) == exported["instance"]
    config = tomllib.loads((folder / "dataset.toml").read_text("utf-8"))
    assert [s.get("is_reg", False) for s in config["datasets"][0]["subsets"]] == [False, True]
    # Without --json: a progress bar on stderr and a summary on stdout.
    plain = vitdex("dataset", "export", "rex", "--out", str(folder), "--resolution", "64")
    assert "kohya config" in plain.stdout and "exporting" in plain.stderr

    # Errors: one line, exit code 2, no traceback.
    again = vitdex("dataset", "create", "rex", "--seed", "1", "--prompt", "p", code=2)
    assert "already exists" in again.stderr and "Traceback" not in again.stderr
    missing = vitdex("dataset", "show", "nope", code=2)
    assert "no dataset named 'nope'" in missing.stderr
    huge = vitdex("dataset", "show", "99999999999999999999", code=2)
    assert "no dataset with id 99999999999999999999" in huge.stderr
    vitdex("dataset", "exclude", "rex", "99999999999999999999", code=2)
    not_candidate = vitdex("dataset", "exclude", "rex", "424242", code=2)
    assert "no image with id 424242" in not_candidate.stderr
    not_a_seed = vitdex("dataset", "create", "x", "--seed", "no-such.jpg", "--prompt", "p", code=2)
    assert "neither a file nor a catalog image id" in not_a_seed.stderr
    no_seed = vitdex("dataset", "create", "x", "--prompt", "p", code=2)
    assert "at least one --seed" in no_seed.stderr
    no_class_prompt = vitdex(
        "dataset", "create", "x", "--seed", "1", "--prompt", "p", "--class-count", "3", code=2
    )
    assert "class prompt" in no_class_prompt.stderr
    (folder / "mine.txt").write_text("keep me")
    refused = vitdex("dataset", "export", "rex", "--out", str(folder), code=2)
    assert "not a vitdex export" in refused.stderr

    deleted = as_json(vitdex("dataset", "delete", "rex", "--json"))
    assert deleted == {"id": dataset_id, "name": "rex", "export_path": str(folder), "deleted": True}
    assert as_json(vitdex("dataset", "list", "--json"))["datasets"] == []
    assert (folder / "dataset.toml").exists()  # exported files stay


def test_samplers_min_distance_and_tags(indexed: Path) -> None:
    from vitdex.config import load_settings
    from vitdex.db import make_engine, session_factory
    from vitdex.db.review_models import ImageTag, Tag

    # Tag five photos directly in the catalog: the candidates must come from them.
    sessions = session_factory(make_engine(load_settings().storage.resolved_database_url))
    tagged = [3, 5, 7, 9, 11]
    with sessions() as session:
        tag = Tag(name="Rex", key="rex")
        session.add(tag)
        session.flush()
        session.add_all([ImageTag(image_id=i, tag_id=tag.id) for i in tagged])
        session.commit()

    diverse = as_json(
        vitdex(
            "dataset", "create", "spread", "--seed", "1", "--k", "10", "--max", "4",
            "--sampler", "diverse", "--min-distance", "0.005", "--hide-duplicates",
            "--prompt", "p", "--json",
        )
    )  # fmt: skip
    params = diverse["dataset"]["params"]
    assert (params["sampler"], params["min_distance"], params["dedup"]) == ("diverse", 0.005, 0.995)
    assert params["hide_duplicates"] is True
    included = [it for it in diverse["items"] if it["included"]]
    assert [it["reason"] for it in included] == ["seed"] + ["diverse"] * 3
    assert "not_sampled" in {it["reason"] for it in diverse["items"]}

    table = vitdex(
        "dataset", "create", "groups", "--seed", "1", "--k", "10", "--max", "4",
        "--sampler", "representative", "--tag", "rex", "--prompt", "p",
    ).stdout  # fmt: skip
    assert "representative of cluster" in table and "not_sampled (cluster" in table
    assert "curated by: representative sampler; min distance 0.05; tags rex" in table
    shown = as_json(vitdex("dataset", "show", "groups", "--json"))
    candidates = [it for it in shown["items"] if it["rank"] > 0]
    assert sorted(it["image_id"] for it in candidates) == tagged
    assert len(shown["dataset"]["params"]["clusters"]) == 3

    contradict = vitdex(
        "dataset", "create", "x", "--seed", "1", "--prompt", "p",
        "--dedup", "0.95", "--min-distance", "0.2", code=2,
    )  # fmt: skip
    assert "contradict" in contradict.stderr
    no_max = vitdex(
        "dataset", "create", "x", "--seed", "1", "--prompt", "p", "--sampler", "diverse", code=2
    )
    assert "give max" in no_max.stderr and "Traceback" not in no_max.stderr
    unknown_tag = vitdex(
        "dataset", "create", "x", "--seed", "1", "--prompt", "p", "--tag", "rx", code=2
    )
    assert "--tag: no photo has tag 'rx'; close values: Rex" in unknown_tag.stderr


def test_words_captions_and_kohya_layout(indexed: Path, tmp_path: Path) -> None:
    from vitdex.training.kohya import read_kohya_layout

    created = as_json(
        vitdex(
            "dataset", "create", "rex", "--seed", "1", "--k", "4", "--trigger-word", "sks",
            "--class-word", "dog", "--class-count", "2", "--json",
        )
    )  # fmt: skip
    dataset = created["dataset"]
    assert dataset["prompt"] == "a photo of sks dog"
    assert dataset["class_prompt"] == "a photo of a dog"
    assert (
        "trigger word: sks; class word: dog; crop mode: square"
        in vitdex("dataset", "show", "rex").stdout
    )

    changed = as_json(vitdex("dataset", "set", "rex", "--trigger-word", "ohwx", "--json"))
    assert changed["prompt"] == "a photo of ohwx dog"
    plain = vitdex("dataset", "set", "rex", "--crop-mode", "buckets").stdout
    assert "crop mode: buckets" in plain
    bad = vitdex("dataset", "set", "rex", "--crop-mode", "round", code=2)
    assert "round" in bad.stderr
    empty = vitdex("dataset", "set", "rex", code=2)
    assert "nothing to change" in empty.stderr
    vitdex("dataset", "set", "rex", "--crop-mode", "square")

    instance = [it for it in created["items"] if it["role"] == "instance" and it["included"]]
    first = instance[0]["image_id"]
    own = as_json(vitdex("dataset", "caption", "rex", str(first), "ohwx dog, close up", "--json"))
    assert (own["caption"], own["caption_source"]) == ("ohwx dog, close up", "item")
    listed = as_json(vitdex("dataset", "captions", "list", "rex", "--role", "instance", "--json"))
    sources = {c["image_id"]: c["caption_source"] for c in listed["captions"]}
    assert sources[first] == "item"
    assert {s for i, s in sources.items() if i != first} == {"default"}
    table = vitdex("dataset", "captions", "list", "rex").stdout
    assert "ohwx dog, close up" in table and "default" in table

    before = as_json(vitdex("dataset", "captions", "list", "rex", "--json"))
    dry = as_json(
        vitdex("dataset", "captions", "replace", "rex", "dog", "corgi", "--dry-run", "--json")
    )
    assert dry["changed"] == dry["scanned"] == len(created["items"])
    # A dry run writes nothing.
    assert as_json(vitdex("dataset", "captions", "list", "rex", "--json")) == before
    text = vitdex(
        "dataset", "captions", "replace", "rex", r"(\w+) dog", r"\1 corgi", "--regex",
        "--role", "instance",
    ).stdout  # fmt: skip
    assert "- a photo of ohwx dog" in text and "+ a photo of ohwx corgi" in text
    candidates = [it for it in created["items"] if it["role"] == "instance"]
    assert f"changed {len(candidates)} of {len(candidates)} captions" in text
    bad_regex = vitdex("dataset", "captions", "replace", "rex", "(", "x", "--regex", code=2)
    assert "invalid regular expression" in bad_regex.stderr
    assert "Traceback" not in bad_regex.stderr
    cleared = as_json(vitdex("dataset", "caption", "rex", str(first), "--clear", "--json"))
    assert cleared["caption_source"] == "default"
    vitdex("dataset", "caption", "rex", str(first), code=2)  # neither TEXT nor --clear

    folder = tmp_path / "kohya-out"
    out = vitdex("dataset", "export", "rex", "--out", str(folder), "--resolution", "64")
    assert f"kohya folder layout in {folder / 'kohya'}" in out.stdout
    subsets = read_kohya_layout(folder / "kohya")
    assert [(s.name, s.is_reg, len(s.images)) for s in subsets] == [
        ("ohwx dog", False, len(instance)),
        ("dog", True, 2),
    ]
    captions = as_json(vitdex("dataset", "captions", "list", "rex", "--json"))["captions"]
    included = [c["caption"] for c in captions if c["included"] and c["role"] == "instance"]
    assert sorted(str(c) for _, c in subsets[0].images) == sorted(included)
    assert {c for _, c in subsets[1].images} == {"a photo of a dog"}
