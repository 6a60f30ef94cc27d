"""The package's layout holds what docs/reference/layout.md says: imports go one way (no
cycle, counting imports inside functions and the package inits an import runs), the
generic layers hold no branch on the task, and every registry is the one helper."""

import ast
import re
from pathlib import Path

import pytest

PKG = Path(__file__).parents[1] / "coreset_curate"


def _modules() -> dict[str, Path]:
    mods = {}
    for path in sorted(PKG.rglob("*.py")):
        parts = list(path.relative_to(PKG.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods[".".join(parts)] = path
    return mods


def _imports(name: str, path: Path, mods: dict[str, Path]) -> set[str]:
    """The package modules ``name`` imports anywhere in its file, with the package inits
    each import runs (its own packages' excepted: they are running already)."""
    out = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            targets = [target] + [f"{target}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        else:
            continue
        for t in targets:
            parts = t.split(".")
            for k in range(2, len(parts) + 1):
                m = ".".join(parts[:k])
                if m in mods and m != name and not name.startswith(m + "."):
                    out.add(m)
    return out


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph``, or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(v):
        state[v] = 1
        stack.append(v)
        for w in sorted(graph.get(v, ())):
            if state.get(w) == 1:
                return stack[stack.index(w):] + [w]
            if w not in state:
                found = visit(w)
                if found:
                    return found
        state[v] = 2
        stack.pop()
        return None

    for v in sorted(graph):
        if v not in state:
            found = visit(v)
            if found:
                return found
    return None


def test_the_cycle_finder_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_imports_have_no_cycle_counting_those_inside_functions():
    mods = _modules()
    graph = {name: _imports(name, path, mods) for name, path in mods.items()}
    assert len(graph) > 50 and sum(map(len, graph.values())) > 100  # the graph was read
    assert _cycle(graph) is None


@pytest.mark.parametrize("layer", ["training", "selection", "scoring", "quant", "common",
                                   "labels", "pipeline"])
def test_generic_layers_hold_no_task_branch(layer):
    """The trainer, the selection library and the scorer ask the task of their data or
    model (``tasks``); they never name detection."""
    paths = [PKG / layer] if layer.endswith(".py") else sorted((PKG / layer).rglob("*.py"))
    assert paths
    named = [f"{p.relative_to(PKG)}:{i}" for p in paths
             for i, line in enumerate(p.read_text().splitlines(), 1)
             if re.search(r"detect", line, re.I)]
    assert named == []


def test_only_the_tasks_and_the_data_sources_name_detection():
    """Outside the tasks and the data sources nothing names detection: the CLI gets
    ``make-detection`` and ``demo --task detection`` from the task's own ``cli`` module, and
    the demo is the task's (``tasks/detection/demo.py``)."""
    named = sorted({str(p.relative_to(PKG)) for p in PKG.rglob("*.py")
                    if p.relative_to(PKG).parts[0] not in ("tasks", "data")
                    and re.search(r"detect", p.read_text(), re.I)})
    assert len(list(PKG.rglob("*.py"))) > 50 and named == []


def test_the_parser_reads_the_tasks_commands_without_torch():
    """``coreset-curate --help`` builds every command, the tasks' own among them, and
    imports neither torch nor numpy (the tasks are registered by module name)."""
    import subprocess
    import sys

    code = ("import sys\n"
            "from coreset_curate.cli.parser import build_parser\n"
            "text = build_parser().format_help()\n"
            "print('make-detection' in text, 'torch' in sys.modules, 'numpy' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["True", "False", "False"]


def test_a_third_task_adds_its_command_and_demo(tmp_path, monkeypatch, capsys):
    """A task whose ``cli`` names a module with ``add_commands`` and ``run_demo`` gets its
    command and ``demo --task NAME`` without an edit of the CLI."""
    from coreset_curate.cli import main
    from coreset_curate.tasks import TASKS, Task, get_task

    (tmp_path / "layout_test_task_cli.py").write_text(
        "DEMO_HELP = 'a test task'\nDEMO_FP_EPOCHS = 1\n"
        "def add_commands(sub, options):\n"
        "    p = sub.add_parser('layout-hello')\n"
        "    p.add_argument('--count', type=options.positive_int, required=True)\n"
        "    p.set_defaults(func=lambda args: print('hello', args.count) or 0)\n"
        "def run_demo(out, chosen, overwrite):\n"
        "    return f'demo in {out}: {chosen[\"epochs\"]} epochs'\n")
    monkeypatch.syspath_prepend(str(tmp_path))

    class Third(Task):
        name = "layout-third"
        cli = "layout_test_task_cli"

    TASKS.add("layout-third", Third())
    try:
        assert get_task("layout-third").cli == "layout_test_task_cli"
        assert main(["layout-hello", "--count", "3"]) == 0
        assert capsys.readouterr().out == "hello 3\n"
        assert main(["demo", "--task", "layout-third", "--out", "x", "--epochs", "2"]) == 0
        assert capsys.readouterr().out == "demo in x: 2 epochs\n"
        with pytest.raises(SystemExit) as err:  # the shared option's check holds
            main(["layout-hello", "--count", "0"])
        assert err.value.code == 2
    finally:
        del TASKS["layout-third"]


def test_the_built_in_tasks_load_on_first_use_and_name_their_cli():
    """A task declared as ``module:Class`` becomes its instance on first use, and the
    ``cli`` module the CLI derives from the declaration is the one the class names."""
    from coreset_curate.cli.tasks import _cli_module
    from coreset_curate.tasks import TASKS, DetectionTask, get_task

    declared = {"classification": "coreset_curate.tasks.classification.task:ClassificationTask",
                "detection": "coreset_curate.tasks.detection.task:DetectionTask"}
    for name, entry in declared.items():
        task = get_task(name)
        assert TASKS[name] is task and task.name == name
        assert _cli_module(entry) == task.cli == _cli_module(task)
    assert isinstance(get_task("detection"), DetectionTask)
    with pytest.raises(ValueError, match="unknown task 'nope'"):
        get_task("nope")


def _body_lines(node: ast.AST) -> int:
    """A function's lines after its docstring."""
    body = node.body
    first = body[1] if (len(body) > 1 and isinstance(body[0], ast.Expr)
                        and isinstance(body[0].value, ast.Constant)
                        and isinstance(body[0].value.value, str)) else body[0]
    return node.end_lineno - first.lineno + 1


def test_body_lines_count_after_the_docstring():
    tree = ast.parse('def f():\n    """doc\n    more"""\n    a = 1\n    return a\n')
    assert _body_lines(tree.body[0]) == 2


def test_no_module_over_400_lines_and_no_function_over_60():
    long_modules, long_functions = [], []
    for path in sorted(PKG.rglob("*.py")):
        text = path.read_text()
        if len(text.splitlines()) > 400:
            long_modules.append(f"{path.relative_to(PKG)}: {len(text.splitlines())}")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and \
                    _body_lines(node) > 60:
                long_functions.append(f"{path.relative_to(PKG)}:{node.name}")
    assert long_modules == [] and long_functions == []


def test_every_registry_is_the_one_helper():
    from coreset_curate.common.registry import Registry
    from coreset_curate.data.sources import SOURCES
    from coreset_curate.scoring.measures import SCORES
    from coreset_curate.selection import METHODS, SCHEDULES
    from coreset_curate.tasks import TASKS
    from coreset_curate.tasks.classification.models import MODELS
    from coreset_curate.tasks.detection.models import DETECTORS

    for reg in (SOURCES, SCORES, METHODS, SCHEDULES, TASKS, MODELS, DETECTORS):
        assert isinstance(reg, Registry) and len(reg) >= 2, reg.kind
    assert {"coco", "imagefolder", "torchvision", "digits"} <= set(SOURCES)
    assert set(TASKS) == {"classification", "detection"}
    with pytest.raises(ValueError, match="unknown model 'nope'; registered models: "):
        MODELS.lookup("nope")
    with pytest.raises(ValueError, match="method 'acs' is already registered"):
        METHODS.add("acs", lambda ctx: None)


def test_a_new_data_source_registers_itself(tmp_path):
    """A source is one decorated function; load_data then reads NAME:ARG through it."""
    from coreset_curate import load_data
    from coreset_curate.data.sources import SOURCES, register_source

    seen = {}

    @register_source("layout-test-digits")
    def _source(arg, split, options):
        seen.update(arg=arg, split=split, stream=options.stream)
        return load_data("digits", split)

    try:
        data = load_data("layout-test-digits:anything", "test")
        assert seen == {"arg": "anything", "split": "test", "stream": False}
        assert len(data) == len(load_data("digits", "test"))
        with pytest.raises(ValueError, match="small enough to load into memory"):
            load_data("layout-test-digits:x", "test", stream=True)
    finally:
        del SOURCES["layout-test-digits"]


def test_the_task_of_data_and_model():
    from coreset_curate import load_data
    from coreset_curate.tasks import table_task, task_for_model, task_of

    assert task_of(load_data("digits", "test")).name == "classification"
    assert task_for_model("small_cnn").name == "classification"
    assert task_for_model("retinanet_resnet18_fpn").name == "detection"
    assert table_task({"task": "detection"}).min_label == -1
    assert table_task({}).min_label == 0 and table_task({"task": "other"}).name == \
        "classification"
    # the audit refuses a task's tables through the task, not by naming it
    assert table_task({"task": "detection"}).audit_refusal
    assert table_task({}).audit_refusal == ""
