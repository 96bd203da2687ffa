"""An object store (s3://bucket/prefix, any fsspec URL) as a data root needs it: files in and out,
idempotent uploads, and folders published by a marker.

An object store has no rename, so a folder (a dataset version, a model bundle) is published by its
marker, `<folder>/_COMPLETE`, written after every other object of the folder: a folder without one
(a killed upload) does not exist for any reader. The marker lists every file's size, so a fetch knows
what a complete copy is. Uploads skip objects already there with the same size (and, for files that
change in place, the same bytes: never the size alone): a rerun uploads only what is new.
A dataset version is claimed before its upload (`claim_folder`, `<folder>/.claim`, a conditional
write): two machines that built the same version number at once cannot mix their files in it.
What is stored where, and when, is sync.py's business.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import socket
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator
from urllib.parse import urlsplit

from mlc_pipeline.config import Config, ConfigError
from mlc_pipeline.fsutil import remove_dead_leftovers, sha256_file, temp_beside
from mlc_pipeline.secrets import install_log_redaction, redact

log = logging.getLogger(__name__)
MARKER = "_COMPLETE"
CLAIM = ".claim"            # <folder>/.claim: the build that publishes the folder (claim_folder)
STALE_CLAIM_S = 6 * 3600    # a claim this old whose folder has no marker: its machine died mid-upload
LOCAL_OPTIONS = {"auto_mkdir", "skip_instance_cache", "use_listings_cache", "listings_expiry_time", "max_paths"}
MOVED = "catalog.moved"     # written by `mlc catalog migrate`: the SQLite catalog is no longer the store's


class ObjectStoreError(ConfigError):
    """The object store cannot be used (unreachable, no credentials, a conflicting publish): one line."""


class Store:
    """The object store under a URL, named by paths relative to it."""

    def __init__(self, url: str, options: dict):
        import fsspec
        install_log_redaction()         # the store's credentials (AWS_*) masked in this process's logs
        self.url, scheme = url, url.split(":", 1)[0]
        try:
            if scheme in ("s3", "s3a"):     # the client's bounds, on an instance of this project's own
                from mlc_pipeline.s3client import open_s3
                self.fs, self.base = open_s3(url, options)
            else:
                self.fs, self.base = fsspec.core.url_to_fs(url, **options)
        except ImportError as exc:
            raise ObjectStoreError(f"data_dir {url}: {exc} (install the extra: pip install 'mlc-pipeline[s3]')") from None
        except ValueError as exc:       # fsspec: "Protocol not known: s4"
            if scheme in fsspec.available_protocols():
                raise ObjectStoreError(f"data_dir {url}: {redact(str(exc))}") from None
            raise ObjectStoreError(f"data_dir {url}: scheme {scheme!r} is not supported: write s3://bucket/prefix "
                                   f"(or another fsspec protocol: gs, az, sftp, ...)") from None
        except OSError as exc:          # a store that connects at once (ftp, sftp): nothing listening there
            raise ObjectStoreError(f"data_dir {url}: cannot reach the object store at {urlsplit(url).netloc} "
                                   f"({why(exc)})") from None
        self.base, self.option_names = self.base.rstrip("/"), sorted(options)
        if "file" in self.fs.protocol and (unknown := sorted(set(options) - LOCAL_OPTIONS)):
            # fsspec's local file system takes any keyword and ignores it (verify21: `auto_mkdirs`, then a
            # bare FileNotFoundError when publishing)
            raise ObjectStoreError(f"data_dir {url}: a file:// store does not take storage_options {unknown}; it "
                                   f"takes {sorted(LOCAL_OPTIONS)} (auto_mkdir: true creates parent folders)")
        self.fs.invalidate_cache()      # fsspec reuses instances: never trust another command's listings
        collect_abandoned_requests(getattr(self.fs, "loop", None))

    def check(self) -> None:
        """A missing bucket, or a store that does not answer, is said before a stage runs, not after it
        when publishing fails. Asked directly: `fs.exists` says False for an unreachable endpoint too."""
        if "s3" not in self.fs.protocol:
            return
        bucket, endpoint = self.base.split("/")[0], getattr(self.fs, "endpoint_url", None) or "the AWS endpoint"
        from botocore.exceptions import ConnectionError as Unreachable, ReadTimeoutError     # s3fs's own dependency
        try:
            self.fs.call_s3("head_bucket", Bucket=bucket)
        except FileNotFoundError:
            raise ObjectStoreError(f"data_dir {self.url}: bucket {bucket!r} does not exist (or these credentials "
                                   f"cannot see it): create it first") from None
        except (TypeError, ValueError, AttributeError) as exc:     # the client built from storage_options: a
            # misspelt key, a wrong type (`client_kwargs: x` is an AttributeError deep in aiobotocore: verify21)
            raise ObjectStoreError(f"data_dir {self.url}: the store does not take storage_options "
                                   f"{self.option_names} ({redact(str(exc))}); check each key's name and type "
                                   f"(s3: endpoint_url, client_kwargs: {{region_name: ...}}; docs/orchestration.md)") from None
        except ReadTimeoutError:        # a stalled gateway: it connects, then says nothing (beyond28)
            raise ObjectStoreError(f"data_dir {self.url}: the object store at {endpoint} accepted the connection but did not "
                                   f"answer in {self.fs.s3.meta.config.read_timeout} s, tried again too (storage_options: "
                                   f"config_kwargs sets read_timeout and retries, s3fs_retries s3fs's tries: "
                                   f"docs/orchestration.md)") from None
        except Unreachable as exc:      # refused credentials and the like pass on: store_errors says them
            raise ObjectStoreError(f"data_dir {self.url}: cannot reach the object store at {endpoint} "
                                   f"({why(exc)})") from None

    def path(self, rel: str) -> str:
        return f"{self.base}/{rel}"

    def listing(self, rel: str) -> dict[str, dict]:
        """Every object under `rel`, by its path relative to the URL, with its size and ETag."""
        try:
            found = self.fs.find(self.path(rel), detail=True)
        except FileNotFoundError:
            return {}
        return {p[len(self.base) + 1:]: info for p, info in found.items() if info.get("type") != "directory"}

    def info(self, rel: str) -> dict | None:
        try:
            return self.fs.info(self.path(rel))
        except FileNotFoundError:
            return None

    def read_text(self, rel: str) -> str | None:
        try:
            return self.fs.cat_file(self.path(rel)).decode()
        except FileNotFoundError:
            return None

    def sha256(self, rel: str) -> str:
        """The SHA-256 of an object's bytes, read back (for a store that has no content ETag)."""
        digest = hashlib.sha256()
        with self.fs.open(self.path(rel), "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
        return digest.hexdigest()

    def write_text(self, rel: str, text: str) -> None:
        self.fs.pipe_file(self.path(rel), text.encode())

    def pointer_tag(self, rel: str) -> str | None:
        """What tells one write of a small object (models/LATEST) from another: its ETag, else its text;
        None when there is no such object."""
        info = self.info(rel)
        if info is None:
            return None
        etag = str(info.get("ETag") or info.get("etag") or "").strip('"')
        return f"etag:{etag}" if etag else f"text:{self.read_text(rel)}"

    def replace_text(self, rel: str, text: str, tag: str | None) -> str | None:
        """Write `text` at `rel` if the object is still the one `pointer_tag` called `tag` (None: no
        object): its new tag, or None when another writer changed it (nothing written). Atomic on S3
        (a conditional write: If-Match, If-None-Match); elsewhere a check just before the write."""
        if "s3" in self.fs.protocol and (tag is None or tag.startswith("etag:")):
            condition = {"IfNoneMatch": "*"} if tag is None else {"IfMatch": tag[len("etag:"):]}
            try:
                out = self.fs.pipe_file(self.path(rel), text.encode(), **condition)
            except (FileExistsError, FileNotFoundError):    # If-None-Match failed; If-Match on a deleted object
                return None
            except OSError as exc:
                if getattr(exc.__cause__, "response", {}).get("Error", {}).get("Code") == "PreconditionFailed":
                    return None         # s3fs's name for a failed If-Match: EINVAL
                raise
            etag = str((out or {}).get("ETag") or "").strip('"')
            return f"etag:{etag}" if etag else self.pointer_tag(rel)
        if self.pointer_tag(rel) != tag:
            return None
        self.write_text(rel, text)
        return self.pointer_tag(rel)

    def create_exclusive(self, rel: str, text: str) -> bool:
        """Write `text` at `rel` unless an object is there; True when this call wrote it. Atomic on S3
        (a conditional write, If-None-Match) and on a local store (a hard link); elsewhere a check then
        a write, which two machines at the same moment can both pass."""
        path = self.path(rel)
        if "s3" in self.fs.protocol:
            try:
                self.fs.pipe_file(path, text.encode(), IfNoneMatch="*")
                return True
            except FileExistsError:     # s3fs's name for 412 Precondition Failed
                return False
        if "file" in self.fs.protocol:
            tmp = temp_beside(Path(path))
            tmp.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(text)
            try:
                os.link(tmp, path)
                return True
            except FileExistsError:
                return False
            finally:
                tmp.unlink(missing_ok=True)
        if self.info(rel) is not None:
            return False
        self.write_text(rel, text)
        return True

    def upload(self, pairs: list[tuple[Path, str]]) -> int:
        """Local file -> relative key, all at once (fsspec runs them concurrently). One PUT each: an
        object appears whole or not at all."""
        if pairs:
            self.fs.put([str(p) for p, _ in pairs], [self.path(r) for _, r in pairs])
        return len(pairs)

    def download(self, pairs: list[tuple[str, Path]]) -> int:
        """Relative key -> local file, each written beside its target and renamed into place."""
        if not pairs:
            return 0
        temps = [temp_beside(local) for _, local in pairs]
        for t in temps:
            t.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.fs.get([self.path(r) for r, _ in pairs], [str(t) for t in temps])
            for t, (_, local) in zip(temps, pairs):
                os.replace(t, local)
        finally:
            for t in temps:
                t.unlink(missing_ok=True)
        return len(pairs)

    def delete(self, rels: list[str]) -> int:
        if rels:
            self.fs.rm([self.path(r) for r in rels])
        return len(rels)


ABANDONED = "Task exception was never retrieved"


def collect_abandoned_requests(loop) -> None:
    """When the store's endpoint resets connections mid-upload, aiohttp leaves the writer task of
    every request then in flight with its ConnectionResetError, which nothing awaits; each was logged
    as an asyncio ERROR with a traceback when collected (~2,000 before the one-line error: the scale26
    audit). fsspec cancels and awaits its own pending requests; these tasks are aiohttp's, so their
    connection errors are collected here, on fsspec's event loop, as one DEBUG line each. Any other
    unretrieved exception still goes to asyncio's default handler."""
    if loop is None or getattr(loop.get_exception_handler(), "mlc_abandoned", False):
        return
    try:
        from aiohttp import ClientConnectionError
    except ImportError:                 # a store without aiohttp (file://, sftp): nothing of its to collect
        ClientConnectionError = OSError

    def handler(loop, context: dict) -> None:
        exc = context.get("exception")
        if context.get("message") == ABANDONED and isinstance(exc, (ConnectionError, ClientConnectionError)):
            log.debug("a store request abandoned after a connection error: %s: %s", type(exc).__name__, exc)
            return
        loop.default_exception_handler(context)
    handler.mlc_abandoned = True
    loop.set_exception_handler(handler)


def why(exc: BaseException) -> str:
    """The reason under a connection error, as a person says it ("connection refused"), found along the
    chain botocore and aiohttp wrap it in."""
    seen: list[BaseException] = []
    while exc is not None and exc not in seen:
        seen.append(exc)
        if isinstance(exc, OSError) and exc.errno:
            return os.strerror(exc.errno).lower()
        exc = (getattr(exc, "os_error", None) or (getattr(exc, "kwargs", None) or {}).get("error")
               or exc.__cause__ or exc.__context__)
    return redact(str(seen[0])) or type(seen[0]).__name__


def store_of(cfg: Config) -> Store | None:
    """The configured object store, or None for a plain local data root."""
    return Store(cfg.data_url, cfg.storage_options) if cfg.data_url else None


def md5_file(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, lambda: hashlib.md5(usedforsecurity=False)).hexdigest()


def same(local: Path, info: dict | None) -> bool:
    """Is the object already this file, for a file never rewritten in place (an image, a version's
    file)? Its size says so."""
    return info is not None and info.get("size") == local.stat().st_size


def same_bytes(store: Store, local: Path, rel: str, info: dict | None) -> bool:
    """Is the object `rel` (listed as `info`) this file, byte for byte? For small files rewritten in
    place (reports, mined.csv): the MD5 where the ETag is one, else the object read back and hashed
    (file:// has no ETag, multipart uploads' is no MD5). Never the size alone: a rewrite often keeps it."""
    return same(local, info) and holds_digests(store, rel, info, lambda: md5_file(local), lambda: sha256_file(local))


def holds_digests(store: Store, rel: str, info: dict, md5: Callable[[], str | None],
                  sha256: Callable[[], str | None]) -> bool:
    """Are the object's bytes those digests (computed only when needed)? The MD5 where the ETag is one,
    else the object read back and hashed."""
    etag = str(info.get("ETag") or info.get("etag") or "").strip('"')
    if re.fullmatch(r"[0-9a-f]{32}", etag):
        return md5() == etag
    return store.sha256(rel) == sha256()


def read_marker(store: Store, key: str) -> dict | None:
    text = store.read_text(f"{key}/{MARKER}")
    return json.loads(text) if text is not None else None


def refuse_moved_catalog(store: Store, publishing: bool = False) -> None:
    """A config still on the store's SQLite catalog after `mlc catalog migrate` moved it to PostgreSQL
    would publish that stale snapshot and delete every object only the new catalog names: refused
    (`publishing`: after a command, or a review app, changed this cache: that is said too)."""
    text = store.read_text(MOVED)
    if text is not None:
        moved = json.loads(text)
        raise ObjectStoreError(
            f"the catalog of {store.url} was moved to {moved.get('to')} by `mlc catalog migrate` ({moved.get('on')}): "
            f"set catalog.url: {moved.get('to')} in this config (the password in PGPASSWORD or ~/.pgpass). Only "
            f"to go back to the SQLite catalog for good, delete {store.url}/{MOVED}: that snapshot knows nothing "
            f"recorded in PostgreSQL since, and its next publish deletes from the store the files only PostgreSQL names"
            + (". What this command (or review) changed stays unpublished, in this machine's cache" if publishing else ""))


def folder_files(folder: Path) -> dict[str, Path]:
    """A published folder's files by relative path (hidden ones, temp files, are not part of it)."""
    return {p.relative_to(folder).as_posix(): p for p in sorted(folder.rglob("*"))
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts)}


