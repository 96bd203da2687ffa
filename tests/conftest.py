"""Session-wide settings that keep every test hermetic.

`train.arch` and `train.pretrained` default to `auto`, which looks for torchvision's ImageNet weights
in $TORCH_HOME and downloads them when it can. Tests must neither depend on what a developer's cache
holds nor download anything (CI may have internet): an empty TORCH_HOME and MLC_OFFLINE=1 for the
whole session, inherited by subprocesses. tests/test_weights.py lifts them where it tests exactly that.
"""

import atexit
import os
import shutil
import tempfile

_torch_home = tempfile.mkdtemp(prefix="mlc-test-torch-home-")
atexit.register(shutil.rmtree, _torch_home, ignore_errors=True)
os.environ["TORCH_HOME"] = _torch_home
os.environ["MLC_OFFLINE"] = "1"
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")     # before prefect is imported

# ---- shared fixtures (the helpers behind them live in helpers.py and shapes.py)
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))   # helpers.py, shapes.py for tests in every sub-folder
ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:      # flows/ is a top-level folder, not part of the installed package
    sys.path.insert(0, str(ROOT))
from helpers import FIXTURES, free_port, tiny_config  # noqa: E402


def pytest_sessionstart(session):
    """Under CI the real photos must be there: without them ten modules (the takedown tests among
    them) skip, as they do on a developer's machine without ../shared, and a skip is easy to miss."""
    if os.environ.get("CI") and not FIXTURES.is_dir():
        raise pytest.UsageError(f"CI is set and the fixture photos are missing: {FIXTURES} (../shared beside "
                                "the checkout)")


@pytest.fixture
def port() -> int:
    """A free loopback port."""
    return free_port()


@pytest.fixture
def tiny_project(tmp_path) -> Path:
    """The tiny end-to-end config (helpers.tiny_config) in a fresh folder; its data root beside it."""
    return tiny_config(tmp_path, free_port())


@pytest.fixture
def offline_server():
    """The bundled Flickr-compatible server, a small generated world, on a free loopback port."""
    from mlc_pipeline.flickr_server import FlickrServer, WorldSpec
    with FlickrServer(WorldSpec(seed=0, scale=0.1)) as server:
        yield server


@pytest.fixture(scope="session")
def harness():
    """A real Prefect API on a temporary SQLite file for the flows run in-process (tests/test_flow*.py):
    one per session, 14-22 s to start."""
    from prefect.testing.utilities import prefect_test_harness
    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="session")
def trained_shapes_bundle() -> tuple[Path, Path]:
    """(manifest, bundle folder) of one tiny model on the shapes world, trained once per session."""
    from shapes import trained_bundle
    return trained_bundle()


@pytest.fixture(scope="session")
def s3_server():
    """An S3-compatible server on loopback (moto in server mode), for an object-store data root.
    Yields its endpoint URL; its throwaway credentials are in the environment (subprocesses inherit
    them), as a user's would be."""
    moto_server = pytest.importorskip("moto.server", reason="moto[server] is in the test extra")
    import logging
    logging.getLogger("werkzeug").setLevel(logging.WARNING)     # a line per request otherwise
    saved = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")}
    os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1")
    port = free_port()
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture(params=["file", "s3"])
def store_url(request, tmp_path) -> tuple[str, dict]:
    """(data_dir URL, storage_options) of an empty store: a `file://` folder (no ETag at all), then a
    bucket on the S3-compatible server (`s3_server`)."""
    if request.param == "file":
        (tmp_path / "store").mkdir()
        return f"file://{tmp_path}/store", {"auto_mkdir": True}     # fsspec's local store makes no folders else
    endpoint = request.getfixturevalue("s3_server")
    import s3fs
    bucket = f"sync-{tmp_path.name.lower().replace('_', '-')[-40:]}"
    s3fs.S3FileSystem(endpoint_url=endpoint).mkdir(bucket)
    return f"s3://{bucket}/proj", {"endpoint_url": endpoint}


# --- a real PostgreSQL server for the catalog's PostgreSQL backend (tests/pgserver.py) ----------
import uuid  # noqa: E402


@pytest.fixture(scope="session")
def postgres_server():
    """One server for the session; each test that needs one gets its own database (`pg_url`).
    Its password is in PGPASSWORD, as the docs tell users, for this process and its children."""
    from pgserver import PostgresServer, missing
    why = missing()
    if why:
        if os.environ.get("CI"):
            pytest.fail(why)
        pytest.skip(why)
    server = PostgresServer().start()
    previous = os.environ.get("PGPASSWORD")
    os.environ["PGPASSWORD"] = server.password
    yield server
    if previous is None:
        os.environ.pop("PGPASSWORD", None)
    else:
        os.environ["PGPASSWORD"] = previous
    server.stop()


@pytest.fixture
def pg_url(postgres_server) -> str:
    """A fresh, empty database on the session's server."""
    return postgres_server.create_database("t_" + uuid.uuid4().hex[:12])


@pytest.fixture(params=["sqlite", "postgresql"])
def catalog_settings(request) -> dict:
    """Config keys for each catalog backend: run a test once on SQLite, once on PostgreSQL."""
    if request.param == "sqlite":
        return {}
    return {"catalog": {"url": request.getfixturevalue("pg_url")}}
