"""dvc.yaml's code deps against the imports: every module a stage runs lies under one of its deps,
so a change anywhere in that code marks the stage stale, and no new module slips past them."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = "refine_tasks"
STAGE_TABLE = "refine_tasks.pipeline.lifecycle"
FOUNDATION = ("refine_tasks/config.py", "refine_tasks/errors.py")  # the modules a dep may name

# What a stage runs besides the stage table: the modules its function in lifecycle.py imports
# (`run_stage` -> _tokenizer, _corpus, train_stage, _positions, _evaluate, _report; `stage_config`
# -> final_checkpoint for a stage that starts from or evaluates a checkpoint) and, for training,
# the module torchrun starts (`-m`) on several processes. The CLI around it only parses and prints.
CHECKPOINT = "refine_tasks.models.checkpoint"
THREADS = "refine_tasks.pipeline.cpu_threads"  # run_stage, for a stage that runs a model
TRAINING = (
    THREADS,
    "refine_tasks.pipeline.launch",
    "refine_tasks.pipeline.torchrun_main",
    "refine_tasks.train.distributed",
    CHECKPOINT,
)
EVALUATION = ("refine_tasks.evaluate.results", "refine_tasks.evaluate.runner", CHECKPOINT, THREADS)
STAGE_ENTRIES = {
    "tokenizer": ("refine_tasks.corpus", "refine_tasks.corpus.tokenizer"),
    "corpus": ("refine_tasks.corpus",),
    "kernels": (
        THREADS,
        "refine_tasks.corpus.tokenizer",
        "refine_tasks.evaluate.runner",
        "refine_tasks.train.starting_model",
        "refine_tasks.train.warmup",
    ),
    "base": (*TRAINING, "refine_tasks.train.recall_probe", "refine_tasks.train.starting_model"),
    "positions": ("refine_tasks.train.positions", CHECKPOINT, THREADS),
    "midtrain_sft": TRAINING,
    "midtrain_refine": TRAINING,
    "eval_niah": EVALUATION,
    "eval_qa": EVALUATION,
    "eval_longbench": EVALUATION,
    "qa_data": ("refine_tasks.pipeline.qa_data",),
    "posttrain": ("refine_tasks.train.posttrain", CHECKPOINT, THREADS),
    "eval_qa_post": EVALUATION,
    "eval_qa_ttt": (*EVALUATION, "refine_tasks.train.ttt"),
    "report": ("refine_tasks.evaluate.report",),
}
BOOKKEEPING = {"refine_tasks.pipeline.dvc_state"}  # run_tracked's `dvc commit` around a stage
EVAL_STAGES = {stage for stage in STAGE_ENTRIES if stage.startswith("eval_")}
MODEL_STAGES = {"kernels", "base", "positions", "midtrain_sft", "midtrain_refine", "posttrain", *EVAL_STAGES}


def module_file(name: str) -> Path | None:
    """refine_tasks.a.b -> refine_tasks/a/b.py or refine_tasks/a/b/__init__.py (None: no module)."""
    path = ROOT.joinpath(*name.split("."))
    for candidate in (path / "__init__.py", path.with_suffix(".py")):
        if candidate.is_file():
            return candidate
    return None


def import_nodes(tree: ast.Module, in_functions: bool):
    todo: list[ast.AST] = [tree]
    while todo:
        node = todo.pop()
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        if in_functions or not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            todo.extend(ast.iter_child_nodes(node))


def imported(name: str, in_functions: bool = True) -> set[str]:
    """The refine_tasks modules `name` imports, function-local imports included (unless not
    in_functions), each with its parent packages (importing a.b.c runs a/b/__init__.py)."""
    tree = ast.parse(module_file(name).read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in import_nodes(tree, in_functions):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        else:
            assert node.level == 0, f"{name}: a relative import; the project imports absolutely"
            names |= {node.module, *(f"{node.module}.{alias.name}" for alias in node.names)}
    modules = {n for n in names if n.split(".")[0] == PACKAGE and module_file(n) is not None}
    return {".".join(m.split(".")[:k]) for m in modules for k in range(2, m.count(".") + 2)}


def closure(entries: tuple[str, ...]) -> set[str]:
    """Every refine_tasks module a stage runs: the stage table (its module-level imports; its
    functions' imports are the stages' entries) and the import closure of the entries."""
    seen: set[str] = set()
    todo = [STAGE_TABLE, *entries]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        parts = name.split(".")
        todo += [".".join(parts[:k]) for k in range(2, len(parts))]
        todo += imported(name, in_functions=name != STAGE_TABLE)
    return seen


def stage_files(stage: str) -> set[str]:
    return {module_file(m).relative_to(ROOT).as_posix() for m in closure(STAGE_ENTRIES[stage])}


def code_deps() -> dict[str, list[str]]:
    """dvc.yaml's deps inside refine_tasks, by stage (a foreach stage: its template's)."""
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    return {
        name: [d for d in stage.get("do", stage)["deps"] if d.startswith(f"{PACKAGE}/")]
        for name, stage in stages.items()
    }


def covered(path: str, deps: list[str]) -> bool:
    return any(path == dep or path.startswith(f"{dep.rstrip('/')}/") for dep in deps)


def test_every_stage_has_its_entries():
    assert set(code_deps()) == set(STAGE_ENTRIES)


def test_the_stage_tables_imports_are_stage_entries():
    in_functions = imported(STAGE_TABLE) - imported(STAGE_TABLE, in_functions=False)
    entries = {m for stage in STAGE_ENTRIES.values() for m in stage}
    parents = {".".join(m.split(".")[:k]) for m in entries for k in range(2, m.count(".") + 1)}
    assert in_functions - parents - BOOKKEEPING <= entries, "lifecycle.py imports a module no stage lists"


def test_the_root_package_runs_nothing():
    # refine_tasks/__init__.py runs before every module but no dep names it: it must stay inert.
    tree = ast.parse((ROOT / PACKAGE / "__init__.py").read_text())
    assert not list(import_nodes(tree, in_functions=True))


@pytest.mark.parametrize("stage", sorted(STAGE_ENTRIES))
def test_deps_cover_every_module_the_stage_runs(stage: str):
    deps = code_deps()[stage]
    missing = sorted(f for f in stage_files(stage) if f != f"{PACKAGE}/__init__.py" and not covered(f, deps))
    assert not missing, f"dvc.yaml stage {stage!r}: add the package folders of {missing} to its deps"


@pytest.mark.parametrize("stage", sorted(STAGE_ENTRIES))
def test_deps_are_packages_the_stage_runs(stage: str):
    files = stage_files(stage)
    for dep in code_deps()[stage]:
        assert dep in FOUNDATION or (ROOT / dep / "__init__.py").is_file(), f"{stage}: {dep} is no package"
        assert dep.count("/") == 1, f"{stage}: {dep}: name the top-level package folder"
        assert any(covered(f, [dep]) for f in files), f"dvc.yaml stage {stage!r}: it runs nothing in {dep}"


@pytest.mark.parametrize("path", ["refine_tasks/models/modeling.py", "refine_tasks/kernels/norms.py"])
def test_a_change_to_the_model_marks_positions_training_and_evaluation_stale(path: str):
    assert (ROOT / path).is_file()
    stale = {stage for stage, deps in code_deps().items() if covered(path, deps)}
    assert stale == MODEL_STAGES
