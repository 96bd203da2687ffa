"""report/inspect.py: the version diff `mlc inspect` and the build's summary show."""

from mlc_pipeline.report.inspect import PROBE_GROUP, version_diff


def row(photo_id: str, labels: str, split: str) -> dict:
    return {"source": "local", "photo_id": photo_id, "labels": labels, "split": split}


def test_probe_images_are_their_own_group_not_other_negatives():
    """A user's audit: adding a class that was a probe kind (fish) turned 6 fish probes into class
    images and the probe set was topped up with 6 others; `mlc inspect` said "other: added 6", read
    as six new negatives trained on, though the negatives had not changed."""
    old = [row("n1", "", "train"), row("n2", "", "test"), row("f1", "", "probe"), row("h1", "", "probe"),
           row("k1", "kite", "train")]
    new = [row("n1", "", "train"), row("n2", "", "test"), row("f1", "fish", "train"), row("h1", "", "probe"),
           row("h2", "", "probe"), row("k1", "kite", "train"), row("f2", "fish", "valid"), row("n3", "", "valid")]
    assert version_diff(old, new) == {PROBE_GROUP: {"added": 1}, "fish": {"added": 1, "relabelled": 1},
                                      "other": {"added": 1}}
    # A probe image that becomes a negative (it moved to "other") is a change of group too.
    assert version_diff([row("p", "", "probe")], [row("p", "", "train")]) == {"other": {"relabelled": 1}}
    assert version_diff(new, new) == {}
