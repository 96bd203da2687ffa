import textwrap

import pytest

from pathlib import Path

from mlc_pipeline.config import ConfigError, load_config, parse_config, parse_overrides

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
    # the secrets21 audit: these passed, then were retried as "an unparseable API response"
    (GOOD.replace("https://api.flickr.com/", "http://127.0.0.1:99999/"), "source.rest_url: must be an http(s) URL"),
    (GOOD.replace("https://api.flickr.com/", "http://[::1/"), "source.rest_url: must be an http(s) URL"),
    (GOOD.replace("https://api.flickr.com/", "http://api.flickr .com/"), "source.rest_url: must be an http(s) URL"),
    (GOOD.replace("https://api.flickr.com/", "https://me:hunter2@api.flickr.com/"), "source.rest_url: holds a credential"),
    (GOOD.replace("rest/\n", "rest/?api_key=hunter2\n"), "source.rest_url: holds a credential"),
    (GOOD.replace("rest/\n", "rest/?oauth_token_secret=hunter2\n"), "source.rest_url: holds a credential"),
    (GOOD.replace("rest/\n", "rest/?auth_token=hunter2\n"), "source.rest_url: holds a credential"),
    (GOOD + "api_key: abc\n", "api_key: unknown key"),
    # a misspelt required key: named with the key it was meant to be (it said only "missing")
    (GOOD.replace("classes:", "clases:"),
     "config: classes: required key is missing; the unknown key 'clases' looks like a misspelling of it"),
    (GOOD.replace("  count: 450", "  cuont: 450"),
     "config: other.count: required key is missing; the unknown key 'cuont' looks like a misspelling of it"),
])
def test_bad_config_is_one_line_naming_the_key(tmp_path, text, key):
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, text))
    msg = str(err.value)
    assert key in msg and "\n" not in msg and "hunter2" not in msg


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path, "classes: [unclosed"))


def test_overrides_replace_leaves(tmp_path):
    cfg = load_config(write(tmp_path, GOOD), {"source": {"per_host_concurrency": 4}})
    assert cfg.source.per_host_concurrency == 4 and cfg.source.max_calls_per_hour == 3600


def test_an_override_of_a_class_the_file_does_not_have_is_named_as_a_typo(tmp_path):
    """`--set classes.grizly.count=5` said "classes.grizly.queries: required key is missing"; only the
    Prefect flow named the typo (the arch24 audit). A new class with its queries is still welcome."""
    path = write(tmp_path, GOOD)
    with pytest.raises(ConfigError) as err:
        load_config(path, {"classes": {"grizly": {"count": 5}}})
    assert str(err.value) == (f"config: classes.grizly is set over {path}, which has no class 'grizly' (its classes: "
                              "grizzly, black, teddy); a new class needs its queries and count")
    cfg = load_config(path, {"classes": {"panda": {"queries": ["panda"], "count": 5}, "grizzly": {"count": 5}}})
    assert cfg.classes["panda"].count == 5 and cfg.classes["grizzly"].count == 5


@pytest.mark.parametrize("override, key", [
    ({"build": {"name": "../../../escape"}}, "build.name"),
    ({"build": {"name": "a/b"}}, "build.name"),
    ({"build": {"name": ".."}}, "build.name"),
    ({"build": {"split": {"training": 0.8, "valid": 0.2}}}, "build.split: unknown split ['training']"),
    ({"build": {"split": {}}}, "build.split"),
    ({"build": {"split": {"train": 0.8, "valid": 0.1}}}, "sum to 1"),
    ({"build": {"split": {"train": 1.0}}}, "train and valid"),
    ({"train": {"lr": -1}}, "train.lr"),
    ({"train": {"lr": 0}}, "train.lr"),
])
def test_values_that_escape_or_break_are_refused(tmp_path, override, key):
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, GOOD), override)
    assert key in str(err.value) and "\n" not in str(err.value)


def test_good_names_and_splits_pass(tmp_path):
    cfg = load_config(write(tmp_path, GOOD), {"build": {"name": "bears-2026.v2",
                                                         "split": {"train": 0.7, "valid": 0.15, "test": 0.15}}})
    assert cfg.build.name == "bears-2026.v2"
    assert load_config(write(tmp_path, GOOD), {"build": {"split": {"train": 0.8, "valid": 0.2}}})


