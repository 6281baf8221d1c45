"""Bodies of the browsing helpers: facet counts, matching ids, grid neighbours, spaces."""

from __future__ import annotations

from dataclasses import dataclass

from vitdex.search.facets import Adjacent, FacetCounts, SpaceCount

__all__ = ["AdjacentOut", "FacetValue", "FacetsOut", "ImageIdsOut", "SpaceCount", "SpacesOut"]


@dataclass
class FacetValue:
    """One value of a facet and how many images it would match."""

    #: The value to pass back as the filter (a library id, a year, a make...), as text.
    value: str
    count: int
    #: What to show for it when the value alone says little (a library's folder).
    title: str | None = None


@dataclass
class FacetsOut:
    """Counts per filter value, each facet under every filter but its own."""

    #: Images matching every filter.
    total: int
    libraries: list[FacetValue]
    statuses: list[FacetValue]
    camera_makes: list[FacetValue]
    camera_models: list[FacetValue]
    #: The most common labels only (``labels_limit``).
    labels: list[FacetValue]
    years: list[FacetValue]
    #: Tags (the name to pass as ``tag``), the most common 100 only, counted as if no
    #: tag were chosen.
    tags: list[FacetValue]

    @classmethod
    def of(cls, counts: FacetCounts, roots: dict[int, str]) -> FacetsOut:
        """From the catalog's counts; ``roots`` names each library by its folder."""

        def values(pairs: list[tuple[str, int]]) -> list[FacetValue]:
            return [FacetValue(str(v), n) for v, n in pairs]

        return cls(
            total=counts.total,
            libraries=[FacetValue(str(i), n, roots.get(i)) for i, n in counts.libraries],
            statuses=values(counts.statuses),
            camera_makes=values(counts.camera_makes),
            camera_models=values(counts.camera_models),
            labels=values(counts.labels),
            years=[FacetValue(str(y), n) for y, n in sorted(counts.years, reverse=True)],
            tags=values(counts.tags),
        )


@dataclass
class ImageIdsOut:
    """Ids of the images matching, in library order (newest photo first)."""

    ids: list[int]
    #: How many images match in all.
    total: int
    #: Whether ``ids`` stops at the cap before ``total``.
    truncated: bool


@dataclass
class AdjacentOut:
    """An image's neighbours in the library grid's order under the filters."""

    image_id: int
    previous: int | None
    next: int | None
    #: 1-based position among the matching images; 0 when the image does not match.
    position: int
    total: int

    @classmethod
    def of(cls, image_id: int, found: Adjacent) -> AdjacentOut:
        """From the catalog's answer."""
        return cls(image_id, found.previous, found.next, found.position, found.total)


@dataclass
class SpacesOut:
    """Every vector space, oldest first."""

    spaces: list[SpaceCount]
    #: The space a search uses when none is named.
    default: str | None