def claim_folder(store: Store, key: str, fingerprint: str | None) -> dict | None:
    """Claim the folder `key` for the build `fingerprint` before uploading into it: None when that build
    holds the claim (made now, or left by an earlier try of it), else the other build's claim. A claim
    older than STALE_CLAIM_S (the folder has no marker: its machine died mid-upload) is taken over."""
    mine = {"fingerprint": fingerprint, "host": socket.gethostname(), "at": time.time()}
    other: dict = {}
    for _ in range(3):
        if store.create_exclusive(f"{key}/{CLAIM}", json.dumps(mine)):
            return None
        text = store.read_text(f"{key}/{CLAIM}")
        other = json.loads(text) if text else {}
        if text and other.get("fingerprint") == fingerprint:
            return None
        if text and time.time() - other.get("at", 0) < STALE_CLAIM_S:
            return other
        if text:
            store.delete([f"{key}/{CLAIM}"])
    return other


def push_folder(store: Store, folder: Path, key: str, marker: dict, prune: bool = False) -> int:
    """A whole folder, then its marker: the marker is the publish. `prune` (a claimed folder): objects
    under `key` that are not the folder's (a dead machine's partial upload) are deleted first."""
    files = folder_files(folder)
    held = store.listing(key)
    if prune:
        wanted = {f"{key}/{rel}" for rel in files} | {f"{key}/{CLAIM}"}
        store.delete(sorted(k for k in held if k not in wanted))
    n = store.upload([(p, f"{key}/{rel}") for rel, p in files.items() if not same(p, held.get(f"{key}/{rel}"))])
    store.write_text(f"{key}/{MARKER}", json.dumps({**marker, "files": {r: p.stat().st_size for r, p in files.items()}}))
    return n


