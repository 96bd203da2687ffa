"""The S3 client of an s3:// data root, bounded for this project: the timeouts and tries that keep a
stalled gateway from holding a command for minutes, each replaced by the user's storage_options.

fsspec caches filesystem instances by class and arguments and gives the same instance to every caller
in the process, and s3fs's own tries (`S3FileSystem.retries`) are no constructor argument. Set on a
cached S3FileSystem, they reached every other user of that instance, and no option could change them
(review28 #7). Here they are an argument of a subclass (`storage_options.s3fs_retries`): part of the
instance's key in fsspec's cache (a cache of this class's own), and of what it pickles.

A CompleteMultipartUpload (every upload of 100 MiB or more: a large model bundle's file) gets its own
read timeout: the server joins the parts before it answers, which can take minutes. AWS and MinIO keep
the answer alive with whitespace meanwhile, but a gateway that does not (Ceph RGW) says nothing until
it is done, and the client's 20 s `read_timeout` would cut it, then try again on an upload the first
try may have completed (docs/scaling.md). Needs aiobotocore 3.9.1 or later (a request's own
read_timeout: botocore 1.43.72), which the `s3` extra asks for.
"""

from __future__ import annotations

from s3fs import S3FileSystem

# botocore's Config for the client, each key replaced by the user's storage_options.config_kwargs: read_timeout waits
# for the server once a request (a part's whole body) is sent; S3FS_TRIES x 2 tries of 20 s, not 5 x 5 of 15 s (beyond28)
S3_CLIENT = {"connect_timeout": 10, "read_timeout": 20, "retries": {"total_max_attempts": 2, "mode": "standard"}}
S3FS_TRIES = 2                  # s3fs's tries of each call, around botocore's: storage_options.s3fs_retries
COMPLETE_READ_TIMEOUT = 300     # s, a CompleteMultipartUpload's read timeout: storage_options.complete_read_timeout


def open_s3(url: str, options: dict) -> tuple[BoundedS3FileSystem, str]:
    """The filesystem of an s3:// (s3a://) URL and the URL's path in it, the user's options over mlc's bounds."""
    given = options.get("config_kwargs", {})
    if isinstance(given, dict):     # another type is said by Store.check (the store does not take it)
        options = {**options, "config_kwargs": {**S3_CLIENT, **given}}
    fs = BoundedS3FileSystem(**options)
    return fs, fs._strip_protocol(url)


def number(value, name: str, whole: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, int if whole else (int, float)) or value < 1:
        raise ValueError(f"storage_options.{name} must be a {'whole ' if whole else ''}number, 1 or more, not {value!r}")
    return value


class BoundedS3FileSystem(S3FileSystem):
    """s3fs with this project's tries and completion timeout, on instances of its own."""

    def __init__(self, *args, s3fs_retries: int = S3FS_TRIES, complete_read_timeout: float = COMPLETE_READ_TIMEOUT,
                 **kwargs):
        super().__init__(*args, **kwargs)
        self.retries = number(s3fs_retries, "s3fs_retries", whole=True)     # s3fs reads it: this instance's, not 5
        self.complete_read_timeout = number(complete_read_timeout, "complete_read_timeout", whole=False)

    async def get_s3(self, bucket=None):
        """The client s3fs calls, with the completion's read timeout (each client once: botocore keeps one
        handler per unique_id)."""
        s3 = await super().get_s3(bucket)
        s3.meta.events.register("before-call.s3.CompleteMultipartUpload", self.completion_timeout,
                                unique_id="mlc-complete-read-timeout")
        return s3

    def completion_timeout(self, context: dict, **_) -> None:
        context["read_timeout"] = max(self.complete_read_timeout, context["client_config"].read_timeout)
