"""benchmarks/pack_kernel_cache.sh: the archive a device session restores keeps what a cache hit reads
(each kernel's metadata and binary, the autotuning results), leaves out Triton's intermediate text,
and restores at another path where the relocatable manager still finds every kernel."""

from __future__ import annotations

import subprocess
import tarfile
from pathlib import Path

import pytest

from refine_tasks.pipeline import kernel_cache

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "pack_kernel_cache.sh"
KERNEL_FILES = ("k.cubin", "k.json", "k.ptx", "k.ttir", "k.ttgir", "k.llir", "k.source")


def fill_cache(monkeypatch: pytest.MonkeyPatch, cache: Path) -> None:
    """One compiled kernel as Triton writes it (every level of IR and a group file), and one autotuning result."""
    triton_dir = cache / "nvidia-h200-triton3.6.0" / "triton"
    monkeypatch.setenv("TRITON_CACHE_DIR", str(triton_dir))
    manager = kernel_cache.RelocatableCacheManager("key1")
    paths = {name: manager.put(f"{name} bytes".encode(), name) for name in KERNEL_FILES}
    manager.put_group("k.json", paths)
    kernel_cache.RelocatableCacheManager("key2").put(b'{"configs_timings": []}', "k.autotune.json")


def test_the_archive_keeps_what_a_cache_hit_reads_and_restores_elsewhere(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    cache = tmp_path / "node-a" / "data" / "cache" / "kernels"
    fill_cache(monkeypatch, cache)
    archive = tmp_path / "kernels.txz"
    done = subprocess.run(["bash", str(SCRIPT), str(cache), str(archive)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "9 files of" in done.stdout  # 7 kernel files, its group file, one autotuning result
    with tarfile.open(archive) as tar:
        names = {Path(n).name for n in tar.getnames() if tar.getmember(n).isfile()}
        assert all(n.startswith("kernels/") or n == "kernels" for n in tar.getnames())
        tar.extractall(tmp_path / "node-b", filter="data")
    assert names == {"k.cubin", "k.json", "__grp__k.json", "k.autotune.json"}

    monkeypatch.setenv(
        "TRITON_CACHE_DIR", str(tmp_path / "node-b" / "kernels" / "nvidia-h200-triton3.6.0" / "triton")
    )
    group = kernel_cache.RelocatableCacheManager("key1").get_group("k.json")
    assert group is not None and set(group) == {"k.cubin", "k.json"}
    assert Path(group["k.cubin"]).read_bytes() == b"k.cubin bytes"
    assert kernel_cache.RelocatableCacheManager("key2").get_file("k.autotune.json") is not None


def test_no_folder_is_a_clear_error_and_no_archive(tmp_path: Path) -> None:
    archive = tmp_path / "kernels.txz"
    done = subprocess.run(
        ["bash", str(SCRIPT), str(tmp_path / "missing"), str(archive)], capture_output=True, text=True
    )
    assert done.returncode == 2
    assert f"{tmp_path / 'missing'} is not a folder" in done.stderr
    assert not archive.exists() and list(tmp_path.iterdir()) == []


def test_the_work_folder_beside_it_is_packed_too(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """What later processes compiled (kernels-work, see refine_tasks.pipeline.kernel_cache) joins the
    tracked folder's kernels in one archive; files both hold appear once."""
    cache = tmp_path / "kernels"
    fill_cache(monkeypatch, cache)
    work = tmp_path / "kernels-work" / "nvidia-h200-triton3.6.0" / "triton"
    kernel_cache.link_missing(cache, tmp_path / "kernels-work")
    monkeypatch.setenv("TRITON_CACHE_DIR", str(work))
    kernel_cache.RelocatableCacheManager("key3").put(b"later", "later.cubin")
    archive = tmp_path / "kernels.txz"
    done = subprocess.run(["bash", str(SCRIPT), str(cache), str(archive)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "10 files of" in done.stdout
    with tarfile.open(archive) as tar:
        files = [n for n in tar.getnames() if tar.getmember(n).isfile()]
    assert (
        len(files) == len(set(files)) == 5
        and "kernels/nvidia-h200-triton3.6.0/triton/key3/later.cubin" in files
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kernels", "kernels-work", "kernels.txz"]
