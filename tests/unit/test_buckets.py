"""Aspect-ratio buckets: the bucket set, assignment, histograms, and the batch plan."""

from __future__ import annotations

import math
from collections import Counter

import pytest

from vitdex.training.buckets import assign_bucket, bucket_sizes, default_step, histogram
from vitdex.training.dreambooth.batches import bucket_batch, bucket_groups, groups_per_epoch


@pytest.mark.parametrize("resolution", [64, 128, 256, 512, 768, 1024])
def test_bucket_shapes(resolution: int) -> None:
    step = default_step(resolution)
    sizes = bucket_sizes(resolution)
    assert len(sizes) == len(set(sizes)) >= 9
    low = math.ceil(resolution / 2 / step) * step
    high = resolution * 2 // step * step
    for width, height in sizes:
        assert width % step == 0 and height % step == 0
        assert width * height <= resolution * resolution
        assert low <= width <= high and low <= height <= high
        assert (height, width) in sizes  # every bucket has its transpose
    assert (resolution, resolution) in sizes

    # Each width's height is the tallest that fits (one step more would break a rule),
    # or the bucket is the transpose of one that is.
    def tallest(width: int, height: int) -> bool:
        return width * (height + step) > resolution * resolution or height + step > high

    for width, height in sizes:
        assert tallest(width, height) or tallest(height, width)


def test_known_buckets_at_512() -> None:
    sizes = bucket_sizes(512)
    assert default_step(512) == 64 and default_step(64) == 8
    for expected in [(512, 512), (576, 448), (640, 384), (768, 320), (1024, 256)]:
        assert expected in sizes
    assert (576, 512) not in sizes  # over 512² pixels


@pytest.mark.parametrize(
    ("size", "resolution"),
    [((4000, 3000), 512), ((3000, 4000), 512), ((1920, 1080), 512), ((6000, 1000), 512)],
)
def test_nearest_aspect_is_chosen(size: tuple[int, int], resolution: int) -> None:
    bucket = assign_bucket(*size, resolution)
    aspect = math.log(size[0] / size[1])
    distance = abs(math.log(bucket[0] / bucket[1]) - aspect)
    assert all(
        distance <= abs(math.log(w / h) - aspect) + 1e-12 for w, h in bucket_sizes(resolution)
    )
    # Big photos are never upscaled: they get a full-size bucket.
    assert bucket in bucket_sizes(resolution)


def test_examples_of_assignment() -> None:
    assert assign_bucket(4000, 3000, 512) == (576, 448)
    assert assign_bucket(3000, 4000, 512) == (448, 576)
    assert assign_bucket(1000, 1000, 512) == (512, 512)
    assert assign_bucket(64, 128, 64) == (40, 88)
    assert assign_bucket(128, 64, 64) == (88, 40)


@pytest.mark.parametrize("max_upscale", [1.0, 1.5, 2.0, 3.0])
@pytest.mark.parametrize(
    "size", [(100, 100), (200, 150), (150, 200), (300, 100), (500, 500), (60, 90)]
)
def test_no_photo_is_upscaled_past_the_limit(size: tuple[int, int], max_upscale: float) -> None:
    width, height = size
    bucket = assign_bucket(width, height, 512, max_upscale=max_upscale)
    assert bucket[0] % 64 == 0 and bucket[1] % 64 == 0
    if min(width, height) * max_upscale < 64:
        # Not even the smallest bucket fits: the smallest it is, 64 on the short side.
        assert min(bucket) == 64
    else:
        assert max(bucket[0] / width, bucket[1] / height) <= max_upscale
    assert bucket[0] * bucket[1] <= 512 * 512


def test_tiny_photo_gets_a_smaller_bucket_of_about_its_aspect() -> None:
    full = assign_bucket(4000, 3000, 512)
    for width, height in [(200, 150), (300, 200), (150, 260), (120, 119)]:
        small = assign_bucket(width, height, 512, max_upscale=2.0)
        assert small[0] * small[1] < full[0] * full[1]
        # The largest 64-multiple box within the photo scaled 2x: one step more on
        # either side would need more than 2x.
        assert small == (2 * width // 64 * 64, 2 * height // 64 * 64)
        # About its aspect: off by less than one step on the shorter side.
        assert abs(small[0] / small[1] - width / height) < 64 / min(small) * (width / height)
    # Far too small for any bucket: the smallest one, not an error.
    assert assign_bucket(10, 10, 512) == (64, 64)
    # Large enough: no change with a stricter limit.
    assert assign_bucket(2000, 1500, 512, max_upscale=1.0) == full
    # A looser limit lets the same photo into its full bucket.
    assert assign_bucket(200, 150, 512, max_upscale=3.0) == full


def test_histogram_counts_largest_first() -> None:
    sizes = [(64, 128)] * 3 + [(128, 64)] * 2 + [(96, 96), (400, 400)]
    assert histogram(sizes, 64) == [
        {"width": 40, "height": 88, "count": 3},
        {"width": 64, "height": 64, "count": 2},
        {"width": 88, "height": 40, "count": 2},
    ]
    assert histogram([], 512) == []


def test_bad_sizes_are_refused() -> None:
    with pytest.raises(ValueError, match="positive"):
        assign_bucket(0, 10, 512)


# --------------------------------------------------------------------------- batch plan

MEMBERS = {(40, 88): [0, 3, 5, 6, 9], (64, 64): [1, 7], (88, 40): [2, 4, 8]}


@pytest.mark.parametrize("batch_size", [1, 2, 3, 4])
def test_plan_batches_are_homogeneous_and_cover_each_epoch(batch_size: int) -> None:
    count = groups_per_epoch(MEMBERS, batch_size)
    assert count == sum(math.ceil(len(m) / batch_size) for m in MEMBERS.values())
    for epoch in range(4):
        groups = bucket_groups(3, epoch, MEMBERS, batch_size)
        assert len(groups) == count
        seen: Counter[int] = Counter()
        for bucket, group in groups:
            assert len(group) == batch_size
            assert set(group) <= set(MEMBERS[bucket])  # one bucket per batch
            assert len(set(group)) == min(batch_size, len(MEMBERS[bucket]))
            seen.update(group)
        # Every example at least once per epoch; repeats are only the fill-ins of short
        # groups (fewer than a batch per bucket).
        assert set(seen) == {i for m in MEMBERS.values() for i in m}
        fill = sum(-len(m) % batch_size for m in MEMBERS.values())
        assert sum(seen.values()) - len(seen) == fill


def test_plan_is_seeded_and_position_addressable() -> None:
    batch = 2
    count = groups_per_epoch(MEMBERS, batch)
    sequence = [g for epoch in range(3) for g in bucket_groups(11, epoch, MEMBERS, batch)]
    # Any micro-batch alone equals its place in the sequence (a resumed run draws the same).
    assert [bucket_batch(11, m, MEMBERS, batch) for m in range(3 * count)] == sequence
    assert sequence == [g for e in range(3) for g in bucket_groups(11, e, MEMBERS, batch)]
    # Epochs differ from one another, and another seed gives another order.
    assert bucket_groups(11, 0, MEMBERS, batch) != bucket_groups(11, 1, MEMBERS, batch)
    assert bucket_groups(11, 0, MEMBERS, batch) != bucket_groups(12, 0, MEMBERS, batch)
