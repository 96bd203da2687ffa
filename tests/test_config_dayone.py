"""Config mistakes a new user makes on day one (the dayone26 audit): each said so it can be fixed."""

import textwrap
from pathlib import Path

import pytest

from mlc_pipeline.config import ConfigError, load_config, parse_overrides

BASE = """
data_dir: data
source:
  kind: local
  local: {folder: photos, query_map: {cats: cats, dogs: dogs}}
  licenses: [4, 5]
classes:
  cat: {queries: [cats], count: 5}
  dog: {queries: [dogs], count: 5}
other: {queries: [ants], count: 5}
"""


def write(folder: Path, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "pipeline.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def refused(tmp_path, text: str) -> str:
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, text))
    return str(err.value)


@pytest.mark.parametrize("name", ["none", "other"])
def test_a_class_named_like_a_report_keyword_is_refused(tmp_path, name):
    # a class `none` was merged with "none of the classes" in the report's confusion matrix (D1)
    msg = refused(tmp_path, BASE.replace("  cat:", f"  {name}:"))
    assert f"class name {name!r}" in msg and "'none'" in msg and "'other'" in msg and "\n" not in msg


@pytest.mark.parametrize("value, said", [
    ("[]", "source.licenses: an empty list lets no photo in"),
    ("all", "source.licenses: takes a list of Flickr licence ids"),
    ("[CC BY 2.0]", "source.licenses: takes a list of Flickr licence ids"),
])
def test_an_empty_or_wrong_licence_list_is_refused_naming_the_accepted_forms(tmp_path, value, said):
    msg = refused(tmp_path, BASE.replace("licenses: [4, 5]", f"licenses: {value}"))
    assert msg.startswith(f"config: {said}") and "more problem" not in msg, msg
    assert "any" in msg and "4 CC BY 2.0" in msg and "9 CC0 1.0" in msg      # the ids, from the table


def test_licence_ids_and_any_still_load(tmp_path):
    assert load_config(write(tmp_path, BASE)).source.licenses == [4, 5]
    assert load_config(write(tmp_path, BASE.replace("[4, 5]", "any"))).source.licenses == "any"


def test_relative_paths_in_the_file_are_taken_from_its_folder(tmp_path, monkeypatch):
    # source.local.folder was taken from the current directory, unlike data_dir and source.csv (D5)
    project, elsewhere = tmp_path / "project", tmp_path / "elsewhere"
    elsewhere.mkdir(parents=True)
    monkeypatch.chdir(elsewhere)
    text = BASE + "train: {pretrained: weights/mine.pth}\n"
    cfg = load_config(write(project, text))
    assert cfg.source.local.folder == str((project / "photos").resolve())
    assert cfg.train.pretrained == str((project / "weights" / "mine.pth").resolve())
    # keywords stay keywords; absolute and home paths stay as written
    for word in ("none", "auto", "imagenet"):
        assert load_config(write(project, BASE + f"train: {{pretrained: {word}}}\n")).train.pretrained == word
    cfg = load_config(write(project, BASE.replace("folder: photos", "folder: ~/photos")))
    assert cfg.source.local.folder == "~/photos"
    # typed on the command line: from the current directory, as data_dir=...
    cfg = load_config(write(project, BASE), parse_overrides(["source.local.folder=pics"]))
    assert cfg.source.local.folder == str((elsewhere / "pics").resolve())


@pytest.mark.parametrize("text, said", [
    ("classes:\n  cat: {queries: [cats], count: 5\n", "line 3, column 1: expected ',' or '}', but got '<stream end>'"),
    ("classes:\n\tcat: 1\n", "line 2, column 1: found character '\\t' that cannot start any token"),
])
def test_a_yaml_syntax_error_says_the_problem_and_where(tmp_path, text, said):
    msg = refused(tmp_path, text)
    assert "is not valid YAML" in msg and said in msg, msg


def test_set_with_bad_yaml_says_the_problem_and_where():
    with pytest.raises(ConfigError) as err:
        parse_overrides(["train.epochs=[1"])
    assert "line 1, column 3: expected ',' or ']'" in str(err.value), str(err.value)


def test_every_problem_is_shown_one_a_line(tmp_path):
    # "(and 4 more problems)" could not be seen, even with -v (D9)
    text = BASE.replace("count: 5", "cuont: 5")
    lines = refused(tmp_path, text).splitlines()
    assert lines[0] == ("config: classes.cat.count: required key is missing; the unknown key 'cuont' looks like "
                        "a misspelling of it (and 2 more problems, below)"), lines
    assert lines[1:] == ["  classes.dog.count: required key is missing; the unknown key 'cuont' looks like a "
                         "misspelling of it",
                         "  other.count: required key is missing; the unknown key 'cuont' looks like a misspelling of it"]


@pytest.mark.parametrize("typo, meant", [("source:\n  licences: any\n", "source.licences: unknown key; did you mean 'licenses'?"),
                                         ("train:\n  epoch: 3\n", "train.epoch: unknown key; did you mean 'epochs'?"),
                                         ("classes:\n  cat: {queries: [cats], count: 5, quries: [x]}\n",
                                          "classes.cat.quries: unknown key; did you mean 'queries'?")])
def test_an_unknown_optional_key_like_a_known_one_gets_a_hint(tmp_path, typo, meant):
    text = BASE.replace("  licenses: [4, 5]\n", "") if "licences" in typo else BASE
    if typo.startswith("source:"):
        text = text.replace("source:\n", typo)
    elif typo.startswith("classes:"):
        text = text.replace("classes:\n  cat: {queries: [cats], count: 5}\n", typo)
    else:
        text += typo
    assert refused(tmp_path, text) == f"config: {meant}"
