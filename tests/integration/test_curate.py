"""Curating, editing and exporting datasets over a library indexed with the tiny ViT."""

from __future__ import annotations

import shutil
import tomllib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from sqlalchemy.orm import Session, sessionmaker

from tests.photos import make_photo
from vitdex.config import Settings, load_settings
from vitdex.db import datasets, ensure_schema, make_engine, repo, session_factory
from vitdex.db.review_models import DuplicateGroup, DuplicateMember, ImageTag, Tag
from vitdex.errors import ConfigError, ConflictError, NotFoundError
from vitdex.indexer.embedder import Embedder
from vitdex.indexer.pipeline import Indexer
from vitdex.training.curate import CurateOptions, create_dataset, exclude_images, include_images
from vitdex.training.curate.samplers import farthest_point
from vitdex.training.export import export_dataset
from vitdex.vectors.factory import open_store


@dataclass
class Library:
    settings: Settings
    sessions: sessionmaker[Session]
    root: Path
    ids: dict[str, int]  # file name -> image id
    vectors: dict[int, np.ndarray]  # image id -> unit vector (space "cls")


@pytest.fixture
def library(vitdex_env: dict[str, str], tmp_path: Path) -> Library:
    """26 photos: 24 scenes, an exact copy of p03 and a smaller re-compressed p05."""
    root = tmp_path / "lib"
    for i in range(24):
        make_photo(root / f"p{i:02d}.jpg", size=(96, 72), seed=i)
    shutil.copy(root / "p03.jpg", root / "p03-copy.jpg")
    make_photo(root / "p05-small.jpg", size=(64, 48), seed=5, quality=60)
    settings = load_settings()
    engine = make_engine(settings.storage.resolved_database_url)
    ensure_schema(engine)
    sessions = session_factory(engine)
    Indexer(settings, sessions, Embedder.from_settings(settings.model)).run([root])
    with sessions() as session:
        ids = {Path(repo.get_image(session, i).path).name: i for i in range(1, 27)}
    store = open_store(settings, "cls", 32)
    all_ids = sorted(ids.values())
    vecs = store.get(np.asarray(all_ids, np.int64))
    store.close()
    vecs = vecs / np.linalg.norm(vecs, axis=1, keepdims=True)
    return Library(settings, sessions, root, ids, dict(zip(all_ids, vecs, strict=True)))


def cos(lib: Library, a: int, b: int) -> float:
    return float(lib.vectors[a] @ lib.vectors[b])


def by_role(items: list[dict[str, Any]], role: str) -> list[dict[str, Any]]:
    return [item for item in items if item["role"] == role]


def test_curation_rules(library: Library) -> None:
    lib = library
    seed_a = lib.ids["p00.jpg"]
    # A file seed with the content of p03 resolves to the catalog image of that content.
    file_seed = lib.root / "p03.jpg"
    copies = {lib.ids["p03.jpg"], lib.ids["p03-copy.jpg"]}
    scores_all = {i: max(cos(lib, i, seed_a), cos(lib, i, min(copies))) for i in lib.vectors}
    # A threshold inside the range of scores, so some candidates fall below it.
    others = sorted(
        (s for i, s in scores_all.items() if i not in {seed_a, min(copies)}), reverse=True
    )
    min_score = (others[7] + others[8]) / 2

    result = create_dataset(
        lib.settings,
        lib.sessions,
        "dog",
        [seed_a, file_seed],
        prompt="a photo of sks dog",
        options=CurateOptions(k=12, min_score=min_score, dedup=0.99),
    )
    dataset = result["dataset"]
    assert result["dataset_id"] == dataset["id"]
    assert dataset["params"]["seeds"] == [
        {"image_id": seed_a},
        {"file": str(file_seed), "image_id": min(copies)},
    ]
    assert dataset["space"] == "cls" and dataset["params"]["score"] == "max"
    items = result["items"]
    assert not by_role(items, "class")

    seeds = [it for it in items if it["reason"] == "seed"]
    assert [s["image_id"] for s in seeds] == [seed_a, min(copies)]
    assert all(s["included"] and s["score"] is None and s["rank"] == 0 for s in seeds)

    # The candidates are the k best by max cosine to the seeds, ranked 1..k.
    candidates = [it for it in items if it["reason"] != "seed"]
    assert [c["rank"] for c in candidates] == list(range(1, 13))
    want = sorted(
        (i for i in lib.vectors if i not in {seed_a, min(copies)}),
        key=lambda i: (-scores_all[i], i),
    )[:12]
    assert [c["image_id"] for c in candidates] == want
    for c in candidates:
        assert c["score"] == pytest.approx(scores_all[c["image_id"]], abs=1e-4)

    # The exact copy of a seed is its near-duplicate.
    copy = next(c for c in candidates if c["image_id"] == max(copies))
    assert copy["rank"] == 1 and copy["score"] == pytest.approx(1.0, abs=1e-4)
    assert (copy["included"], copy["reason"], copy["duplicate_of"]) == (
        False,
        "near_duplicate",
        min(copies),
    )

    kept: list[int] = [seed_a, min(copies)]
    for c in candidates:
        if c["score"] < min_score:
            assert (c["included"], c["reason"]) == (False, "below_min_score")
            continue
        if c["reason"] == "near_duplicate":
            assert c["duplicate_of"] in kept
            assert cos(lib, c["image_id"], c["duplicate_of"]) >= 0.99 - 1e-6
            continue
        assert (c["included"], c["reason"]) == (True, "neighbour")
        assert all(cos(lib, c["image_id"], k) < 0.99 for k in kept)
        kept.append(c["image_id"])
    assert Counter(c["reason"] for c in candidates)["below_min_score"] >= 1
    counts = dataset["counts"]
    assert counts["instance"] == len(kept)
    assert counts["candidates"] == 14 and counts["excluded"] == 14 - len(kept)

    with lib.sessions() as session:
        included = datasets.included_items(session, dataset["id"])
        assert [item.image_id for item, _ in included] == kept
        assert all(Path(image.path).is_file() for _, image in included)


