import textwrap

import pytest

from mlc_pipeline.config import ConfigError, load_config

GOOD = """
data_dir: data
source:
  kind: flickr
  rest_url: https://api.flickr.com/services/rest/
  allowed_hosts: [live.staticflickr.com]
  licenses: [4, 5, 9, 10, 11]
  sizes: [url_c, url_z, url_m]
  per_host_concurrency: 8
  max_calls_per_hour: 3600
classes:
  grizzly: {queries: ["grizzly bear"], count: 150}
  black: {queries: ["black bear"], count: 150}
  teddy: {queries: ["teddy bear"], count: 150}
other:
  queries: ["toys", "portrait white background", "landscape"]
  count: 450
"""


def write(tmp_path, text):
    p = tmp_path / "pipeline.yaml"
    p.write_text(textwrap.dedent(text))
    return p


def test_issue_example_loads(tmp_path):
    cfg = load_config(write(tmp_path, GOOD))
    assert list(cfg.classes) == ["grizzly", "black", "teddy"]
    assert cfg.source.per_host_concurrency == 8 and cfg.source.licenses == [4, 5, 9, 10, 11]
    assert cfg.data_dir.is_absolute()


def test_shipped_configs_load():
    for name in ("configs/offline.yaml", "configs/flickr.example.yaml"):
        load_config(name)


@pytest.mark.parametrize("text, key", [
    (GOOD.replace("count: 450", "count: many"), "other.count"),
    (GOOD.replace("  count: 450\n", ""), "other.count: required key is missing"),
    (GOOD.replace("per_host_concurrency", "per_host_concurency"), "source.per_host_concurency: unknown key"),
    (GOOD.replace("url_c,", "url_huge,"), "source.sizes"),
    (GOOD.replace("grizzly:", "Grizzly Bears:"), "classes"),
    (GOOD.replace("rest_url: https", "rest_url: ftp"), "source.rest_url"),
    (GOOD + "api_key: abc\n", "api_key: unknown key"),
])
def test_bad_config_is_one_line_naming_the_key(tmp_path, text, key):
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, text))
    msg = str(err.value)
    assert key in msg and "\n" not in msg


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path, "classes: [unclosed"))


def test_overrides_replace_leaves(tmp_path):
    cfg = load_config(write(tmp_path, GOOD), {"source": {"per_host_concurrency": 4}})
    assert cfg.source.per_host_concurrency == 4 and cfg.source.max_calls_per_hour == 3600
