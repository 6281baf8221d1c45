"""kohya's ``{repeats}_{name}`` folder layout: written from an export's files, read back."""

from __future__ import annotations

import tempfile
import tomllib
from pathlib import Path

import pytest
from PIL import Image

from vitdex.training.kohya import (
    dataset_toml,
    folder_name,
    read_kohya_layout,
    safe_name,
    write_kohya_layout,
)


def _export(folder: Path, captions: list[str]) -> list[Path]:
    folder.mkdir(parents=True)
    files = []
    for i, caption in enumerate(captions):
        png = folder / f"{i:04d}.png"
        Image.new("RGB", (8 + i, 8), (i * 40, 0, 0)).save(png)
        png.with_suffix(".txt").write_text(caption + "\n", encoding="utf-8")
        files.append(png)
    return files


def test_safe_folder_names() -> None:
    assert folder_name(10, "sks dog") == "10_sks dog"
    assert safe_name('a/b\\c:d*e?"f<g>h|i') == "a b c d e f g h i"
    assert safe_name("  ..  ") == "subject" and safe_name("\n\t", "x") == "x"
    assert len(safe_name("w" * 300)) == 64


def test_layout_round_trip(tmp_path: Path) -> None:
    captions = ["a photo of sks dog", "a photo of sks dog on grass", "sks dog, running"]
    instance = _export(tmp_path / "instance", captions)
    classes = _export(tmp_path / "class", ["a photo of a dog"] * 2)
    layout = write_kohya_layout(
        tmp_path,
        instance_images=instance,
        class_images=classes,
        repeats=7,
        class_repeats=2,
        instance_name="sks dog",
        class_name="dog",
    )
    assert layout.instance == tmp_path / "kohya" / "img" / "7_sks dog"
    assert layout.reg == tmp_path / "kohya" / "reg" / "2_dog"
    # One filesystem: every PNG and caption is a hard link, no second copy.
    assert (layout.linked, layout.copied) == (2 * (len(instance) + len(classes)), 0)
    subsets = read_kohya_layout(layout.root)
    assert [(s.repeats, s.name, s.is_reg) for s in subsets] == [
        (7, "sks dog", False),
        (2, "dog", True),
    ]
    assert [c for _, c in subsets[0].images] == captions
    assert [p.name for p, _ in subsets[0].images] == [p.name for p in instance]
    for (path, _), source in zip(subsets[0].images, instance, strict=True):
        assert path.samefile(source)
    # Writing again replaces the layout (a renamed subject leaves no stale folder).
    again = write_kohya_layout(
        tmp_path,
        instance_images=instance,
        class_images=[],
        repeats=1,
        class_repeats=1,
        instance_name="ohwx",
        class_name="dog",
    )
    assert again.reg is None
    assert [(s.repeats, s.name) for s in read_kohya_layout(again.root)] == [(1, "ohwx")]


def test_reader_skips_what_kohya_skips(tmp_path: Path) -> None:
    (tmp_path / "img" / "notrepeats").mkdir(parents=True)
    sub = tmp_path / "img" / "3_cat"
    sub.mkdir()
    Image.new("RGB", (4, 4)).save(sub / "a.png")
    (sub / "notes.md").write_text("x")
    [subset] = read_kohya_layout(tmp_path)
    assert (subset.repeats, subset.name, subset.images) == (3, "cat", [(sub / "a.png", None)])


def test_dataset_toml_with_buckets_parses() -> None:
    text = dataset_toml(
        instance_dir=Path("/data/x/instance"),
        prompt='a "quoted" sks dog',
        resolution=512,
        num_repeats=4,
        class_dir=Path("/data/x/class"),
        class_prompt="a photo of a dog",
        buckets=(256, 1024, 64),
        comment="two\nlines",
    )
    config = tomllib.loads(text)
    general = config["general"]
    assert general["enable_bucket"] is True and general["bucket_no_upscale"] is False
    assert (general["min_bucket_reso"], general["max_bucket_reso"]) == (256, 1024)
    assert general["bucket_reso_steps"] == 64
    subsets = config["datasets"][0]["subsets"]
    assert subsets[0]["class_tokens"] == 'a "quoted" sks dog' and subsets[0]["num_repeats"] == 4
    assert subsets[1]["is_reg"] is True
    square = tomllib.loads(
        dataset_toml(instance_dir=Path("/i"), prompt="p", resolution=512, num_repeats=1)
    )
    assert square["general"]["enable_bucket"] is False
    assert "min_bucket_reso" not in square["general"]


def test_files_are_copied_where_they_cannot_be_linked(tmp_path: Path) -> None:
    shm = Path("/dev/shm")
    if not shm.is_dir() or shm.stat().st_dev == tmp_path.stat().st_dev:
        pytest.skip("needs a second filesystem (/dev/shm) for a link to fail")
    with tempfile.TemporaryDirectory(dir=shm) as other:
        images = _export(Path(other) / "instance", ["a photo of sks dog", "sks dog"])
        layout = write_kohya_layout(
            tmp_path,
            instance_images=images,
            class_images=[],
            repeats=2,
            class_repeats=1,
            instance_name="sks",
            class_name="dog",
        )
        assert (layout.linked, layout.copied) == (0, 4)
        [subset] = read_kohya_layout(layout.root)
        for (path, caption), source in zip(subset.images, images, strict=True):
            assert path.read_bytes() == source.read_bytes()
            assert not path.samefile(source)
            assert caption == source.with_suffix(".txt").read_text().strip()
