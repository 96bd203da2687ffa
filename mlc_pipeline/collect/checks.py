"""Checks a collect run makes on its settings and on what it found, said loudly rather than
discovered later: licences that restrict use, folder-mode queries that map to no folder, files of
the folder that are no image, and photos that no configured size can fetch."""

from __future__ import annotations

import logging

from mlc_pipeline.catalog import Catalog
from mlc_pipeline.config import RESTRICTED_LICENSES, Config, ConfigError

log = logging.getLogger(__name__)


def licence_warning(cfg: Config) -> str | None:
    """One line when `source.licenses` lets in images whose licence restricts use (issue 17)."""
    restricted = cfg.source.restricted_licenses
    if not restricted:
        return None
    setting = "any" if cfg.source.licenses == "any" else ", ".join(map(str, cfg.source.licenses))
    return (f"source.licenses ({setting}) lets in licences that restrict use: "
            f"{', '.join(RESTRICTED_LICENSES[i] for i in restricted)}; check that your use allows them "
            f"(the data card lists the images under each). For open licences only: licenses: [4, 5, 9, 10, 11]")


def check_licence_ids(cfg: Config, known: dict[int, tuple[str, str]], source: str) -> None:
    """`source.licenses` ids that the source's own licence list (licenses.getInfo) does not have: a
    typo (`[4, 99]`) narrowed the search without a word (the dayone26 audit). Some: one warning naming
    them; all of them: a ConfigError, as nothing could be collected. (Not for a URL list: the setting
    filters Flickr licence ids, and a list's rows carry their own.)"""
    if cfg.source.kind == "urls" or cfg.source.licenses == "any" or not known:
        return
    unknown = [i for i in cfg.source.licenses if i not in known]
    if not unknown:
        return
    listed = "; ".join(f"{i} {name}" for i, (name, _) in sorted(known.items()))
    said = (f"source.licenses: {', '.join(map(str, unknown))} {'is' if len(unknown) == 1 else 'are'} no licence "
            f"id of the source, {source} (its licences: {listed})")
    if len(unknown) == len(cfg.source.licenses):
        raise ConfigError(f"{said}; no photo could be collected")
    log.warning("%s; searching under the others only", said)


def all_queries(cfg: Config) -> list[str]:
    sets = [*cfg.classes.values(), cfg.other, cfg.probe, cfg.mine.pool]
    return list(dict.fromkeys(q for qs in sets if qs is not None for q in qs.queries))


def unmapped_queries(cfg: Config) -> list[str]:
    """Folder mode: configured queries with no subfolder in `source.local.query_map` (they find nothing)."""
    if cfg.source.kind != "local" or not cfg.source.local.folder:
        return []
    mapped = {" ".join(q.lower().split()) for q in cfg.source.local.query_map}
    return [q for q in all_queries(cfg) if " ".join(q.lower().split()) not in mapped]


def warn_before_collecting(cfg: Config) -> None:
    line = licence_warning(cfg)
    if line:
        log.warning(line)
    unmapped = unmapped_queries(cfg)
    if unmapped:
        log.warning("folder mode: %d %s no subfolder in source.local.query_map and will find nothing: %s",
                    len(unmapped), "query has" if len(unmapped) == 1 else "queries have",
                    ", ".join(repr(q) for q in unmapped))


UNREADABLE_NAMED = 20     # files named in a collect's record (`mlc inspect` shows them); its summary names 3


def unreadable_named(unreadable: dict[str, str]) -> dict:
    """Folder mode, the files of the folder that are no readable image or too large (the bundled
    server skips them), as a collect records them: {} for none, else {"count": n, "files": the first
    UNREADABLE_NAMED as "path (why)"}."""
    if not unreadable:
        return {}
    return {"count": len(unreadable),
            "files": [f"{path} ({why})" for path, why in sorted(unreadable.items())[:UNREADABLE_NAMED]]}


def unreadable_line(unreadable: dict, shown: int = 3) -> str | None:
    """"2: ants/empty.jpg (empty file), ants/page.jpg (not an image)", or None when there are none."""
    if not unreadable:
        return None
    named = unreadable["files"][:shown]
    more = unreadable["count"] - len(named)
    return f"{unreadable['count']}: {', '.join(named)}" + (f", and {more} more" if more > 0 else "")


def check_sizes(cfg: Config, catalog: Catalog, since: float) -> None:
    """Photos found since `since` (this collect's searches) but offered in none of `source.sizes` are
    skipped. Some: a warning with the count. All of them (nothing could ever be downloaded): a
    one-line error, so the run exits non-zero instead of "succeeding" with an empty catalog. Photos
    skipped by earlier searches under other sizes are not counted (a user's audit: following the hint
    repeated the warning, now naming the new sizes, for photos no search had looked at again)."""
    found, skipped = catalog.found_since(since)
    if not skipped:
        return
    sizes = ", ".join(cfg.source.sizes)
    hint = smaller_sizes_hint(cfg.source.sizes)
    if skipped == found:
        raise ConfigError(f"all {found} photos found were skipped: none is offered in source.sizes ({sizes}), "
                          f"the images are smaller than every size asked for; {hint}")
    log.warning("%d of %d photos found were skipped: offered in none of source.sizes (%s); to keep them, %s",
                skipped, found, sizes, hint)


# Flickr's sizes by their side in px (long side; url_sq and url_q are square crops). A photo is offered
# in the sizes up to its own, so one offered in none of source.sizes is smaller than all of them.
SIZE_SIDES = {"url_o": float("inf"), "url_l": 1024, "url_c": 800, "url_z": 640, "url_m": 500, "url_n": 320,
              "url_s": 240, "url_q": 150, "url_t": 100, "url_sq": 75}


def smaller_sizes_hint(sizes: list[str]) -> str:
    """How to keep photos skipped for their size: the configured sizes followed by the only ones such
    photos can have, those smaller than the smallest configured (once a fixed list that added nothing
    to `[url_m, url_n, url_s]` for 180 px photos, which only url_q/url_t/url_sq fetch)."""
    smallest = min(sizes, key=SIZE_SIDES.__getitem__)
    smaller = [k for k, side in SIZE_SIDES.items() if side < SIZE_SIDES[smallest]]
    if not smaller:       # every photo has one: these were skipped by an earlier run, under other sizes
        return (f"nothing to add: {smallest}, the smallest size, is listed (a photo skipped under earlier sizes is "
                "fetched once a search finds it again, when its set needs more)")
    return (f"list smaller sizes than {smallest}, the smallest asked for: Flickr offers a photo only in the sizes up "
            f"to its own, so only {', '.join(smaller)} can fetch them, e.g. "
            f"--set 'source.sizes=[{', '.join([*sizes, *smaller])}]'")
