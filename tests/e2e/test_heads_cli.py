"""``vitdex heads``: train from tags, show, apply, list labels, correct, filter on them."""

from __future__ import annotations

from pathlib import Path

from tests.helpers import as_json, run_vitdex
from tests.integration.test_heads import cast_photo


def test_heads_round_trip(vitdex_env: dict[str, str], tmp_path: Path) -> None:
    lib = tmp_path / "lib"
    for cast in ("red", "blue"):
        for n in range(10):
            cast_photo(lib / cast / f"{cast}{n}.jpg", cast, 50 * len(cast) + n)
    run_vitdex("index", "--no-progress", str(lib))
    for cast in ("red", "blue"):
        run_vitdex("tag", "add", cast, "--all-matching", "--folder", str(lib / cast))

    trained = run_vitdex("heads", "train", "cast", "--from-tags", "red,blue").stdout
    # Off a terminal: plain lines and tab-separated tables.
    assert "head cast on cls" in trained and "held-out accuracy 1.000 on 4 photos" in trained
    assert "class\tprecision\trecall\tf1\tsupport" in trained
    assert "red\t1.000\t1.000\t1.000\t2" in trained and "red\t2\t0" in trained

    shown = as_json(run_vitdex("heads", "show", "cast", "--json"))
    assert shown["classes"] == ["red", "blue"] and shown["labelled"] == 0

    applied = run_vitdex("heads", "apply", "cast")
    assert "labelling with cast" in applied.stderr
    assert "labelled 20 photos" in applied.stdout and "red 10" in applied.stdout

    page = as_json(run_vitdex("heads", "labels", "cast", "--label", "RED", "--json"))
    assert page["total"] == 10 and {it["runner_up"] for it in page["items"]} == {"blue"}
    photo = page["items"][0]["image_id"]
    fixed = run_vitdex("heads", "correct", "cast", str(photo), "Blue").stdout
    assert f"{photo}: blue (corrected)" in fixed
    wrong = run_vitdex("heads", "correct", "cast", str(photo), "green", code=2)
    assert "has no class 'green' (classes: red, blue)" in wrong.stderr

    similar = as_json(
        run_vitdex("similar", "--id", str(photo), "--head-label", "cast:blue", "--json")
    )
    assert {h["image_id"] for h in similar[0]["hits"]} <= {
        it["image_id"]
        for it in as_json(run_vitdex("heads", "labels", "cast", "--label", "blue", "--json"))[
            "items"
        ]
    }
    bad = run_vitdex("similar", "--id", str(photo), "--head-label", "cast", code=2)
    assert "is not HEAD:LABEL" in bad.stderr