def test_max_mmr_class_images_and_errors(library: Library) -> None:
    lib = library
    seed = lib.ids["p00.jpg"]
    common = dict(k=10, dedup=0.995)

    capped = create_dataset(
        lib.settings,
        lib.sessions,
        "capped",
        [seed],
        prompt="a photo of sks dog",
        options=CurateOptions(max_items=4, **common),  # type: ignore[arg-type]
    )["items"]
    included = [it["image_id"] for it in capped if it["included"]]
    assert len(included) == 4 and included[0] == seed
    eligible = [it for it in capped if it["reason"] in ("neighbour", "over_max")]
    # Without MMR the best-scoring eligible candidates are taken.
    assert [it["reason"] for it in eligible] == ["neighbour"] * 3 + ["over_max"] * (
        len(eligible) - 3
    )

    # MMR with lambda 1 is ranking by score; with a low lambda it prefers spread.
    by_score = create_dataset(
        lib.settings,
        lib.sessions,
        "mmr1",
        [seed],
        prompt="p",
        options=CurateOptions(max_items=4, mmr=1.0, **common),  # type: ignore[arg-type]
    )["items"]
    assert [it["image_id"] for it in by_score if it["included"]] == included
    diverse = create_dataset(
        lib.settings,
        lib.sessions,
        "mmr0",
        [seed],
        prompt="p",
        options=CurateOptions(max_items=4, mmr=0.0, **common),  # type: ignore[arg-type]
    )["items"]
    chosen = [it["image_id"] for it in diverse if it["included"]]
    assert len(chosen) == 4

    def spread(ids: list[int]) -> float:
        return max(cos(lib, a, b) for a in ids for b in ids if a < b)

    assert spread(chosen) <= spread(included) + 1e-6

    # Class images: drawn after the instance candidates, none close to the subject.
    withclass = create_dataset(
        lib.settings,
        lib.sessions,
        "with-class",
        [seed],
        prompt="a photo of sks dog",
        class_prompt="a photo of a dog",
        options=CurateOptions(class_count=3, **common),  # type: ignore[arg-type]
    )
    items = withclass["items"]
    instance_ids = {it["image_id"] for it in by_role(items, "instance")}
    instance_in = [it["image_id"] for it in by_role(items, "instance") if it["included"]]
    classes = by_role(items, "class")
    drawn = [it for it in classes if it["included"]]
    assert len(drawn) == 3 and all(it["reason"] == "class" for it in drawn)
    assert all(it["rank"] > 10 for it in classes)
    assert not instance_ids & {it["image_id"] for it in classes}
    for it in drawn:
        assert all(cos(lib, it["image_id"], i) < 0.995 for i in instance_in)
    scores = [it["score"] for it in classes]
    assert scores == sorted(scores, reverse=True)
    assert withclass["dataset"]["counts"]["class"] == 3

    # With a label filter every class image carries that predicted label.
    with lib.sessions() as session:
        labels = repo.labels_of(session, list(lib.vectors))
    label = Counter(lab for tops in labels.values() for lab, _ in tops).most_common(1)[0][0]
    labelled = create_dataset(
        lib.settings,
        lib.sessions,
        "labelled",
        [seed],
        prompt="p",
        class_prompt="c",
        options=CurateOptions(class_count=2, class_label=label, **common),  # type: ignore[arg-type]
    )
    for it in by_role(labelled["items"], "class"):
        assert label in [lab for lab, _ in labels[it["image_id"]]]
    # A class label no photo has would leave the class set empty: refused, with the
    # stored spelling offered.
    with pytest.raises(
        ConfigError, match=f"no photo has label '{label.upper()}'; close values: {label}"
    ):
        create_dataset(
            lib.settings,
            lib.sessions,
            "mislabelled",
            [seed],
            prompt="p",
            class_prompt="c",
            options=CurateOptions(class_count=2, class_label=label.upper(), **common),  # type: ignore[arg-type]
        )

    with pytest.raises(ConflictError, match="already exists"):
        create_dataset(lib.settings, lib.sessions, "capped", [seed], prompt="p")
    with pytest.raises(NotFoundError, match="no image with id 999"):
        create_dataset(lib.settings, lib.sessions, "x", [999], prompt="p")
    with pytest.raises(ConfigError, match="unknown space"):
        create_dataset(
            lib.settings, lib.sessions, "x", [seed], prompt="p", options=CurateOptions(space="nope")
        )
    with pytest.raises(ConfigError, match="class prompt"):
        create_dataset(
            lib.settings,
            lib.sessions,
            "x",
            [seed],
            prompt="p",
            options=CurateOptions(class_count=3),
        )
    for bad in (CurateOptions(k=0), CurateOptions(dedup=1.5), CurateOptions(mmr=2.0)):
        with pytest.raises(ConfigError):
            create_dataset(lib.settings, lib.sessions, "x", [seed], prompt="p", options=bad)
    with pytest.raises(ConfigError, match="cannot be a number"):
        create_dataset(lib.settings, lib.sessions, "123", [seed], prompt="p")


