"""The caption job translates to a Dataflow job without being submitted: `--dry_run=True
--no_auth` with a gs:// staging location runs offline (tests/netguard fails any network call),
and the job it would submit holds every step of the job and the worker container."""

from __future__ import annotations

from pathlib import Path

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import GoogleCloudOptions, WorkerOptions
from apache_beam.runners.runner import PipelineState

from captioning.api import CaptionerOptions
from captioning.archives.listing import list_shards
from captioning.archives.synthetic.writer import ArchiveConfig, write_archive
from pipelines.caption.config import CaptionConfig
from pipelines.caption.pipeline import build_pipeline
from pipelines.options import pipeline_options

pytest.importorskip(
    "apache_beam.runners.dataflow.internal.apiclient",
    reason="needs apache-beam[gcp]: pip install -e '.[gcp]' (make test installs it)",
)

# Without --staging_location, Beam asks the network where to stage.
DRY_RUN = [
    "--runner=DataflowRunner",
    "--dry_run=True",
    "--no_auth",
    "--sdk_location=container",
    "--project=imgindex-test",
    "--region=us-central1",
    "--job_name=imgindex-dry-run",
    "--temp_location=gs://imgindex-test/tmp",
    "--staging_location=gs://imgindex-test/staging",
]
IMAGE = "us-central1-docker.pkg.dev/imgindex-test/imgindex/worker:0.1.0"
GPU_WORKERS = [  # as docs/runners.md gives them
    f"--sdk_container_image={IMAGE}",
    "--experiments=use_runner_v2",
    "--machine_type=g2-standard-8",
    "--dataflow_service_options=worker_accelerator=type:nvidia-l4;count:1;install-nvidia-driver",
]
STEPS = {
    "ListShards",
    "Reshuffle",
    "ReadShards",
    "DecodeImages",
    "CaptionImages",
    "ToRows",
    "WriteCaptions",
    "MergeFailures",
    "FailureDicts",
    "WriteFailures",
}


def test_caption_job_translates_to_a_dataflow_job(tmp_path: Path) -> None:
    archive = tmp_path / "archive"
    write_archive(str(archive), ArchiveConfig(images=4, shards=2, seed=1, format="tar", workers=1))
    config = CaptionConfig(
        input=str(archive),
        out="gs://imgindex-test/out",
        model="/opt/models/captioner",  # on the workers, e.g. baked into the container
        captioner=CaptionerOptions(device="cuda"),
    )
    options = pipeline_options([*DRY_RUN, *GPU_WORKERS])
    p = beam.Pipeline(options=options)
    build_pipeline(p, config, list_shards(config.input), "run-1", "tiny", "t1", None)
    result = p.run()

    assert result.state == PipelineState.DONE
    job = result.job  # what DataflowRunner would have submitted
    assert job.proto.name == "imgindex-dry-run"
    names = {t.unique_name for t in job.proto_pipeline.components.transforms.values()}
    assert STEPS <= names, STEPS - names
    environments = job.proto_pipeline.components.environments.values()
    assert [IMAGE.encode() in e.payload for e in environments] == [True]
    cloud = options.view_as(GoogleCloudOptions)
    assert cloud.dataflow_service_options == [
        "worker_accelerator=type:nvidia-l4;count:1;install-nvidia-driver"
    ]
    assert options.view_as(WorkerOptions).machine_type == "g2-standard-8"
