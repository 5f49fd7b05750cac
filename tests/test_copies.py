"""Deliberate copies stay equal to their source (transformers' `# Copied from` check). A line
`# Copied from package.module.Name` right above a def, class or assignment makes that object a copy of `Name` in
package/module.py (`Class.method` for a method); ` with Old->New, A->B` renames in the source before comparing.
Copies live where a file must stand alone: the remote code that ships to the Hub, the metric files `evaluate.load`
copies one by one."""

import ast
import difflib
import io
import re
import textwrap
import tokenize
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MARKER = re.compile(r"^# Copied from (?P<target>[\w.]+)(?: with (?P<renames>.+))?$")
SKIPPED_DIRS = {".venv", "outputs", "build", "dist", ".git"}


def definitions(tree: ast.Module) -> dict[str, ast.stmt]:
    """Dotted name -> the def, class or assignment that binds it at module level (methods as `Class.name`)."""
    found = {}

    def visit(body, prefix: str) -> None:
        for node in body:
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                found[prefix + node.name] = node
                if isinstance(node, ast.ClassDef):
                    visit(node.body, f"{prefix}{node.name}.")
            elif isinstance(node, ast.Assign | ast.AnnAssign):
                for target in node.targets if isinstance(node, ast.Assign) else [node.target]:
                    if isinstance(target, ast.Name):
                        found[prefix + target.id] = node

    visit(tree.body, "")
    return found


def first_line(node: ast.stmt) -> int:
    return min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])


def source_text(lines: list[str], node: ast.stmt) -> str:
    """The node's lines (decorators and trailing comment included), dedented, so a method compares at any depth."""
    return textwrap.dedent("\n".join(lines[first_line(node) - 1 : node.end_lineno]))


def resolve(root: Path, target: str) -> tuple[Path, str] | None:
    """`a.b.c.Name.attr` -> (root/a/b/c.py, "Name.attr"): the longest module prefix that is a file."""
    parts = target.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        path = root.joinpath(*parts[:cut]).with_suffix(".py")
        if path.is_file():
            return path, ".".join(parts[cut:])
    return None


def markers(text: str) -> dict[int, re.Match]:
    """Line number -> the marker, for each comment line that is one (a marker inside a string is text, not a mark)."""
    tokens = tokenize.generate_tokens(io.StringIO(text).readline)
    comments = (t for t in tokens if t.type == tokenize.COMMENT and t.line.lstrip().startswith("#"))
    return {t.start[0]: match for t in comments if (match := MARKER.match(t.string))}


def check_file(root: Path, path: Path) -> list[str]:
    """One problem line (with the diff) per marked copy in `path` that differs from its source or marks nothing."""
    text = path.read_text()
    if "# Copied from" not in text:
        return []
    lines = text.splitlines()
    starts = {first_line(node): node for node in definitions(ast.parse(text)).values()}
    problems = []
    for number, match in markers(text).items():
        where, target = f"{path.relative_to(root)}:{number}", match["target"]
        copy = starts.get(number + 1)
        resolved = resolve(root, target)
        if copy is None:
            problems.append(f"{where}: the marker is not right above a def, class or assignment")
            continue
        if resolved is None or resolved[1] not in (source := definitions(ast.parse(resolved[0].read_text()))):
            problems.append(f"{where}: names {target}, which does not exist")
            continue
        expected = source_text(resolved[0].read_text().splitlines(), source[resolved[1]])
        for rename in (match["renames"] or "").split(","):
            if rename.strip():
                old, new = (part.strip() for part in rename.split("->"))
                expected = expected.replace(old, new)
        actual = source_text(lines, copy)
        if actual != expected:
            diff = difflib.unified_diff(expected.splitlines(), actual.splitlines(), target, where, lineterm="")
            problems.append(f"{where}: differs from {target}; make the copy equal to it:\n" + "\n".join(diff))
    return problems


def check_copies(root: Path) -> tuple[int, list[str]]:
    """(number of marked copies, problems) over every .py file below `root`."""
    files = [p for p in root.rglob("*.py") if not SKIPPED_DIRS & set(p.relative_to(root).parts)]
    count = sum(len(markers(p.read_text())) for p in files if "# Copied from" in p.read_text())
    return count, [problem for p in sorted(files) for problem in check_file(root, p)]


def test_every_marked_copy_in_the_repo_equals_its_source():
    count, problems = check_copies(ROOT)
    assert not problems, "\n\n".join(problems)
    assert count >= 20  # the metric files' shared blocks and the remote code's constants: never silently unmarked


SOURCE = '''\
LIMIT = 3  # the cap


def clip(values):
    """At most LIMIT values."""
    return values[:LIMIT]


class Metric:
    def add(self, values):
        return clip(values)
'''
COPY = """\
# Copied from pkg.source.LIMIT
LIMIT = 3  # the cap


# Copied from pkg.source.clip
def clip(values):
    \"\"\"At most LIMIT values.\"\"\"
    return values[:LIMIT]


class Other:
    # Copied from pkg.source.Metric.add with clip->trim
    def add(self, values):
        return trim(values)
"""


def write_pair(tmp_path: Path, copy: str) -> Path:
    (tmp_path / "pkg").mkdir(exist_ok=True)
    (tmp_path / "pkg" / "source.py").write_text(SOURCE)
    (tmp_path / "pkg" / "copy.py").write_text(copy)
    return tmp_path


def test_equal_copies_pass_and_renames_apply(tmp_path):
    assert check_copies(write_pair(tmp_path, COPY)) == (3, [])


def test_a_copy_that_differs_fails_naming_the_line_and_the_diff(tmp_path):
    root = write_pair(tmp_path, COPY.replace("return values[:LIMIT]", "return values[: LIMIT + 1]"))
    _, problems = check_copies(root)
    assert len(problems) == 1
    assert problems[0].startswith("pkg/copy.py:5: differs from pkg.source.clip")
    assert "-    return values[:LIMIT]\n+    return values[: LIMIT + 1]" in problems[0]


def test_a_changed_source_fails_its_copies(tmp_path):
    root = write_pair(tmp_path, COPY)
    (root / "pkg" / "source.py").write_text(SOURCE.replace("LIMIT = 3", "LIMIT = 4"))
    _, problems = check_copies(root)
    assert [p.split(":")[1] for p in problems] == ["1"] and "pkg.source.LIMIT" in problems[0]


def test_a_comment_or_docstring_edit_counts_and_a_wrong_rename_fails(tmp_path):
    edited = COPY.replace("# the cap", "# the limit").replace("with clip->trim", "with clip->cut")
    _, problems = check_copies(write_pair(tmp_path, edited))
    assert [p.split(":")[1] for p in problems] == ["1", "12"]


def test_a_marker_naming_nothing_or_above_nothing_fails(tmp_path):
    broken = COPY.replace("pkg.source.clip", "pkg.source.clamp") + "\n# Copied from pkg.source.LIMIT\n\nX = 1\n"
    _, problems = check_copies(write_pair(tmp_path, broken))
    assert "pkg/copy.py:5: names pkg.source.clamp, which does not exist" in problems
    assert any(p.startswith("pkg/copy.py:16: the marker is not right above") for p in problems)