def test_samplers_min_distance_and_candidate_filters(library: Library) -> None:
    lib = library
    seed = lib.ids["p00.jpg"]
    for sampler in ("diverse", "representative"):
        options = CurateOptions(k=12, max_items=5, min_distance=0.005, sampler=sampler)
        made = create_dataset(
            lib.settings, lib.sessions, sampler, [seed], prompt="p", options=options
        )
        params, items = made["dataset"]["params"], by_role(made["items"], "instance")
        assert (params["sampler"], params["min_distance"], params["dedup"]) == (
            sampler,
            0.005,
            0.995,
        )
        included = [it["image_id"] for it in items if it["included"]]
        assert len(included) == 5 and included[0] == seed
        assert all(cos(lib, a, b) < 0.995 for a in included for b in included if a < b)
        eligible = [it for it in items if it["reason"] in (sampler, "diverse", "not_sampled")]
        assert {it["reason"] for it in eligible if not it["included"]} == {"not_sampled"}
        if sampler == "diverse":
            assert {it["reason"] for it in eligible if it["included"]} == {"diverse"}
            # The picks are farthest-point sampling from the seed over the eligible ones.
            vecs = np.stack([lib.vectors[it["image_id"]] for it in eligible]).astype(np.float32)
            seed_vec = lib.vectors[seed][None].astype(np.float32)
            want = farthest_point(range(len(eligible)), vecs, seed_vec, 4)
            assert set(included[1:]) == {eligible[j]["image_id"] for j in want}
        else:
            clusters = params["clusters"]
            reps = {it["image_id"] for it in eligible if it["reason"] == "representative"}
            assert len(clusters) == 4 and {c["image_id"] for c in clusters} == reps
            members = sorted(m for c in clusters for m in c["members"])
            assert members == sorted(it["image_id"] for it in eligible)
            assert sum(c["size"] for c in clusters) == len(eligible)
    with pytest.raises(ConfigError, match="give max"):
        create_dataset(
            lib.settings,
            lib.sessions,
            "x",
            [seed],
            prompt="p",
            options=CurateOptions(sampler="diverse"),
        )

    # Tags restrict the instance candidates (not the seed, not the class images).
    tagged = sorted(lib.ids[f"p{i:02d}.jpg"] for i in range(10, 20))
    mark_copy = lib.ids["p03-copy.jpg"]
    with lib.sessions() as session:
        tag = Tag(name="Rex", key="rex")
        group = DuplicateGroup(kind="exact", status="kept", keeper_id=lib.ids["p03.jpg"])
        session.add_all([tag, group])
        session.flush()
        session.add_all([ImageTag(image_id=i, tag_id=tag.id) for i in tagged])
        session.add_all(
            [
                DuplicateMember(group_id=group.id, image_id=i)
                for i in (lib.ids["p03.jpg"], mark_copy)
            ]
        )
        session.commit()
    made = create_dataset(
        lib.settings,
        lib.sessions,
        "rex",
        [seed],
        prompt="p",
        class_prompt="c",
        options=CurateOptions(k=6, tags=("REX",), class_count=4, dedup=None),
    )
    candidates = [it for it in by_role(made["items"], "instance") if it["rank"] > 0]
    assert len(candidates) == 6 and {it["image_id"] for it in candidates} <= set(tagged)
    want = sorted(tagged, key=lambda i: (-cos(lib, i, seed), i))[:6]
    assert [it["image_id"] for it in candidates] == want
    classes = by_role(made["items"], "class")
    assert len(classes) == 4 and not {it["image_id"] for it in classes} & set(want)
    assert made["dataset"]["params"]["tags"] == ["REX"]
    # Hidden duplicates are never candidates, instance or class; shown, the copy is one.
    every = CurateOptions(k=25, class_count=0, dedup=None)
    shown = create_dataset(lib.settings, lib.sessions, "all", [seed], prompt="p", options=every)
    hidden = create_dataset(
        lib.settings,
        lib.sessions,
        "hidden",
        [seed],
        prompt="p",
        class_prompt="c",
        options=CurateOptions(k=20, class_count=5, dedup=None, hide_duplicates=True),
    )
    assert mark_copy in {it["image_id"] for it in shown["items"]}
    assert mark_copy not in {it["image_id"] for it in hidden["items"]}
    assert len(hidden["items"]) == 1 + 20 + 4  # the seed, 20 candidates, the 4 left
    assert hidden["dataset"]["params"]["hide_duplicates"] is True
    with pytest.raises(ConfigError, match="--tag: no photo has tag 'rx'; close values: Rex"):
        create_dataset(
            lib.settings, lib.sessions, "x", [seed], prompt="p", options=CurateOptions(tags=("rx",))
        )


