"""Update masks and etags."""

from __future__ import annotations

import pytest

from services.kit.errors import Aborted, InvalidArgument
from services.kit.fieldmask import check_etag, etag, resolve_update_mask

UPDATABLE = {"display_name", "description", "labels"}


def test_empty_mask_means_every_updatable_field() -> None:
    assert resolve_update_mask([], UPDATABLE) == UPDATABLE


def test_star_mask_means_every_updatable_field() -> None:
    assert resolve_update_mask(["*"], UPDATABLE) == UPDATABLE


def test_mask_keeps_only_the_named_fields() -> None:
    assert resolve_update_mask(["description", "description"], UPDATABLE) == {"description"}
    assert resolve_update_mask(["labels", "display_name"], UPDATABLE) == {"labels", "display_name"}


def test_unknown_path_is_invalid_argument_listing_updatable_fields() -> None:
    with pytest.raises(InvalidArgument) as caught:
        resolve_update_mask(["description", "colour"], UPDATABLE)
    violation = caught.value.violations[0]
    assert violation.field == "update_mask"
    assert "'colour' is not an updatable field; updatable: description, display_name, labels" in (
        violation.description
    )


def test_output_only_path_is_invalid_argument_saying_so() -> None:
    with pytest.raises(InvalidArgument, match="'create_time' is output only") as caught:
        resolve_update_mask(["create_time"], UPDATABLE, output_only={"create_time", "etag"})
    assert caught.value.violations[0].field == "update_mask"


def test_output_only_path_is_rejected_even_without_naming_it() -> None:
    with pytest.raises(InvalidArgument, match="not an updatable field"):
        resolve_update_mask(["create_time"], UPDATABLE)


def test_star_combined_with_paths_is_invalid_argument() -> None:
    with pytest.raises(InvalidArgument, match="cannot be combined"):
        resolve_update_mask(["*", "labels"], UPDATABLE)


def test_etag_differs_per_version_and_is_a_quoted_string() -> None:
    assert etag(7) == '"7"'
    assert etag(7) != etag(8)


def test_current_or_empty_etag_passes() -> None:
    check_etag(etag(3), 3)
    check_etag("", 3)


@pytest.mark.parametrize("stale", [etag(2), etag(4), "3", "garbage", ' "3"'])
def test_stale_or_foreign_etag_is_aborted_etag_mismatch(stale: str) -> None:
    with pytest.raises(Aborted) as caught:
        check_etag(stale, 3)
    assert caught.value.reason == "ETAG_MISMATCH"
