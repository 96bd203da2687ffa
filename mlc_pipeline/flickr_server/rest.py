"""The REST API surface: method dispatch, Flickr-shaped response bodies, JSON/JSONP/XML encoding."""

from __future__ import annotations

import json
from typing import Callable, Mapping
from xml.sax.saxutils import quoteattr

from .model import INT_DIMENSION_SIZES, LICENSES, SIZE_TABLE, Photo
from .search import SearchError, page_of, parse_query
from .world import World

_SIZE_LABELS = {"sq": "Square", "t": "Thumbnail", "q": "Large Square", "s": "Small", "n": "Small 320",
                "m": "Medium", "z": "Medium 640", "c": "Medium 800", "l": "Large"}


class ApiError(Exception):
    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


def fail(code: int, message: str) -> dict:
    return {"stat": "fail", "code": code, "message": message}


def image_url(static_host: str, photo: Photo, size: str) -> str:
    return f"http://{static_host}/static/{photo.server}/{photo.id}_{photo.secret}{SIZE_TABLE[size][2]}.jpg"


class RestApi:
    """Answers one API call (already authenticated) with a response dict, and records what searches offered."""

    def __init__(self, world: World, static_host: str, on_offered: Callable[[list[str]], None]):
        self.world = world
        self.static_host = static_host
        self.on_offered = on_offered
        self.methods: dict[str, Callable[[Mapping[str, str]], dict]] = {
            "flickr.photos.search": self.photos_search,
            "flickr.photos.licenses.getInfo": self.licenses_get_info,
            "flickr.photos.getSizes": self.photos_get_sizes,
            "flickr.test.echo": self.test_echo,
        }

    def call(self, params: Mapping[str, str]) -> dict:
        method = params.get("method", "")
        handler = self.methods.get(method)
        if handler is None:
            return fail(112, f'Method "{method}" not found')
        try:
            return handler(params)
        except (ApiError, SearchError) as error:
            return fail(error.code, error.message)

    def licenses_get_info(self, params: Mapping[str, str]) -> dict:
        licenses = [{"id": i, "name": name, "url": url} for i, name, url in LICENSES]
        return {"licenses": {"license": licenses}, "stat": "ok"}

    def test_echo(self, params: Mapping[str, str]) -> dict:
        echoed = {name: {"_content": value} for name, value in params.items() if not name.startswith("oauth_")}
        return {**echoed, "stat": "ok"}

    def photos_search(self, params: Mapping[str, str]) -> dict:
        query = parse_query(params)
        matches = self.world.index.sorted_matches(query)
        page_photos, pages = page_of(matches, query, self.world.spec.result_cap)
        extras = {e.strip().lower() for e in str(params.get("extras", "") or "").split(",") if e.strip()}
        self.on_offered([photo.id for photo in page_photos])
        return {
            "photos": {
                "page": query.page,
                "pages": pages,
                "perpage": query.per_page,
                "total": str(len(matches)),  # a string, as real responses often have it
                "photo": [self.photo_entry(photo, extras) for photo in page_photos],
            },
            "stat": "ok",
        }

    def photo_entry(self, photo: Photo, extras: set[str]) -> dict:
        entry: dict = {"id": photo.id, "owner": photo.owner, "secret": photo.secret, "server": photo.server,
                       "farm": photo.farm, "title": photo.title, "ispublic": 1, "isfriend": 0, "isfamily": 0}
        if "license" in extras:
            entry["license"] = str(photo.license)
        if "date_upload" in extras:
            entry["dateupload"] = str(photo.dateupload)
        if "date_taken" in extras:
            entry.update(datetaken=photo.datetaken, datetakengranularity=0, datetakenunknown="0")
        if "owner_name" in extras:
            entry["ownername"] = photo.ownername
        if "tags" in extras:
            entry["tags"] = " ".join(photo.tags)
        if "source_file" in extras and photo.source_file:   # not Flickr's: folder mode's original file name
            entry["source_file"] = photo.source_file
        if "o_dims" in extras:
            entry.update(o_width=str(photo.o_width), o_height=str(photo.o_height))
        for size, (width, height) in photo.sizes.items():
            if f"url_{size}" not in extras:
                continue  # a size the photo lacks is simply absent, like on Flickr
            as_type = int if size in INT_DIMENSION_SIZES else str
            entry[f"url_{size}"] = image_url(self.static_host, photo, size)
            entry[f"height_{size}"] = as_type(height)
            entry[f"width_{size}"] = as_type(width)
        return entry

    def photos_get_sizes(self, params: Mapping[str, str]) -> dict:
        photo = self.world.by_id.get(str(params.get("photo_id", "")))
        if photo is None:
            raise ApiError(1, "Photo not found")
        sizes = [{"label": _SIZE_LABELS[size], "width": width, "height": height,
                  "source": image_url(self.static_host, photo, size), "media": "photo"}
                 for size, (width, height) in photo.sizes.items()]
        return {"sizes": {"canblog": 0, "canprint": 0, "candownload": 1, "size": sizes}, "stat": "ok"}


def encode_response(body: dict, params: Mapping[str, str]) -> tuple[str, bytes]:
    """(content type, bytes) in the format the caller asked for: json, JSONP, or REST XML."""
    fmt = str(params.get("format", "rest") or "rest")
    if fmt == "json":
        text = json.dumps(body, ensure_ascii=False)
        if str(params.get("nojsoncallback", "")) not in ("1", "true"):
            callback = str(params.get("jsoncallback", "") or "jsonFlickrApi")
            if not callback.replace("_", "").replace(".", "").isalnum():
                callback = "jsonFlickrApi"  # never echo arbitrary script into a response
            return "text/javascript; charset=utf-8", f"{callback}({text})".encode("utf-8")
        return "application/json; charset=utf-8", text.encode("utf-8")
    return "text/xml; charset=utf-8", to_rest_xml(body).encode("utf-8")


def to_rest_xml(body: dict) -> str:
    """Flickr's REST XML for a response dict: scalars become attributes, lists repeated elements."""
    if body.get("stat") == "fail":
        return (f'<?xml version="1.0" encoding="utf-8" ?>\n<rsp stat="fail">\n'
                f'\t<err code={quoteattr(str(body["code"]))} msg={quoteattr(body["message"])} />\n</rsp>\n')
    inner = "".join(_xml_element(name, value) for name, value in body.items() if name != "stat")
    return f'<?xml version="1.0" encoding="utf-8" ?>\n<rsp stat="ok">\n{inner}</rsp>\n'


def _xml_element(name: str, value) -> str:
    if isinstance(value, list):
        return "".join(_xml_element(name, item) for item in value)
    if not isinstance(value, dict):
        return f"<{name}>{_escape_text(str(value))}</{name}>"
    attributes = "".join(f" {key}={quoteattr(str(v))}" for key, v in value.items()
                         if not isinstance(v, (dict, list)) and key != "_content")
    children = "".join(_xml_element(key, v) for key, v in value.items() if isinstance(v, (dict, list)))
    text = _escape_text(str(value["_content"])) if "_content" in value else ""
    if not children and not text:
        return f"<{name}{attributes} />\n"
    return f"<{name}{attributes}>{text}{children}</{name}>\n"


def _escape_text(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