def test_a_file_that_is_not_a_mapping_or_not_utf8_is_one_line(tmp_path):
    for text in ("- a\n- b\n", "just a sentence\n", "42\n"):
        with pytest.raises(ConfigError, match="must hold a YAML mapping") as err:
            load_config(write(tmp_path, text))
        assert "pipeline.yaml" in str(err.value)
    latin = tmp_path / "latin.yaml"
    latin.write_bytes(textwrap.dedent(GOOD).encode() + "# caf\u00e9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match="is not UTF-8 text") as err:
        load_config(latin)
    assert "\n" not in str(err.value)


def test_the_same_query_under_two_sets_is_a_warning(tmp_path, caplog):
    text = GOOD.replace('["black bear"]', '["grizzly bear"]').replace('"landscape"]', '"landscape", "Teddy  Bear"]')
    with caplog.at_level("WARNING", logger="mlc_pipeline.config"):
        load_config(write(tmp_path, text))
    warnings = [r.getMessage() for r in caplog.records]
    assert any("classes.grizzly and classes.black" in w and "both labels" in w for w in warnings), warnings
    assert any("classes.teddy and other" in w and "stay in classes.teddy" in w for w in warnings), warnings
    caplog.clear()
    with caplog.at_level("WARNING", logger="mlc_pipeline.config"):
        load_config(write(tmp_path, GOOD))
    assert not caplog.records


def test_an_unknown_arch_fails_before_collecting(tmp_path):
    from mlc_pipeline.model.options import check_train_settings
    cfg = load_config(write(tmp_path, GOOD), {"train": {"arch": "resnet_nope"}})
    with pytest.raises(ConfigError, match="^config: train: arch 'resnet_nope' is neither") as failed:
        check_train_settings(cfg)
    assert "\n" not in str(failed.value)            # one line, not pydantic's report
    check_train_settings(load_config(write(tmp_path, GOOD), {"train": {"arch": "resnet18"}}))


@pytest.mark.parametrize("arch, why", [("mobilenet_v2", "no pooling layer to cut the body at"),
                                       ("vit_b_16", "no pooling layer"), ("maxvit_t", "NotImplementedError")])
def test_a_torchvision_network_fastai_cannot_build_fails_before_collecting(tmp_path, arch, why, recwarn):
    """These names passed the check and failed at training, after the run had collected. The refusal
    is one line: torchvision's "'pretrained' is deprecated" warnings came before it (the docs24 audit)."""
    from mlc_pipeline.model.options import check_train_settings
    cfg = load_config(write(tmp_path, GOOD), {"train": {"arch": arch, "pretrained": "none"}})
    with pytest.raises(ConfigError, match=f"^config: train.arch: {arch} cannot be trained here .*{why}") as failed:
        check_train_settings(cfg)
    assert "\n" not in str(failed.value)
    assert not [w for w in recwarn if "torchvision" in w.filename], [str(w.message) for w in recwarn]
    check_train_settings(load_config(write(tmp_path, GOOD), {"train": {"arch": "mobilenet_v3_small"}}))


def test_relative_data_dir_is_taken_from_the_config_files_folder(tmp_path, monkeypatch):
    (tmp_path / "project").mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    cfg = load_config(write(tmp_path / "project", GOOD))
    assert cfg.data_dir == (tmp_path / "project" / "data").resolve()
    # a path typed on the command line is the exception: it is taken from the current directory
    assert load_config(write(tmp_path / "project", GOOD), parse_overrides(["data_dir=mine"])).data_dir == \
        (elsewhere / "mine").resolve()
    # an object-store URL typed there is no path: it stays a URL (it became <cwd>/s3:/bucket, local)
    cfg = load_config(write(tmp_path / "project", GOOD), parse_overrides(["data_dir=s3://bucket/prefix"]))
    assert cfg.data_url == "s3://bucket/prefix" and "s3:" not in str(cfg.data_dir)
    # an object store given there stays a URL (its cache is then the local data root)
    cfg = load_config(write(tmp_path / "project", GOOD), parse_overrides(["data_dir=s3://bkt/proj", "cache_dir=c"]))
    assert cfg.data_url == "s3://bkt/proj" and cfg.data_dir.name == "c"


def test_shipped_configs_use_the_repository_data_folder(monkeypatch, tmp_path):
    repo = Path(__file__).resolve().parents[1]
    monkeypatch.chdir(tmp_path)               # from any directory: still the repository's data/
    for name in ("offline.yaml", "flickr.example.yaml"):
        assert load_config(repo / "configs" / name).data_dir == (repo / "data").resolve()


def test_set_with_bad_yaml_is_one_line():
    with pytest.raises(ConfigError) as err:
        parse_overrides(["train.epochs=[1"])
    assert "train.epochs=[1" in str(err.value) and "\n" not in str(err.value)


def test_store_credentials_of_any_fsspec_backend_are_refused_in_the_config(tmp_path):
    """Azure's account_key / sas_token / connection_string passed as no credentials; given as flow
    overrides they reached the flow log and the run artifact."""
    classes = {"classes": {"a": {"queries": ["a"], "count": 1}}, "other": {"queries": ["o"], "count": 1}}
    # passphrase (sftp's key), auth (HTTP basic), Authorization in headers: the secrets21 audit, by reading
    for name in ("account_key", "sas_token", "connection_string", "client_secret", "private_key", "token",
                 "passphrase", "auth"):
        with pytest.raises(ConfigError, match=f"storage_options.*{name}.*credentials"):
            parse_config({"data_dir": "abfs://c/p", "storage_options": {name: "x"}, **classes}, tmp_path)
    # a password under another name, or inside a URL, is one all the same; the line never repeats it
    for options, name in (({"passwd": "S3PwLEAK"}, "passwd"),
                          ({"endpoint_url": "http://u:S3PwLEAK@h:9000"}, "endpoint_url"),
                          ({"client_kwargs": {"endpoint_url": "https://u:S3PwLEAK@h"}}, "endpoint_url"),
                          ({"headers": {"Authorization": "Bearer S3PwLEAK"}}, "Authorization")):
        with pytest.raises(ConfigError, match=f"storage_options.*{name}.*credentials") as err:
            parse_config({"data_dir": "s3://b/p", "storage_options": options, **classes}, tmp_path)
        assert "S3PwLEAK" not in str(err.value)
    kept = {"endpoint_url": "http://127.0.0.1:1", "s3_additional_kwargs": {"SSEKMSKeyId": "alias/x"}, "anon": False}
    assert parse_config({"data_dir": "s3://b/p", "storage_options": kept, **classes}, tmp_path).storage_options == kept


@pytest.mark.parametrize("text, key", [
    ("train: {max_unknown_accepted: yes}", "train.max_unknown_accepted"),   # was a cap of 1: none at all
    ("train: {max_unknown_accepted: off}", "train.max_unknown_accepted"),   # was a cap of 0
    ("train: {epochs: true}", "train.epochs"),                              # was one epoch
    ("source: {per_host_concurrency: on}", "source.per_host_concurrency"),
    ("source: {licenses: [4, yes]}", "source.licenses"),                    # was [4, 1]: a restricted licence
])
def test_a_yes_no_value_for_a_number_is_refused_not_read_as_one_or_zero(tmp_path, text, key):
    """YAML reads yes/no/on/off/true/false as booleans, and pydantic took True for 1 and False for 0."""
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, GOOD + "\n" + text + "\n"))
    said = str(err.value)
    assert key in said and "is a yes/no value" in said and "\n" not in said, said
    assert load_config(write(tmp_path, GOOD + "\ntrain: {tta: yes, compare_baselines: off}\n")).train.tta is True


