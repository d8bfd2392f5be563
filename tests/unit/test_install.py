"""Installs are reproducible: the test command and the image install against constraints.txt,
which pins every package the venv holds, the AWS ones at the versions aiobotocore accepts."""

from __future__ import annotations

import re
from importlib.metadata import version
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def pins() -> dict[str, str]:
    out = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, pinned = line.partition("==")
            out[re.sub(r"[-_.]+", "-", name.lower())] = pinned
    return out


def test_constraints_pin_what_is_installed_and_what_aiobotocore_needs() -> None:
    pinned = pins()
    assert pinned["aiobotocore"] == "3.10.0"
    assert pinned["botocore"] == pinned["boto3"] == "1.43.117"
    for name in ("pyarrow", "psycopg", "moto", "aiohttp", "prometheus-client", "pydantic"):
        assert pinned[name] == version(name), name


def test_the_test_command_and_the_image_use_the_constraints() -> None:
    assert "-c constraints.txt" in (ROOT / "scripts" / "bootstrap.sh").read_text()
    assert "-c /src/constraints.txt" in (ROOT / "Dockerfile").read_text()


def test_the_service_installs_without_the_demo_stack() -> None:
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    runtime = " ".join(project["dependencies"])
    assert "moto" not in runtime
    assert "boto3" not in runtime
    assert any(d.startswith("moto") for d in project["optional-dependencies"]["demo"])
    assert "vpcflow-streamer[demo,docs]" in project["optional-dependencies"]["test"]
    assert "--demo" in (ROOT / "scripts" / "run.sh").read_text()


def test_demo_without_its_extra_says_what_to_install(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    blocked = tmp_path / "moto"
    blocked.mkdir()
    (blocked / "__init__.py").write_text("raise ImportError('not installed')\n")  # as if the extra were missing
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    argv = [sys.executable, "-m", "streamer", "demo"]
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=60, check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "streamer: error: demo needs the demo extra: pip install 'vpcflow-streamer[demo]' (scripts/run.sh installs it)"
    ]


def test_the_demo_image_is_the_runtime_image_plus_the_demo_extra() -> None:
    import yaml

    dockerfile = (ROOT / "Dockerfile").read_text()
    assert 'ARG EXTRAS=""' in dockerfile
    assert '"/src${EXTRAS:+[$EXTRAS]}"' in dockerfile
    compose = yaml.safe_load((ROOT / "deploy" / "docker-compose.yml").read_text())
    assert compose["services"]["streamer"]["build"]["args"] == {"EXTRAS": "demo"}
    assert "demo" in compose["services"]["streamer"]["command"]
    assert "args" not in str(compose["services"]["streamer-1"]["build"])  # fleet replicas: the runtime image


def test_mypy_checks_aws_calls_against_their_stubs() -> None:
    """AWS clients are typed (types-aiobotocore), not ignored: a wrong parameter name fails mypy."""
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    ignored = [m for o in project["tool"]["mypy"]["overrides"] for m in o["module"] if o.get("ignore_missing_imports")]
    assert not any(m.startswith(("aiobotocore", "botocore")) for m in ignored)
    test_extra = " ".join(project["project"]["optional-dependencies"]["test"])
    for service in ("s3", "sqs", "logs", "kinesis", "ec2"):
        assert service in test_extra.split("types-aiobotocore[")[1].split("]")[0]
    aws = (ROOT / "streamer" / "aws.py").read_text()
    assert "-> S3Client:" in aws
    assert "-> SQSClient:" in aws


def test_the_native_tokenizer_is_built_where_streamer_is_installed() -> None:
    """The optional C extension is declared, the set-up script and the image's build stage have a compiler."""
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    (ext,) = project["tool"]["setuptools"]["ext-modules"]
    assert ext["name"] == "streamer.decode._scan"
    assert ext["sources"] == ["streamer/decode/_scan.c"]
    assert "gcc" in (ROOT / "scripts" / "bootstrap.sh").read_text()
    build_stage = (ROOT / "Dockerfile").read_text().split("\nFROM ")[1]
    assert "gcc" in build_stage


def test_the_bench_extra_brings_the_peers_bench_measures() -> None:
    import tomllib

    bench = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["bench"]
    assert {d.split(">")[0].split("=")[0] for d in bench} == {"polars", "duckdb"}
    runner = (ROOT / "bench" / "run.py").read_text()
    assert '"polars": child_polars' in runner
    assert '"duckdb": child_duckdb' in runner


def test_the_aiohttp_floor_admits_no_release_that_holds_a_silent_connection_for_ever() -> None:
    """aiohttp before 3.14.4 armed no timer until a connection's first request (issue 29.5); the behaviour itself:
    tests/integration/test_firehose_connections.py::test_a_connection_that_never_sends_a_request_is_closed_after_..."""
    import tomllib

    from packaging.requirements import Requirement

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    (aiohttp,) = [Requirement(d) for d in project["dependencies"] if Requirement(d).name == "aiohttp"]
    assert "3.14.3" not in aiohttp.specifier
    assert pins()["aiohttp"] in aiohttp.specifier


def test_the_wheel_is_named_vpcflow_streamer_and_keeps_the_streamer_command(tmp_path: Path) -> None:
    """`streamer` on the public index is another project: the wheel carries our distribution name, the version
    pyproject.toml says, the `streamer` command and import package, and extras that name it."""
    import email
    import shutil
    import subprocess
    import sys
    import tomllib
    import zipfile

    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "streamer", src / "streamer", ignore=shutil.ignore_patterns("__pycache__", "*.so"))
    argv = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(tmp_path), str(src)]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=240, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (wheel,) = tmp_path.glob("*.whl")
    assert wheel.name.startswith("vpcflow_streamer-")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        (meta_path,) = [n for n in names if n.endswith(".dist-info/METADATA")]
        meta = email.message_from_bytes(archive.read(meta_path))
        (entry_path,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
        entry_points = archive.read(entry_path).decode()
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert meta["Name"] == "vpcflow-streamer"
    assert meta["Version"] == version
    assert "streamer = streamer.cli:main" in entry_points
    assert "streamer/cli.py" in names
    assert {"demo", "bench", "docs", "test"} <= set(meta.get_all("Provides-Extra"))
    requires = meta.get_all("Requires-Dist")
    assert any(r.startswith("vpcflow-streamer[") and 'extra == "test"' in r for r in requires)
    assert not any(r.startswith("streamer") for r in requires)  # never the other project
