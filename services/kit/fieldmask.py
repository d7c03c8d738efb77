"""Update semantics shared by every Update RPC: `update_mask` (AIP-134) and `etag` (AIP-154).

An etag is the resource's row version (an integer the store bumps on every
change) rendered as a quoted string, e.g. `"7"`, like an HTTP entity tag.
Clients must treat it as opaque and only echo it back; an Update or Delete
that carries an etag other than the current one fails with ABORTED
(reason ETAG_MISMATCH) so the client re-reads instead of overwriting a
change it has not seen. An empty etag skips the check.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

from services.kit.errors import Aborted, InvalidArgument

# AIP-134: a mask of exactly "*" replaces every updatable field.
FULL_REPLACEMENT = "*"


def resolve_update_mask(
    paths: Sequence[str],
    updatable: Collection[str],
    *,
    output_only: Collection[str] = (),
) -> set[str]:
    """The fields an Update must write.

    No paths means every updatable field (the client sent a full resource);
    "*" means the same. A path that is unknown or output only is
    INVALID_ARGUMENT on `update_mask`; naming output-only fields in
    `output_only` gives the client a more precise message.
    """
    if not paths or list(paths) == [FULL_REPLACEMENT]:
        return set(updatable)
    resolved: set[str] = set()
    for path in paths:
        if path in updatable:
            resolved.add(path)
        elif path == FULL_REPLACEMENT:
            raise InvalidArgument("update_mask", "'*' cannot be combined with other paths")
        elif path in output_only:
            raise InvalidArgument("update_mask", f"{path!r} is output only and cannot be updated")
        else:
            allowed = ", ".join(sorted(updatable)) or "none"
            raise InvalidArgument("update_mask", f"{path!r} is not an updatable field; updatable: {allowed}")
    return resolved


def etag(version: int) -> str:
    """The etag of a resource at this row version."""
    return f'"{version}"'


def check_etag(supplied: str, current_version: int) -> None:
    """ABORTED (ETAG_MISMATCH) when the client sent an etag and it is not the current one."""
    if supplied and supplied != etag(current_version):
        raise Aborted(
            "the resource changed since it was read; read it again and retry",
            reason="ETAG_MISMATCH",
        )
