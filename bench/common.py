"""What the bench scripts share: the `source:` block that points `mlc` at a bundled server."""

from __future__ import annotations

from mlc_pipeline.flickr_server import FlickrServer

# Faults want fast retries and a small cap, or a chaos run spends its time waiting.
FAST_RETRIES = {"timeout_s": 1.0, "retry": "{attempts: 8, base_delay_s: 0.05, max_delay_s: 0.5}",
                "max_retry_after_s": 2, "max_image_bytes": 5000000}


def source_yaml(srv: FlickrServer, **settings) -> str:
    """A `source:` YAML block for the server `srv` (kind flickr, so the real client code runs)."""
    lines = ["source:", "  kind: flickr", f'  rest_url: "{srv.rest_url}"',
             f'  allowed_hosts: ["{srv.static_host}"]', "  sizes: [url_n, url_m]"]
    lines += [f"  {key}: {value}" for key, value in settings.items()]
    return "\n".join(lines)