def test_edit_and_export(library: Library, tmp_path: Path) -> None:
    lib = library
    seed = lib.ids["p00.jpg"]
    created = create_dataset(
        lib.settings,
        lib.sessions,
        "pets",
        [seed, lib.root / "p03.jpg"],
        prompt="a photo of sks dog",
        class_prompt="a photo of a dog",
        options=CurateOptions(k=8, dedup=0.99, class_count=2),
    )
    items = created["items"]
    neighbour = next(it for it in items if it["reason"] == "neighbour")
    duplicate = next(it for it in items if it["reason"] == "near_duplicate")
    outsider = next(i for i in lib.vectors if i not in {it["image_id"] for it in items})

    edited = exclude_images(lib.sessions, "pets", [neighbour["image_id"]])
    assert [(c["image_id"], c["included"], c["reason"]) for c in edited["changed"]] == [
        (neighbour["image_id"], False, "excluded_by_hand")
    ]
    edited = include_images(lib.sessions, created["dataset_id"], [duplicate["image_id"], outsider])
    changed = {c["image_id"]: c for c in edited["changed"]}
    assert changed[duplicate["image_id"]]["reason"] == "included_by_hand"
    assert changed[duplicate["image_id"]]["duplicate_of"] == duplicate["duplicate_of"]
    added = changed[outsider]
    assert (added["role"], added["included"], added["score"]) == ("instance", True, None)
    assert added["rank"] == max(it["rank"] for it in by_role(items, "instance")) + 1
    with pytest.raises(NotFoundError, match="not a candidate"):
        exclude_images(
            lib.sessions,
            "pets",
            [
                next(
                    i
                    for i in lib.vectors
                    if i != outsider and i not in {it["image_id"] for it in items}
                )
            ],
        )
    with pytest.raises(NotFoundError, match="no image with id 4242"):
        include_images(lib.sessions, "pets", [4242])
    with pytest.raises(NotFoundError, match="no dataset named"):
        include_images(lib.sessions, "cats", [seed])

    # Export: instance/ and class/ folders of PNG + caption, and a kohya TOML.
    calls: list[tuple[int, int]] = []
    out = tmp_path / "export"
    result = export_dataset(
        lib.settings,
        lib.sessions,
        "pets",
        out,
        resolution=64,
        progress=lambda done, total: calls.append((done, total)),
    )
    with lib.sessions() as session:
        want_instance = datasets.included_items(session, created["dataset_id"], "instance")
        want_class = datasets.included_items(session, created["dataset_id"], "class")
    n_inst, n_class = len(want_instance), len(want_class)
    assert (result.instance, result.class_images, result.skipped) == (n_inst, n_class, [])
    assert n_class == 2
    assert calls[0] == (0, n_inst + n_class) and calls[-1] == (n_inst + n_class,) * 2
    assert sorted(p.name for p in (out / "instance").iterdir()) == sorted(
        f"{i:04d}{ext}" for i in range(n_inst) for ext in (".png", ".txt")
    )
    assert sorted(p.name for p in (out / "class").iterdir()) == [
        "0000.png",
        "0000.txt",
        "0001.png",
        "0001.txt",
    ]
    for png in (out / "instance").glob("*.png"):
        with Image.open(png) as img:
            assert (img.size, img.mode) == ((64, 64), "RGB")
        assert png.with_suffix(".txt").read_text("utf-8") == "a photo of sks dog\n"
    assert (out / "class" / "0001.txt").read_text("utf-8") == "a photo of a dog\n"

    config = tomllib.loads((out / "dataset.toml").read_text("utf-8"))
    assert config["general"]["caption_extension"] == ".txt"
    (ds,) = config["datasets"]
    assert ds["resolution"] == 64
    instance_subset, class_subset = ds["subsets"]
    assert instance_subset["image_dir"] == str(out / "instance")
    assert instance_subset["class_tokens"] == "a photo of sks dog"
    assert instance_subset["num_repeats"] == result.num_repeats >= 1
    assert "is_reg" not in instance_subset
    assert class_subset == {
        "is_reg": True,
        "image_dir": str(out / "class"),
        "class_tokens": "a photo of a dog",
        "caption_extension": ".txt",
        "num_repeats": 1,
    }

    # Crops and captions are stored on the items, the folder on the dataset.
    with lib.sessions() as session:
        row = datasets.find_dataset(session, "pets")
        assert row.export_path == str(out)
        first, image = datasets.included_items(session, row.id)[0]
        # Default captions are not stored: they follow the prompt and trigger word.
        assert first.caption is None
        view = datasets.item_to_dict(first, image, datasets.default_captions(row))
        assert (view["caption"], view["caption_source"]) == ("a photo of sks dog", "default")
        assert first.crop is not None and first.crop["file"] == "instance/0000.png"
        left, top, right, bottom = first.crop["box"]
        assert right - left == bottom - top == min(image.width or 0, image.height or 0)
        assert first.crop["method"] in ("face", "saliency", "centre")

    # A re-export after an edit replaces the old files, leaving none behind.
    exclude_images(lib.sessions, "pets", [seed])
    again = export_dataset(lib.settings, lib.sessions, "pets", out, resolution=64)
    assert again.instance == n_inst - 1
    assert len(list((out / "instance").glob("*.png"))) == n_inst - 1

    # A folder holding anything else is refused, not emptied.
    (out / "notes.md").write_text("mine")
    with pytest.raises(ConflictError, match="not a vitdex export"):
        export_dataset(lib.settings, lib.sessions, "pets", out, resolution=64)
    assert (out / "notes.md").exists()

    # The default folder lies under VITDEX_HOME; a vanished photo is skipped, not fatal.
    Path(want_class[0][1].path).unlink()
    default = export_dataset(lib.settings, lib.sessions, created["dataset_id"], resolution=64)
    assert default.path == lib.settings.storage.home / "datasets" / f"{created['dataset_id']}-pets"
    assert default.class_images == 1
    assert [s["image_id"] for s in default.skipped] == [want_class[0][1].id]
