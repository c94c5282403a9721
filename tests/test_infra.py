"""infra/: the systemd units, the Kubernetes manifest and the Airflow DAG parse, and all three run
the same nightly command, which runs `imgindex update INPUT --collection ROOT`."""

from __future__ import annotations

import ast
import configparser
import os
import runpy
import shutil
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import pytest
import yaml

INFRA = Path(__file__).parents[1] / "infra"
WRAPPER = INFRA / "imgindex-nightly.sh"
SERVICE = INFRA / "imgindex-nightly.service"
TIMER = INFRA / "imgindex-nightly.timer"
ENV_FILE = INFRA / "imgindex-nightly.env"
CRONJOB = INFRA / "k8s" / "imgindex-nightly-cronjob.yaml"
DAG_FILE = INFRA / "airflow" / "imgindex_nightly_dag.py"
# Where the Dockerfile and the install steps put the wrapper; every scheduler runs this.
NIGHTLY = "/usr/local/bin/imgindex-nightly"
REQUIRED = {"IMGINDEX_INPUT", "IMGINDEX_COLLECTION"}
VARIABLES = REQUIRED | {"IMGINDEX_UPDATE_FLAGS", "IMGINDEX_BEAM_OPTIONS"}

needs_bash = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")


# -- the wrapper -------------------------------------------------------------------------------
@pytest.fixture
def fake_imgindex(tmp_path: Path) -> Path:
    """A directory whose `imgindex` writes its arguments, one a line, to $ARGV_FILE and exits
    with $FAKE_RC."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "imgindex"
    fake.write_text('#!/usr/bin/env bash\nprintf "%s\\n" "$@" >"$ARGV_FILE"\nexit "$FAKE_RC"\n')
    fake.chmod(0o755)
    return bin_dir


def _run_wrapper(
    bin_dir: Path, env: dict[str, str], *args: str, rc: int = 0
) -> tuple[subprocess.CompletedProcess[str], list[str] | None]:
    argv_file = bin_dir.parent / "argv"
    argv_file.unlink(missing_ok=True)
    (bin_dir.parent / "night-1.tar").touch()  # a glob in the input must reach imgindex as is
    full_env = {
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "ARGV_FILE": str(argv_file),
        "FAKE_RC": str(rc),
        **env,
    }
    proc = subprocess.run(
        [str(WRAPPER), *args],
        env=full_env,
        cwd=bin_dir.parent,
        capture_output=True,
        text=True,
        timeout=60,
    )
    argv = argv_file.read_text().splitlines() if argv_file.exists() else None
    return proc, argv


@needs_bash
def test_wrapper_is_valid_bash() -> None:
    proc = subprocess.run(["bash", "-n", str(WRAPPER)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert os.access(WRAPPER, os.X_OK), "chmod +x infra/imgindex-nightly.sh"
    assert "set -euo pipefail" in WRAPPER.read_text()


@needs_bash
def test_wrapper_runs_imgindex_update_with_the_collection(fake_imgindex: Path) -> None:
    env = {
        "IMGINDEX_INPUT": "s3://bucket/archive/*.tar",
        "IMGINDEX_COLLECTION": "/srv/collection",
        "IMGINDEX_UPDATE_FLAGS": "--keep 3  --max-images 10",
        "IMGINDEX_BEAM_OPTIONS": "--direct_num_workers=2 --direct_running_mode=multi_processing",
    }
    proc, argv = _run_wrapper(fake_imgindex, env, "--device", "cpu")
    assert proc.returncode == 0, proc.stderr
    assert argv == [
        "update", "s3://bucket/archive/*.tar", "--collection", "/srv/collection", "--json",
        "--keep", "3", "--max-images", "10", "--device", "cpu",
        "--", "--direct_num_workers=2", "--direct_running_mode=multi_processing",
    ]  # fmt: skip


@needs_bash
def test_wrapper_without_optional_variables(fake_imgindex: Path) -> None:
    env = {"IMGINDEX_INPUT": "*.tar", "IMGINDEX_COLLECTION": "/srv/collection"}
    proc, argv = _run_wrapper(fake_imgindex, env)
    assert proc.returncode == 0, proc.stderr
    assert argv == ["update", "*.tar", "--collection", "/srv/collection", "--json", "--"]


@needs_bash
@pytest.mark.parametrize("rc", [0, 2, 3, 70])
def test_wrapper_passes_the_exit_code_through(fake_imgindex: Path, rc: int) -> None:
    env = {"IMGINDEX_INPUT": "in", "IMGINDEX_COLLECTION": "root"}
    proc, _ = _run_wrapper(fake_imgindex, env, rc=rc)
    assert proc.returncode == rc


@needs_bash
@pytest.mark.parametrize("missing", sorted(REQUIRED))
def test_wrapper_missing_variable_is_a_user_error(fake_imgindex: Path, missing: str) -> None:
    env = {"IMGINDEX_INPUT": "in", "IMGINDEX_COLLECTION": "root"}
    del env[missing]
    proc, argv = _run_wrapper(fake_imgindex, env)
    assert proc.returncode == 2
    assert missing in proc.stderr
    assert argv is None  # imgindex never ran


def test_dockerfile_installs_the_wrapper() -> None:
    lines = (INFRA / "Dockerfile").read_text().splitlines()
    copies = [line.split() for line in lines if line.startswith("COPY")]
    assert any(c[-2:] == ["infra/imgindex-nightly.sh", NIGHTLY] for c in copies), copies


# -- systemd -----------------------------------------------------------------------------------
def _unit(path: Path) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None, delimiters=("=",))
    # systemd's keys are case-sensitive; configparser lower-cases them by default.
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(path.read_text(), source=str(path))
    return parser


def test_systemd_service_runs_the_nightly_command_once() -> None:
    service = _unit(SERVICE)["Service"]
    assert service["Type"] == "oneshot"
    assert service["ExecStart"] == NIGHTLY
    assert service["EnvironmentFile"] == "/etc/imgindex/nightly.env"
    assert service.get("User") and service.get("NoNewPrivileges") == "yes"


def test_systemd_timer_runs_daily_and_catches_up() -> None:
    unit = _unit(TIMER)
    timer = unit["Timer"]
    assert timer["OnCalendar"] == "*-*-* 02:00:00 UTC"
    assert timer["Persistent"] == "true"
    assert timer.get("RandomizedDelaySec")
    assert timer.get("Unit", SERVICE.name) == SERVICE.name
    assert unit["Install"]["WantedBy"] == "timers.target"


def test_systemd_environment_file_sets_the_wrapper_variables() -> None:
    pairs = [
        line.split("=", 1)
        for line in ENV_FILE.read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    assert {key for key, _ in pairs} == VARIABLES
    assert all(value for key, value in pairs if key in REQUIRED)


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze")
def test_systemd_units_verify(tmp_path: Path) -> None:
    # verify wants ExecStart to exist: point it at the wrapper in this checkout.
    service = SERVICE.read_text().replace(f"ExecStart={NIGHTLY}", f"ExecStart={WRAPPER}")
    (tmp_path / SERVICE.name).write_text(service)
    shutil.copy(TIMER, tmp_path / TIMER.name)
    proc = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", SERVICE.name, TIMER.name],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    ours = [line for line in proc.stderr.splitlines() if str(tmp_path) in line]
    assert proc.returncode == 0 and not ours, proc.stderr


# -- Kubernetes --------------------------------------------------------------------------------
def _manifests() -> dict[str, dict[str, Any]]:
    docs = [d for d in yaml.safe_load_all(CRONJOB.read_text()) if d]
    kinds = [d["kind"] for d in docs]
    assert len(set(kinds)) == len(kinds), kinds
    return {d["kind"]: d for d in docs}


def test_cronjob_forbids_overlap_and_never_restarts() -> None:
    cron = _manifests()["CronJob"]
    assert cron["apiVersion"] == "batch/v1"
    spec = cron["spec"]
    assert spec["concurrencyPolicy"] == "Forbid"
    assert isinstance(spec["startingDeadlineSeconds"], int)
    assert spec["successfulJobsHistoryLimit"] >= 1 and spec["failedJobsHistoryLimit"] >= 1
    job = spec["jobTemplate"]["spec"]
    assert isinstance(job["backoffLimit"], int)
    pod = job["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    (container,) = pod["containers"]
    assert container["command"] == [NIGHTLY] and not container.get("args")
    assert container["resources"]["limits"]


def test_cronjob_reads_its_configmap_and_mounts_the_collection() -> None:
    found = _manifests()
    config, claim, cron = found["ConfigMap"], found["PersistentVolumeClaim"], found["CronJob"]
    data = config["data"]
    assert set(data) == VARIABLES
    assert all(isinstance(v, str) for v in data.values()), "ConfigMap values must be strings"
    pod = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    refs = [e["configMapRef"]["name"] for e in container["envFrom"] if "configMapRef" in e]
    assert refs == [config["metadata"]["name"]]
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    (mount,) = [p for p in mounts if data["IMGINDEX_COLLECTION"].startswith(p + "/")]
    claim_name = volumes[mounts[mount]]["persistentVolumeClaim"]["claimName"]
    assert claim_name == claim["metadata"]["name"]


# -- Airflow -----------------------------------------------------------------------------------
def test_dag_file_compiles_and_imports_only_airflow() -> None:
    source = DAG_FILE.read_text()
    tree = ast.parse(source, filename=str(DAG_FILE))
    compile(tree, str(DAG_FILE), "exec")
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add((node.module or "").split(".")[0])
    assert imported <= {"__future__", "datetime", "airflow"}, imported


def _stub_airflow(monkeypatch: pytest.MonkeyPatch, version: int) -> dict[str, list[dict]]:
    """Stand-ins for the Airflow names the DAG file imports (Airflow 2 or 3 layout) that record
    their keyword arguments."""
    calls: dict[str, list[dict]] = {"DAG": [], "BashOperator": []}

    class DAG:
        def __init__(self, **kwargs: Any) -> None:
            calls["DAG"].append(kwargs)

        def __enter__(self) -> DAG:
            return self

        def __exit__(self, *exc: object) -> None:
            return None

    class BashOperator:
        def __init__(self, **kwargs: Any) -> None:
            calls["BashOperator"].append(kwargs)

    layout = (
        {"airflow.sdk": DAG, "airflow.providers.standard.operators.bash": BashOperator}
        if version == 3
        else {"airflow": DAG, "airflow.operators.bash": BashOperator}
    )
    made: dict[str, types.ModuleType] = {}
    for name in layout:
        parts = name.split(".")
        for prefix in (".".join(parts[:i]) for i in range(1, len(parts) + 1)):
            if prefix not in made:
                made[prefix] = types.ModuleType(prefix)
                monkeypatch.setitem(sys.modules, prefix, made[prefix])
    for name, obj in layout.items():
        setattr(made[name], obj.__name__, obj)
    return calls


@pytest.mark.parametrize("version", [2, 3])
def test_dag_runs_the_nightly_command_one_run_at_a_time(
    monkeypatch: pytest.MonkeyPatch, version: int
) -> None:
    calls = _stub_airflow(monkeypatch, version)
    runpy.run_path(str(DAG_FILE))
    (dag,) = calls["DAG"]
    assert dag["max_active_runs"] == 1
    assert dag["catchup"] is False
    assert dag["schedule"] == _manifests()["CronJob"]["spec"]["schedule"]
    (task,) = calls["BashOperator"]
    assert task["bash_command"] == NIGHTLY
    assert set(task["env"]) == VARIABLES
    assert task["append_env"] is True


# -- all schedulers ----------------------------------------------------------------------------
def test_every_scheduler_runs_the_same_command(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _stub_airflow(monkeypatch, 3)
    runpy.run_path(str(DAG_FILE))
    pod = _manifests()["CronJob"]["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    commands = {
        "systemd": _unit(SERVICE)["Service"]["ExecStart"],
        "kubernetes": " ".join(
            pod["containers"][0]["command"] + pod["containers"][0].get("args", [])
        ),
        "airflow": calls["BashOperator"][0]["bash_command"],
    }
    assert set(commands.values()) == {NIGHTLY}, commands
