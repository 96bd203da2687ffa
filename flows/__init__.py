"""Prefect 3 orchestration of mlc-pipeline (see docs/orchestration.md).

The flows only wire the library's stage loop (`mlc_pipeline.pipeline`: `mlc_pipeline.collect`,
`.curate`, `.dataset`, `.model`, `.report`); all the logic lives there. Deployments are declared in prefect.yaml:

- `collect-and-train/nightly`      flows/collect_and_train.py:collect_and_train
- `rebuild-report/rebuild-report`  flows/collect_and_train.py:rebuild_report

Import the flows from their module (`from flows.collect_and_train import collect_and_train`). This
file imports nothing, so Prefect loading the entrypoint script does not define the flows twice.
"""
