"""Every command the README shows works as written (issue 17).

Checked here, in seconds: each `mlc` command of the README (its code blocks, its prose, and the
synopsis table with placeholders filled in) is accepted by the real parser with exactly those
options; each config file it names exists and validates; each script it names exists and is valid
bash; a file a command copies is then treated as there.

Not run here, on purpose: the commands that take minutes. `mlc run -c configs/offline.yaml` is the
whole job on ~2,300 images (about 9 minutes on 2 cores, docs/training.md), too slow for the suite;
the same command on the tiny project config (tests/helpers.py tiny_config) runs end to end in
tests/test_pipeline.py, and `mlc inspect --html` in the report tests. `scripts/setup.sh` installs
the environment the tests already run in, and `scripts/test.sh` is the suite itself.
"""

from __future__ import annotations

import re
import shlex
import subprocess

import pytest

from helpers import REPO

from mlc_pipeline.cli import build_parser
from mlc_pipeline.config import load_config, parse_overrides
from mlc_pipeline.flickr_server import serve_main

README = (REPO / "README.md").read_text()
PLACEHOLDERS = {"CFG": "configs/offline.yaml", "BUNDLE": "data/models/x", "IMAGE...": "a.jpg", "N": "1",
                "vN": "v1", "DIR": "photos", "QUERY=SUBDIR": "ants=ants", "SPEC": "http500=0.1", "ARCH": "resnet18",
                "key=value": "train.epochs=2"}


def shell_lines() -> list[str]:
    """Lines of the README's bash code blocks and its inline `...` commands, outside tables."""
    lines = []
    for block in re.findall(r"```bash\n(.*?)```", README, re.S):
        joined = block.replace("\\\n", " ")
        lines += [line.split(" #")[0].strip() for line in joined.splitlines() if line.strip()]
    prose = re.sub(r"```.*?```", "", README, flags=re.S)
    for line in prose.splitlines():
        if not line.startswith("|"):
            lines += [span for span in re.findall(r"`([^`]+)`", line) if re.match(r"(\.venv/bin/)?mlc |bash ", span)]
    return lines


def table_commands() -> list[list[str]]:
    """The synopsis table's commands, optional parts included, placeholders filled in."""
    out = []
    for cell in re.findall(r"^\| `(mlc (?:\\\||[^|])*?)` (?:/ `(mlc [^`]*)` )?\|", README, re.M):
        for synopsis in filter(None, cell):
            synopsis = re.sub(r"(\S+?)\\\|\S+", r"\1", synopsis)     # `A\|B` (a table's escaped "or"): A
            words = shlex.split(synopsis.replace("`", "").replace("[", " ").replace("]", " "))
            out.append([PLACEHOLDERS.get(w, w) for w in words])
    return out


def commands() -> list[list[str]]:
    """Every command: a list of words, 'mlc' first, for each `mlc`, `bash` or `cp` line."""
    out = []
    for line in shell_lines():
        for part in re.split(r"\s*&&\s*", line):
            words = shlex.split(part)
            if words and words[0].endswith("/mlc"):
                words[0] = "mlc"
            if words and words[0] in ("mlc", "bash", "cp"):
                out.append(words)
    return out + table_commands()


def test_the_readme_has_commands_to_check():
    found = commands()
    assert ["mlc", "run", "-c", "configs/offline.yaml"] in found
    assert ["mlc", "collect", "-c", "configs/pipeline.yaml"] in found
    assert {c[1] for c in found if c[0] == "mlc"} >= {"collect", "curate", "build", "train", "mine", "predict",
                                                      "run", "inspect", "serve-flickr", "weights"}


def test_every_readme_command_is_accepted_as_written(capsys):
    copied: dict[str, str] = {}
    for words in commands():
        if words[0] == "cp":
            assert (REPO / words[1]).is_file(), words
            copied[words[2]] = words[1]
        elif words[0] == "bash":
            script = REPO / words[1]
            assert script.is_file(), words
            assert subprocess.run(["bash", "-n", str(script)]).returncode == 0, words
        elif words[1] == "serve-flickr":       # its own parser: the options must be in its help
            with pytest.raises(SystemExit) as done:
                serve_main(["--help"])
            assert done.value.code == 0
            text = capsys.readouterr().out
            for option in (w for w in words[2:] if w.startswith("--")):
                assert option in text, (words, option)
        else:
            try:
                args = build_parser().parse_args(words[1:])
            except SystemExit as done:                   # --version, --help: exit 0; a bad option: 2
                assert done.code == 0, words
                continue
            config = getattr(args, "config", None)
            if config:
                path = REPO / copied.get(config, config)
                assert path.is_file(), words
                cfg = load_config(path, parse_overrides(args.set))       # validates, overrides included
                if not any(s.startswith("data_dir=") for s in args.set or []):
                    assert cfg.data_dir == (REPO / "data").resolve(), words   # the repo's data/, from any folder
