"""The package's stages: each module imports only from its own stage or earlier ones (imports inside functions
included), so that data -> training -> checkpoint -> evaluation -> results.json -> reporting reads one way."""

import ast
from pathlib import Path

from conftest import REPO

# leaves (modules directly in lic_kd/) < frugal < models < training < evaluation < teachers < reporting < entry points
STAGES = ["frugal", "models", "training", "evaluation", "teachers", "reporting"]
ENTRY_POINTS = {"train", "evaluate", "report", "sweep"}  # sweep: around the jobs of `train -m`


def stage(module: str) -> int:
    parts = module.split(".")
    if len(parts) > 1 and parts[1] in STAGES:
        return 1 + STAGES.index(parts[1])
    return len(STAGES) + 1 if len(parts) > 1 and parts[1] in ENTRY_POINTS else 0


def imports() -> dict[str, set[str]]:
    """Every lic_kd module and the lic_kd modules it imports, wherever the import statement is."""
    graph = {}
    for path in sorted((REPO / "lic_kd").rglob("*.py")):
        module = ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("lic_kd"):
                targets.add(node.module)
                for alias in node.names:  # `from lic_kd.reporting import figures` imports a module
                    if (REPO / Path(*node.module.split("."), f"{alias.name}.py")).is_file():
                        targets.add(f"{node.module}.{alias.name}")
            elif isinstance(node, ast.Import):
                targets |= {a.name for a in node.names if a.name.startswith("lic_kd")}
        graph[module] = targets - {module}
    return graph


def test_no_module_imports_from_a_later_stage():
    upward = [f"{m} -> {t}" for m, ts in imports().items() for t in ts if stage(t) > stage(m)]
    assert upward == []


def test_there_is_no_import_cycle():
    graph = imports()
    cycles = []

    def visit(module: str, path: list[str]) -> None:
        for target in graph.get(module, ()):
            if target in path:
                cycles.append(" -> ".join(path[path.index(target) :] + [target]))
            elif target not in seen:
                seen.add(target)
                visit(target, path + [target])

    for module in graph:
        seen = {module}
        visit(module, [module])
    assert cycles == []


def test_every_stage_is_a_package_and_the_checker_sees_it():
    graph = imports()
    assert {m.split(".")[1] for m in graph if m.count(".") >= 2} == set(STAGES)
    # the checker would catch the kind of import the stages forbid
    assert stage("lic_kd.reporting.figures") > stage("lic_kd.evaluation.coding") > stage("lic_kd.models.checkpoints")
    assert stage("lic_kd.train") > stage("lic_kd.reporting.writer") and stage("lic_kd.errors") == 0
