"""The layout shows the architecture: imports run one way, and no module outgrows a reader.

The import graph is read from the source with `ast` alone (nothing is imported). Every import counts, the lazy
ones inside functions too: a function-level import defers a circle to call time but does not remove it (the two
modules still need each other, and the circle this test was written for closed through one, in
lavie_model/pipelines/common.py). Importing `a.b.c` also runs the `__init__` of the packages `a` and `a.b`, so
those count too, except the importer's own packages, which Python has initialised before the importer runs.
Imports by name at run time (importlib) are not seen; lavie_model and pipelines have none.
"""

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("lavie_model", "pipelines")  # the two packages whose import graph must have no circle
SOURCES = ("lavie_model", "pipelines", "benchmarks")  # every module here, and at the top, stays under MAX_LINES
MAX_LINES = 600


def imported_modules(path: Path, package: str) -> set[str]:
    """Every module a file imports, anywhere in it (inside functions too), relative imports resolved against its
    package; `from a import b` counts as both a and a.b (b may be a module)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level else ""
            module = ".".join(part for part in (base, node.module) if part)
            names |= {module} | {f"{module}.{alias.name}" for alias in node.names}
    return names


def module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(root: Path, packages=PACKAGES) -> dict[str, set[str]]:
    """Module -> the modules of `packages` it imports (package `__init__`s included, as Python runs them)."""
    files = {module_name(path, root): path for package in packages for path in sorted((root / package).rglob("*.py"))}
    graph = {}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges = set()
        for imported in imported_modules(path, package):
            parts = imported.split(".")
            edges |= {".".join(parts[:i]) for i in range(1, len(parts) + 1)}  # a.b.c runs a and a.b first
        own_packages = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 2)}
        graph[name] = {edge for edge in edges if edge in files and edge not in own_packages}
    return graph


def find_circle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle as [a, b, ..., a], or None (a depth-first search; the path on the stack is the circle)."""
    state = {}  # module -> "open" while on the stack, "done" after
    stack = []

    def visit(module):
        state[module] = "open"
        stack.append(module)
        for target in sorted(graph[module]):
            if state.get(target) == "open":
                return stack[stack.index(target):] + [target]
            if target not in state and (circle := visit(target)):
                return circle
        stack.pop()
        state[module] = "done"
        return None

    for module in sorted(graph):
        if module not in state and (circle := visit(module)):
            return circle
    return None


def write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def test_the_check_finds_a_circle_through_a_lazy_import(tmp_path):
    root = write(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/a.py": "from .sub.b import f\n",
        "pkg/sub/__init__.py": "",
        "pkg/sub/b.py": "def f():\n    from ..c import g\n",
        "pkg/c.py": "import pkg.a\n",
    })
    assert find_circle(import_graph(root, ["pkg"])) == ["pkg.a", "pkg.sub.b", "pkg.c", "pkg.a"]


def test_the_check_follows_package_inits_but_not_the_importers_own(tmp_path):
    root = write(tmp_path, {
        "pkg/__init__.py": "from . import a\n",  # a package importing its own modules is no circle
        "pkg/a.py": "from pkg import b\nfrom .models.unet import UNet\n",
        "pkg/b.py": "",
        "pkg/models/__init__.py": "from .unet import UNet\n",
        "pkg/models/unet.py": "class UNet:\n    pass\n",
    })
    graph = import_graph(root, ["pkg"])
    assert graph["pkg.a"] == {"pkg.b", "pkg.models", "pkg.models.unet"}
    assert find_circle(graph) is None
    (root / "pkg/models/__init__.py").write_text("from .unet import UNet\nfrom ..a import f\n")
    assert find_circle(import_graph(root, ["pkg"])) == ["pkg.a", "pkg.models", "pkg.a"]


def test_no_import_circle():
    circle = find_circle(import_graph(ROOT))
    assert circle is None, "import circle: " + " -> ".join(circle)


def test_training_code_never_imports_evaluation_code(tmp_path):
    """Evaluation scores what training makes and reads its data, so the dependency runs one way: no module under
    lavie_model/training imports lavie_model.evaluation, not even inside a function (the trainer gets its probe,
    train_vae its fidelity scorer, from the caller)."""
    sample = tmp_path / "sample.py"
    sample.write_text("def f():\n    from ..evaluation.metrics import psnr\n    from .. import evaluation\n")
    seen = imported_modules(sample, "lavie_model.training")
    assert {"lavie_model.evaluation.metrics", "lavie_model.evaluation"} <= seen  # the check sees what it must

    found = {}
    for path in sorted((ROOT / "lavie_model" / "training").rglob("*.py")):
        package = ".".join(path.relative_to(ROOT).parent.parts)
        names = sorted(name for name in imported_modules(path, package)
                       if name == "lavie_model.evaluation" or name.startswith("lavie_model.evaluation."))
        if names:
            found[str(path.relative_to(ROOT))] = names
    assert found == {}


def test_no_module_is_over_600_lines():
    paths = sorted(ROOT.glob("*.py")) + [path for folder in SOURCES for path in sorted((ROOT / folder).rglob("*.py"))]
    long = {str(path.relative_to(ROOT)): n for path in paths if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert long == {}, f"modules over {MAX_LINES} lines: {long}"


def test_the_package_docstring_maps_every_folder_and_module_of_lavie_model():
    """lavie_model/__init__.py's docstring is the package's map: one indented line for each folder and each module
    at the top of lavie_model/, and none for what is not there."""
    package = ROOT / "lavie_model"
    doc = ast.get_docstring(ast.parse((package / "__init__.py").read_text()))
    mapped = [line.split()[0] for line in doc.splitlines() if line.startswith("    ") and line.strip()]
    present = {f"{path.name}/" for path in package.iterdir() if path.is_dir() and not path.name.startswith(("_", "."))}
    present |= {path.name for path in package.glob("*.py") if path.name != "__init__.py"}
    assert sorted(mapped) == sorted(present)


# What the Dagster code location must not load at import time: every process of a deployment imports it (the code
# server on each reload, each run worker, each step of the multiprocess executor, `dg check defs`), and these cost
# seconds and most of a gigabyte each. The assets import them in their bodies, where the work needs them.
ML_STACK = ("torch", "diffusers", "transformers", "open_clip", "deepspeed", "accelerate", "webdataset", "ray")


def test_the_code_location_loads_without_the_ml_stack():
    code = ("import sys, pipelines.definitions as d; d.defs.resolve_asset_graph(); "
            f"print(' '.join(m for m in {ML_STACK!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [], f"importing pipelines.definitions loaded {out.stdout.strip()}"