def missing_files(key: str, folder: Path, files: dict[str, int]) -> list[tuple[str, Path]]:
    """(store key, local file) for each of `files` (relative path -> size: a marker's, or some of them)
    whose copy in `folder` is missing or not that size: what `Store.download` fetches, in one batch."""
    return [(f"{key}/{r}", folder / r) for r, size in files.items()
            if not ((folder / r).is_file() and (folder / r).stat().st_size == size)]


def complete_copy(folder: Path, marker: dict) -> bool:
    return folder.is_dir() and not missing_files("", folder, marker["files"])


def remove_dead_fetches(parent: Path, name: str) -> list[Path]:
    "What fetches of `name` into `parent` left when killed midway (.fetch-<name>-<pid>-<id>), their process gone."
    return remove_dead_leftovers(parent.glob(f".fetch-{name}-*"), lambda p: p.name.rsplit("-", 2)[1])


def pull_folder(store: Store, key: str, folder: Path, marker: dict) -> bool:
    """Fetch a marked folder into the cache unless complete there; built beside it, renamed into place."""
    if complete_copy(folder, marker):
        return False
    remove_dead_fetches(folder.parent, folder.name)
    tmp = folder.parent / f".fetch-{folder.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    if folder.exists():
        os.rename(folder, tmp)          # an incomplete copy: keep what it has
    tmp.mkdir(parents=True, exist_ok=True)
    store.download(missing_files(key, tmp, marker["files"]))
    os.rename(tmp, folder)
    return True


@contextmanager
def store_errors(store: Store) -> Iterator[None]:
    """Unreachable store, refused credentials...: one line naming the store (no credentials in it)."""
    try:
        yield
    except ObjectStoreError:
        raise
    except Exception as exc:        # botocore's errors are no OSError; all of them end up here
        if not (isinstance(exc, (OSError, ValueError)) or type(exc).__module__.split(".")[0] in ("botocore", "aiohttp")):
            raise
        hint = ("; check the credentials in the environment (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, or your "
                "store's) and what they may do in that bucket" if isinstance(exc, PermissionError) else "")
        raise ObjectStoreError(f"object store {store.url}: {type(exc).__name__}: {exc}{hint}") from exc
