"""The documents name only what exists: every relative link (and its #anchor), every
backticked repository path, every backticked `tether.…` name and every backticked
`Class.attribute` of a tether class in docs/*.md and README.md. Nothing outside the queue
half points at a design document the repository does not have.

The session tables of docs/sessions.md and docs/wire-protocol.md (settings, faults,
statistics, frame types, states, quoted constants) are checked against the code in
tests/test_session_docs.py.
"""
from __future__ import annotations

import importlib
import inspect
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
DOCUMENTS = sorted((ROOT / "docs").glob("*.md")) + [ROOT / "README.md"]

# Where a path in backticks may start; anything else in backticks is code or prose.
PATH_ROOTS = ("src/", "tests/", "ext/", "benchmarks/", "docs/", ".ci/")
TOP_LEVEL_FILES = ("README.md", "setup.py", "pyproject.toml", "MANIFEST.in")

# Modules whose classes a document may name as `Class.attribute`.
CLASS_MODULES = [
    "tether.errors", "tether.session.sansio.address_validation", "tether.session.adapters.api",
    "tether.session.sansio.congestion", "tether.session.sansio.demux", "tether.session.sansio.ended",
    "tether.session.sansio.path_validation",
    "tether.session.sansio.engine", "tether.session.sansio.events", "tether.session.sansio.fragments",
    "tether.session.adapters.session", "tether.session.sansio.settings", "tether.session.sansio.state",
    "tether.session.adapters.tcp", "tether.session.adapters.timers", "tether.session.adapters.udp",
    "tether.streams.server", "tether.streams.transport", "tether.bench.relay",
    "tether._native.codec", "tether._native.rangeset", "tether._native.receive_window",
    "tether._native.rtt", "tether._native.send_window",
]

FENCE = re.compile(r"^```.*?^```", re.S | re.M)
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")
CODE = re.compile(r"`([^`\n]+)`")


def prose(path: pathlib.Path) -> str:
    """The document without its fenced code blocks (diagrams and examples)."""
    return FENCE.sub("", path.read_text())


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = heading.strip().lower().replace("`", "")
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: pathlib.Path) -> set[str]:
    return {slug(m.group(1)) for m in re.finditer(r"^#+ (.+)$", prose(path), re.M)}


def rel(path: pathlib.Path) -> str:
    return path.relative_to(ROOT).as_posix()


def repo_path_exists(name: str) -> bool:
    """A repository path, a directory when it ends in '/'; NAME stands for any file name."""
    if "NAME" in name or "*" in name:
        return any(ROOT.glob(name.replace("NAME", "*").rstrip("/")))
    target = ROOT / name
    return target.is_dir() if name.endswith("/") else target.is_file()


def test_there_are_documents():
    names = {rel(p) for p in DOCUMENTS}
    assert {"docs/architecture.md", "docs/wire-protocol.md", "docs/sessions.md"} <= names


@pytest.mark.parametrize("doc", DOCUMENTS, ids=rel)
def test_relative_links_resolve(doc: pathlib.Path):
    broken = []
    for target in LINK.findall(prose(doc)):
        if re.match(r"^[a-z]+:", target):  # http:, https:, mailto:
            continue
        file_part, _, anchor = target.partition("#")
        path = (doc.parent / file_part).resolve() if file_part else doc
        name = path.relative_to(ROOT).as_posix() if path.is_relative_to(ROOT) else str(path)
        if not path.exists():
            broken.append(f"{target}: {name} does not exist")
        elif anchor and path.suffix == ".md" and anchor not in anchors(path):
            broken.append(f"{target}: no heading '#{anchor}' in {name}")
    assert not broken, f"{rel(doc)}: " + "; ".join(broken)


@pytest.mark.parametrize("doc", DOCUMENTS, ids=rel)
def test_backticked_paths_exist(doc: pathlib.Path):
    missing = []
    for text in CODE.findall(prose(doc)):
        if " " in text or not (text.startswith(PATH_ROOTS) or text in TOP_LEVEL_FILES):
            continue
        if not repo_path_exists(text):
            missing.append(text)
    assert not missing, f"{rel(doc)} names paths that do not exist: {missing}"


def _resolve_dotted(name: str) -> bool:
    parts = name.split(".")
    if parts[-1] == "NAME":  # a placeholder for any module of a package
        return importlib.util.find_spec(".".join(parts[:-1])) is not None
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        try:
            for attr in parts[cut:]:
                obj = getattr(obj, attr)
        except AttributeError:
            return False
        return True
    return False


@pytest.mark.parametrize("doc", DOCUMENTS, ids=rel)
def test_backticked_tether_names_exist(doc: pathlib.Path):
    names = {m.group(1) for t in CODE.findall(prose(doc))
             if (m := re.match(r"^(tether(?:\.\w+)+)(?:\(.*\))?$", t))}
    missing = sorted(n for n in names if not _resolve_dotted(n))
    assert not missing, f"{rel(doc)} names what tether does not have: {missing}"


def _classes() -> dict[str, type]:
    found: dict[str, type] = {}
    for module_name in CLASS_MODULES:
        module = importlib.import_module(module_name)
        for name, obj in vars(module).items():
            if inspect.isclass(obj) and obj.__module__ == module_name:
                found[name] = obj
    return found


def _has_attribute(cls: type, attr: str) -> bool:
    if hasattr(cls, attr):
        return True
    try:  # instance attributes assigned in __init__
        source = inspect.getsource(cls)
    except (OSError, TypeError):
        return False
    return re.search(rf"\bself\.{re.escape(attr)}\s*(:[^=]*)?=", source) is not None


@pytest.mark.parametrize("doc", DOCUMENTS, ids=rel)
def test_backticked_class_attributes_exist(doc: pathlib.Path):
    classes = _classes()
    missing = []
    for text in CODE.findall(prose(doc)):
        m = re.match(r"^([A-Z]\w*)\.(\w+)(?:\(.*\))?$", text)
        if m and m.group(1) in classes and not _has_attribute(classes[m.group(1)], m.group(2)):
            missing.append(text)
    assert not missing, f"{rel(doc)} names attributes that do not exist: {missing}"


def test_the_class_attribute_check_can_fail():
    classes = _classes()
    assert _has_attribute(classes["SessionEngine"], "packets_to_send")
    assert _has_attribute(classes["Demux"], "dropped_packets")          # set in __init__
    assert _has_attribute(classes["SendWindow"], "retransmit_due")      # compiled
    assert not _has_attribute(classes["SessionEngine"], "retransmit")
    assert not _resolve_dotted("tether.session.sansio.engine.NoSuchThing")
    assert not repo_path_exists("src/tether/session/no_such_file.py")


def _text_files() -> list[pathlib.Path]:
    out = []
    for base in ("src", "tests", "benchmarks", "ext", "docs", ".ci"):
        for path in (ROOT / base).rglob("*"):
            if path.is_file() and path.suffix in (".py", ".pyx", ".pxd", ".md", "") \
                    and "__pycache__" not in path.parts and "venv" not in path.parts:
                out.append(path)
    return out + [ROOT / "README.md", ROOT / "setup.py", ROOT / "pyproject.toml"]


def test_nothing_points_at_design_md():
    pointing = [rel(p) for p in _text_files()
                if "DESIGN" + ".md" in p.read_text(errors="replace")]
    pointing = [p for p in pointing if p != "tests/test_docs.py"]
    assert not pointing, f"these point at a design document outside the repository; point at docs/: {pointing}"


def test_no_todo_in_the_documents():
    for doc in DOCUMENTS:
        assert "TODO" not in doc.read_text(), f"{rel(doc)} has a TODO"
