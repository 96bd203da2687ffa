"""An offline, Flickr-compatible server: the REST API (flickr.photos.search and friends) and a static
image host, over a deterministic world of drawn pictures (or a folder of files), with switchable faults.

    with FlickrServer(WorldSpec(seed=0, scale=0.1), FaultSpec.parse("img429=0.2")) as server:
        flickr = flickrapi.FlickrAPI("key", "secret", format="parsed-json", store_token=False)
        flickr.REST_URL = server.rest_url
"""

from .faults import FaultSpec
from .model import Photo, WorldSpec
from .server import FlickrServer, serve_main
from .world import World, build_world

__all__ = ["FaultSpec", "FlickrServer", "Photo", "World", "WorldSpec", "build_world", "serve_main"]
