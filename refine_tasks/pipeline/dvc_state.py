"""DVC bookkeeping for stages run outside `dvc repro` (by `refine run` and the Prefect flows).

After such a run, the stage's outputs are committed (`dvc commit`), so dvc.lock records the
same deps, params and outs hashes `dvc repro` would have, and `dvc status` is clean after
either way. A stage DVC already considers up to date is not run again.

Overrides (`refine run --set`, a flow's `overrides`) in such a repository are written into its
params.yaml first (`write_overrides`), as `dvc exp run -S` does: DVC then sees exactly the
parameters they change, so the stages that read them (and those downstream) run, the others stay
up to date, and dvc.lock records the values the run used.

DVC rewrites dvc.lock in place, so a commit killed midway would leave it truncated (and every
later `dvc status` failing). `DvcStages.commit` keeps the last good dvc.lock beside it
(`dvc.lock.aside-<pid>`) while DVC writes; the next DvcStages of the repository puts it back when
its writer is gone (the stage then counts as not committed and runs again).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path

from refine_tasks.config import ConfigError, PipelineConfig, load_config
from refine_tasks.store.catalog import process_alive
from refine_tasks.store.scratch import marked_pid

PARAMS_FILE = "params.yaml"
LOCK_FILE = "dvc.lock"
LOCK_ASIDE = ".aside-"  # `dvc.lock.aside-<pid>`: the last good dvc.lock while a commit rewrites it
LOCK_TMP = ".tmp-"  # `dvc.lock.tmp-<pid>`: that copy being written


def dvc_root(start: Path | None = None) -> Path | None:
    """The DVC repository containing `start` (default: the working directory), or None."""
    from dvc.exceptions import NotDvcRepoError
    from dvc.repo import Repo

    try:
        return Path(Repo.find_root(str(start or Path.cwd())))
    except NotDvcRepoError:
        return None


def tracked_params(params: str | Path | None) -> Path | None:
    """The params.yaml of the DVC repository in the working directory when `params` names it
    (None: ./params.yaml), else None (no repository, or another params file: runs are not tracked)."""
    root = dvc_root()
    if root is None or root.resolve() != Path.cwd().resolve() or not (root / "dvc.yaml").is_file():
        return None
    declared = (root / PARAMS_FILE).resolve()
    given = Path(params if params is not None else PARAMS_FILE).resolve()
    return declared if given == declared and declared.is_file() else None


def write_overrides(params: str | Path | None, overrides: Sequence[str]) -> list[str]:
    """`dvc exp run -S` for runs outside `dvc repro`: when `params` is the DVC repository's
    params.yaml, validate `overrides` and write their values into it (comments and order kept),
    so the run reads them from the file DVC tracks. Returns the overrides left to apply at load
    time: [] once written, all of them when the run is not tracked. A bad override is a
    ConfigError and leaves the file as it was."""
    from ruamel.yaml import YAML

    path = tracked_params(params)
    if path is None or not overrides:
        return list(overrides)
    wanted = load_config(path, list(overrides))
    if wanted == load_config(path):  # already there (a flow's later stages): the file stays untouched
        return []
    values = wanted.model_dump(mode="json")
    yaml = YAML()  # round trip: the file's comments, order and quoting stay
    yaml.width = 4096
    yaml.representer.add_representer(
        type(None), lambda dumper, _: dumper.represent_scalar("tag:yaml.org,2002:null", "null")
    )
    data = yaml.load(path)
    for item in overrides:
        keys = item.split("=", 1)[0].strip().split(".")
        node, value = data, values
        for key in keys[:-1]:
            node, value = node.setdefault(key, {}), value[key]
        node[keys[-1]] = value[keys[-1]]
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    with tmp.open("w", encoding="utf-8") as f:
        yaml.dump(data, f)
    os.replace(tmp, path)
    return []


class DvcStages:
    """The stages of the DVC repository at `root` (whose dvc.yaml names the lifecycle stages)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.recover_lock()

    def recover_lock(self) -> None:
        """Put back the dvc.lock that a killed commit was rewriting (its copy aside is the last good
        one; empty: there was none) and drop dead writers' partial copies. Live writers' are theirs."""
        for path in sorted(self.root.glob(f"{LOCK_FILE}.*")):
            for mark in (LOCK_ASIDE, LOCK_TMP):
                pid = marked_pid(path, mark)
                if pid is None or process_alive(pid):
                    continue
                if mark == LOCK_ASIDE:
                    self._put_back(path)
                else:
                    path.unlink()

    def _put_back(self, aside: Path) -> None:
        """The copy aside becomes dvc.lock again (an empty copy: there was no dvc.lock)."""
        lock = self.root / LOCK_FILE
        if aside.stat().st_size > 0:
            os.replace(aside, lock)
        else:
            lock.unlink(missing_ok=True)
            aside.unlink()

    def _keep_lock(self) -> Path:
        """A copy of dvc.lock (empty when there is none) at `dvc.lock.aside-<pid>`, written whole first."""
        lock = self.root / LOCK_FILE
        tmp = lock.with_name(f"{LOCK_FILE}{LOCK_TMP}{os.getpid()}")
        tmp.write_bytes(lock.read_bytes() if lock.is_file() else b"")
        aside = lock.with_name(f"{LOCK_FILE}{LOCK_ASIDE}{os.getpid()}")
        os.replace(tmp, aside)
        return aside

    @classmethod
    def for_config(cls, cfg: PipelineConfig) -> DvcStages | None:
        """The working directory's DVC repository when `cfg` is exactly what its dvc.yaml runs
        with (its params.yaml, no overrides), so committing a stage run with `cfg` tells the truth."""
        root = dvc_root()
        if root is None or root.resolve() != Path.cwd().resolve() or not (root / "dvc.yaml").is_file():
            return None
        try:
            declared = load_config(root / PARAMS_FILE)
        except ConfigError:
            return None
        return cls(root) if declared == cfg else None

    def _repo(self):
        from dvc.repo import Repo

        return Repo(str(self.root))

    def status(self, name: str) -> dict:
        """DVC's status of stage `name` ({} when up to date)."""
        with self._repo() as repo:
            return repo.status(targets=[name])

    def up_to_date(self, name: str) -> bool:
        return not self.status(name)

    def commit(self, name: str) -> None:
        """Record the stage's current deps, params and outs in dvc.lock and the DVC cache. dvc.lock
        belongs in git (it is what `dvc status` and `dvc pull` elsewhere read): with the repository's
        core.autostage, which .dvc/config sets, it is staged (`git add`) as `dvc repro` stages it."""
        aside = self._keep_lock()
        try:
            with self._repo() as repo, repo.scm_context(quiet=True):
                repo.commit(name, force=True)
        except BaseException:  # an error or Ctrl-C while DVC wrote: the last good dvc.lock again
            self._put_back(aside)
            raise
        aside.unlink()

    def restore(self, name: str) -> bool:
        """Put back the stage's last committed outputs (after a failed run); False if none."""
        if name not in self.locked():
            return False
        with self._repo() as repo:
            repo.checkout(targets=[name], force=True)
        return True

    def locked(self) -> dict:
        """The stages section of dvc.lock ({} before any commit)."""
        import yaml

        lock = self.root / "dvc.lock"
        return (yaml.safe_load(lock.read_text()) or {}).get("stages", {}) if lock.is_file() else {}

    def fingerprint(self, name: str) -> str | None:
        """A hash of the stage's recorded deps, params and outs when the stage is up to date (the
        key under which its result may be reused), else None."""
        if not self.up_to_date(name):
            return None
        entry = json.dumps(self.locked().get(name, {}), sort_keys=True, default=str)
        return hashlib.sha256(f"{os.fspath(self.root)}|{name}|{entry}".encode()).hexdigest()