@pytest.mark.parametrize("said, means", [("no", "none"), ("off", "none"), ("false", "none"),
                                         ("yes", "imagenet"), ("true", "imagenet")])
def test_pretrained_yes_or_no_means_imagenet_or_none(tmp_path, said, means):
    """`pretrained: no` was refused as "not a yes/no setting" although it plainly says: from scratch."""
    cfg = load_config(write(tmp_path, GOOD + f"\ntrain: {{pretrained: {said}}}\n"))
    assert cfg.train.pretrained == means
    assert load_config(write(tmp_path, GOOD), {"train": {"pretrained": said == "yes"}}).train.pretrained == \
        ("imagenet" if said == "yes" else "none")          # --set train.pretrained=no reads the same
    from mlc_pipeline.model.weights import pretrained_choice
    assert pretrained_choice(f'"{said}"'.strip('"')) == means     # quoted, a string: the same (weights23)


@pytest.mark.parametrize("text, key", [("train: {max_unknown_accepted: .nan}", "train.max_unknown_accepted"),
                                       ("train: {lr: .inf}", "train.lr")])
def test_nan_or_infinity_is_refused_as_not_finite(tmp_path, text, key):
    """A nan cap was refused as 'should be less than or equal to 1', which did not say what was wrong."""
    with pytest.raises(ConfigError, match=f"{key}: Input should be a finite number"):
        load_config(write(tmp_path, GOOD + "\n" + text + "\n"))


def test_jpeg_subsampling_is_read_as_written_quoted_or_not(tmp_path):
    # Unquoted, YAML 1.1 reads 4:4:4 as a base-60 number (14644): in the file and in --set alike.
    assert load_config(write(tmp_path, GOOD)).build.jpeg_subsampling == "4:2:0"
    for written in ("4:4:4", '"4:4:4"', "'4:2:2'", "4:2:2", "4:2:0"):
        cfg = load_config(write(tmp_path, GOOD + f"build: {{jpeg_subsampling: {written}}}\n"))
        assert cfg.build.jpeg_subsampling == written.strip("'\"")
    assert load_config(write(tmp_path, GOOD), parse_overrides(["build.jpeg_subsampling=4:4:4"])).build.jpeg_subsampling \
        == "4:4:4"
    for wrong in ("4:1:1", "444", "full"):
        with pytest.raises(ConfigError) as err:
            load_config(write(tmp_path, GOOD + f"build: {{jpeg_subsampling: {wrong}}}\n"))
        assert str(err.value) == "config: build.jpeg_subsampling: Input should be '4:2:0', '4:2:2' or '4:4:4'"
