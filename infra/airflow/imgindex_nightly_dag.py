"""Airflow DAG: one `imgindex update` a night, through /usr/local/bin/imgindex-nightly (the command
every scheduler in infra/ runs), with what to update taken from Airflow Variables.

Copy this file into the DAGs folder of a deployment whose workers have imgindex and the wrapper
installed (infra/README.md), and set the Variables `imgindex_input` and `imgindex_collection`
(optional: `imgindex_update_flags`, `imgindex_beam_options`).
"""

from __future__ import annotations

# timezone.utc, not datetime.UTC: Airflow workers may run a Python older than 3.11.
from datetime import datetime, timedelta, timezone

try:  # Airflow 3
    from airflow.sdk import DAG
except ImportError:  # Airflow 2
    from airflow import DAG
try:  # Airflow 3, or Airflow 2 with the standard provider
    from airflow.providers.standard.operators.bash import BashOperator
except ImportError:
    from airflow.operators.bash import BashOperator

NIGHTLY_COMMAND = "/usr/local/bin/imgindex-nightly"
RUN_TIMEOUT = timedelta(hours=6)

with DAG(
    dag_id="imgindex_nightly",
    description="Caption what changed in the archive, publish a new index version",
    schedule="0 2 * * *",  # 02:00 UTC, as the systemd timer and the Kubernetes CronJob
    start_date=datetime(2025, 1, 1, tzinfo=timezone.utc),  # noqa: UP017
    # One update at a time, and no backfill: each run catches up on everything that changed.
    catchup=False,
    max_active_runs=1,
    dagrun_timeout=RUN_TIMEOUT,
    default_args={"owner": "imgindex", "retries": 0},
    tags=["imgindex"],
) as dag:
    BashOperator(
        task_id="update",
        bash_command=NIGHTLY_COMMAND,
        # Templated: read from Airflow Variables when the task starts; a missing required
        # Variable fails the task before imgindex runs.
        env={
            "IMGINDEX_INPUT": "{{ var.value.imgindex_input }}",
            "IMGINDEX_COLLECTION": "{{ var.value.imgindex_collection }}",
            "IMGINDEX_UPDATE_FLAGS": "{{ var.value.get('imgindex_update_flags', '') }}",
            "IMGINDEX_BEAM_OPTIONS": "{{ var.value.get('imgindex_beam_options', '') }}",
        },
        append_env=True,  # keep the worker's PATH, credentials and caches
        # Exit codes 2 (user error, collection locked, shrink guard) and 3 (too many failures)
        # fail the task; no retry, the next night finishes the work.
        execution_timeout=RUN_TIMEOUT,
        # The JSON summary spans several lines (XCom would get its last one); every run's summary
        # is kept in the collection, under ROOT/runs/.
        do_xcom_push=False,
    )

# KubernetesPodOperator alternative (apache-airflow-providers-cncf-kubernetes): run the image
# from infra/Dockerfile with the ConfigMap of infra/k8s/imgindex-nightly-cronjob.yaml instead of
# the worker's own install; same command, same variables.
#
#   from kubernetes.client import models as k8s
#   from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
#
#   KubernetesPodOperator(
#       task_id="update",
#       name="imgindex-nightly",
#       image="registry.example.com/imgindex:latest",
#       cmds=[NIGHTLY_COMMAND],
#       env_from=[k8s.V1EnvFromSource(
#           config_map_ref=k8s.V1ConfigMapEnvSource(name="imgindex-nightly"))],
#       volumes=[k8s.V1Volume(name="data", persistent_volume_claim=(
#           k8s.V1PersistentVolumeClaimVolumeSource(claim_name="imgindex-data")))],
#       volume_mounts=[k8s.V1VolumeMount(name="data", mount_path="/data")],
#       execution_timeout=RUN_TIMEOUT,
#   )
