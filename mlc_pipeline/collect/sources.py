"""Opening the configured source: Flickr, the bundled server (kind local), or a URL list (kind urls).

Each gives the Collector (stage.py) an object with `name`, `search(query, target)`, `licenses()`,
`license_allowed(license_id)` (may a candidate under it be downloaded: licences.py),
`without_licence(query, photo_id)` (a result refused for its unknown licence: counted and said; a
URL list, which refuses no licence, has none),
`current_url(url)`, `api_calls`, `skipped` (search results left out, by reason) and `unreadable`
(folder mode: files in the folder that are no readable image, or over `source.max_image_bytes`,
path -> why), plus the image hosts its downloads may come from."""

from __future__ import annotations

import errno
from contextlib import closing, contextmanager
from typing import Iterator

from mlc_pipeline.config import Config, ConfigError
from mlc_pipeline.collect.flickr import FlickrSource
from mlc_pipeline.collect.urllist import UrlListSource, url_list_source
from mlc_pipeline.secrets import flickr_credentials


def check_before_writing(cfg: Config) -> None:
    """What stops a collect as its source opens, checked before the data root is created (a first
    command that failed there left an empty data root behind, which `mlc inspect` then showed as an
    empty project: the dayone26 audit): the Flickr key, and folder mode's folder and subfolders."""
    s = cfg.source
    if s.kind == "flickr":
        flickr_credentials(local=False)
    elif s.kind == "local" and s.local.folder:
        from mlc_pipeline.flickr_server.folder import FolderModeError, check_folder
        try:
            check_folder(s.local.folder, s.local.query_map)
        except FolderModeError as exc:
            raise ConfigError(f"source.local: {exc}") from None


@contextmanager
def open_source(cfg: Config) -> Iterator[tuple[FlickrSource | UrlListSource, list[str]]]:
    """The configured source and the image hosts it may download from.

    `source.kind: local` starts the bundled Flickr-compatible server on loopback for the duration;
    `source.kind: urls` reads the CSV of image URLs (urllist.py)."""
    s = cfg.source
    if s.kind == "urls":
        yield url_list_source(cfg)
        return
    if s.kind == "flickr":
        with closing(FlickrSource(s, flickr_credentials(local=False), "flickr", result_cap=s.result_cap)) as source:
            yield source, s.allowed_hosts       # closed: its pools are not left to a finalizer (download.py)
        return
    from mlc_pipeline.flickr_server import FaultSpec, FlickrServer, WorldSpec
    from mlc_pipeline.flickr_server.folder import FolderModeError
    world = WorldSpec(kind="folder" if s.local.folder else "default", seed=s.local.seed, scale=s.local.scale,
                      folder=s.local.folder, query_map=dict(s.local.query_map), result_cap=s.local.result_cap,
                      max_file_bytes=s.max_image_bytes)
    try:
        server = FlickrServer(world, FaultSpec.parse(s.local.faults), host="127.0.0.1", port=s.local.port)
    except FolderModeError as exc:
        raise ConfigError(f"source.local: {exc}") from None
    except OSError as exc:
        if exc.errno != errno.EADDRINUSE:
            raise
        raise ConfigError(f"source.local.port {s.local.port} is already in use on 127.0.0.1: another `mlc` run "
                          f"(or `mlc serve-flickr`) may hold it; wait for it to finish, or give this project its "
                          f"own port (source.local.port)") from None
    with server as srv, closing(FlickrSource(s, flickr_credentials(local=True), "local", rest_url=srv.rest_url,
                                             result_cap=s.local.result_cap, static_host=srv.static_host)) as source:
        source.unreadable = dict(srv.world.unreadable)
        yield source, [srv.static_host, *s.allowed_hosts]
