"""`source.licenses` at the moment of downloading, not only at the moment of searching.

A candidate left pending by an earlier run was found under the setting and the licence of that
time. Before this run downloads anything, each such row is checked against the setting as it is
now; one it does not allow is `skipped: license-not-allowed`, a status that is not final: widen the
setting again (or let a search report an allowed licence) and the row is pending again. A search
result that reports a licence the setting does not allow (a mirror that ignores the filter, or a
photo its owner moved to another licence) is not a candidate, but a row the catalog already holds
for that photo learns the new licence, so a photo once found is not downloaded under its old one
(audit collect25 D2). A result with no licence id at all is no news: a row keeps the licence it is
known under (collect28: until then the missing id erased it, and the photo was skipped), and a photo
known under an allowed licence is judged under it: found by another class's query it takes that label
as any re-find does (labels31: until then it was no candidate, and the photo lost the label). A photo
never seen, or known under no licence, stays refused under a licence list. Rows with a
file keep the licence they were downloaded under: a CC licence cannot be revoked for a copy already
made.
"""

from __future__ import annotations

import logging

from mlc_pipeline.catalog import Catalog, Found
from mlc_pipeline.catalog.schema import FILE_STATUSES

log = logging.getLogger(__name__)

NOT_ALLOWED = "license-not-allowed"


def recheck_pending(catalog: Catalog, source, run_id: str) -> tuple[int, int]:
    """Rows the setting no longer allows leave the queue; those it allows again return to it.
    Returns (skipped, pending again). `source.license_allowed(id)` is the setting's verdict."""
    skipped = reopened = 0
    for r in catalog.candidates(source=source.name, status="pending"):
        if not source.license_allowed(r["license_id"]):
            skipped += catalog.set_status(r["id"], "skipped", NOT_ALLOWED, run_id, "resume")
    for r in catalog.candidates(source=source.name, status="skipped", reason=NOT_ALLOWED):
        if source.license_allowed(r["license_id"]):
            reopened += catalog.set_status(r["id"], "pending", None, run_id, "resume")
    if skipped:
        log.warning("%d candidates left pending by an earlier run carry a licence source.licenses does not allow "
                    "now: not downloaded (skipped: %s; pending again if the setting allows them again)",
                    skipped, NOT_ALLOWED)
    if reopened:
        log.info("%d candidates skipped for their licence are allowed by source.licenses now: pending again",
                 reopened)
    return skipped, reopened


def judged_licence(found: Found, known: dict | None) -> int | None:
    """The licence a search result is allowed or refused under: the one it reports; where it reports
    none (a mirror's), the one the catalog's row `known` holds for the photo (None: never seen)."""
    return known["license_id"] if found.license_id is None and known is not None else found.license_id


def note_disallowed(catalog: Catalog, found: Found, run_id: str) -> bool:
    """A search result under a licence the setting does not allow: not a candidate, but the row the
    catalog holds for the photo (if any, and without a file) takes the licence reported, and one
    waiting to be downloaded is skipped. True when a row learnt something."""
    if found.license_id is None:      # no licence reported is no news: a known licence stays (collect28)
        return False
    row = catalog.get_by_photo(found.source, found.photo_id)
    if row is None or row["status"] in FILE_STATUSES or row["status"] == "removed":
        log.debug("photo %s: licence %s not allowed (a mirror ignored the filter)", found.photo_id, found.license_id)
        return False
    if row["license_id"] == found.license_id and row["status"] != "pending":
        return False
    catalog.update_fields(row["id"], license_id=found.license_id, license_name=found.license_name)
    if row["status"] == "pending":
        catalog.set_status(row["id"], "skipped", NOT_ALLOWED, run_id, "search")
    log.info("photo %s: now under licence %s (%s), which source.licenses does not allow: not downloaded",
             found.photo_id, found.license_id, found.license_name or "unnamed")
    return True
