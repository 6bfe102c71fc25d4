"""infra/dvc-remote-object-store.sh: switches the default DVC remote to an object store."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DVC = str(Path(sys.executable).parent / "dvc")


def repo(tmp_path: Path) -> Path:
    (tmp_path / "infra").mkdir()
    shutil.copy2(ROOT / "infra" / "dvc-remote-object-store.sh", tmp_path / "infra")
    shutil.copytree(ROOT / ".dvc", tmp_path / ".dvc", ignore=shutil.ignore_patterns("tmp", "cache", "remote"))
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    return tmp_path


def script(project: Path, *args: str) -> subprocess.CompletedProcess:
    env_path = f"{Path(sys.executable).parent}:/usr/bin:/bin"
    return subprocess.run(
        ["bash", "infra/dvc-remote-object-store.sh", *args],
        cwd=project,
        capture_output=True,
        text=True,
        env={"PATH": env_path, "HOME": str(project)},
    )


def test_the_project_default_remote_is_local(tmp_path: Path) -> None:
    project = repo(tmp_path)
    default = subprocess.run([DVC, "remote", "default"], cwd=project, capture_output=True, text=True)
    assert default.stdout.strip() == "local"
    # relative to .dvc/: the remote lives in .dvc/remote, which git ignores
    assert "url = remote" in (project / ".dvc" / "config").read_text()
    assert "/remote" in (project / ".dvc" / ".gitignore").read_text().splitlines()


def test_object_store_becomes_the_default_with_a_local_endpoint(tmp_path: Path) -> None:
    project = repo(tmp_path)
    proc = script(project, "s3://bucket/refine", "http://127.0.0.1:9000")
    assert proc.returncode == 0, proc.stderr
    config = (project / ".dvc" / "config").read_text()
    assert "remote = objectstore" in config and "url = s3://bucket/refine" in config
    assert "endpointurl" not in config  # endpoint (and credentials) stay out of the committed file
    assert "endpointurl = http://127.0.0.1:9000" in (project / ".dvc" / "config.local").read_text()


def test_other_urls_are_refused(tmp_path: Path) -> None:
    project = repo(tmp_path)
    proc = script(project, "ftp://host/path")
    assert proc.returncode == 2 and "must start with s3://, gs:// or azure://" in proc.stderr
    assert "objectstore" not in (project / ".dvc" / "config").read_text()
