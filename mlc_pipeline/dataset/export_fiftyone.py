"""The FiftyOne export: a FiftyOneImageClassificationDataset plus every sample's split and attribution.

  data/<key>.jpg     the images (the key is the file stem FiftyOne matches labels by)
  labels.json        {"classes": [...], "labels": {key: [label, ...]}}: FiftyOne's documented
                     image-classification format; a list is read as fo.Classifications (multi-label),
                     an empty list is an image of none of the classes
  samples.json       {key: {"split": ..., "license": ..., "owner": ..., "url": ..., ...}}: what that
                     format has no place for; `load_into_fiftyone` puts it on the samples (the split
                     as a tag, the rest as fields)

FiftyOne itself is optional (it needs a MongoDB it downloads on first use): only
`load_into_fiftyone` imports it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

LABEL_FIELD = "ground_truth"


def write_fiftyone_layout(version_dir: Path, rows_by_key: dict[str, dict], out: Path, meta: dict) -> int:
    (out / "data").mkdir()
    labels, samples, classes = {}, {}, set()
    for key, r in rows_by_key.items():
        shutil.copyfile(version_dir / r["path"], out / "data" / f"{key}.jpg")
        labels[key] = r["labels"].split()
        classes.update(labels[key])
        samples[key] = {k: v for k, v in r.items() if k not in ("path", "labels")}
    (out / "labels.json").write_text(json.dumps({"classes": sorted(classes), "labels": labels}, indent=1))
    (out / "samples.json").write_text(json.dumps(samples, indent=1, ensure_ascii=False))
    return len(rows_by_key)


def load_into_fiftyone(export_dir: str | Path, name: str | None = None):
    """A fiftyone.Dataset of an export: labels in `ground_truth`, the split as a tag, the manifest's
    other columns (source, licence, owner, url...) as string fields."""
    import fiftyone as fo

    export_dir = Path(export_dir)
    dataset = fo.Dataset.from_dir(dataset_dir=str(export_dir), dataset_type=fo.types.FiftyOneImageClassificationDataset,
                                  label_field=LABEL_FIELD, name=name)
    samples = json.loads((export_dir / "samples.json").read_text())
    for sample in dataset.iter_samples(autosave=True):
        info = samples[Path(sample.filepath).stem]
        sample.tags.append(info["split"])
        for k, v in info.items():
            if k != "split":
                sample[k] = str(v)
    return dataset
