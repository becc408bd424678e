"""The tree shows the layers: each library module imports only from its own
layer or the layers below, and the library never imports OCS or its stack."""

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
LIB = ROOT / "socs_tcp"
FORBIDDEN = {"ocs", "twisted", "txaio", "autobahn", "socs_tcp_agents", "socs_tcp_stack"}

# what each part of the library may import from socs_tcp (besides itself)
ALLOWED = {
    "core": {"errors"},
    "transport": {"core", "errors"},
    "messages": {"core", "errors"},
    "cmd_tcp": {"core", "errors", "transport"},
    "devices": {"core", "errors", "transport", "messages"},
    "testing": {"core", "errors", "transport", "messages", "devices"},
}
# test support used by layer 4: the simulator made from a device file
DEVICE_TEST_SUPPORT = {"simulator.py", "testing.py", "conform.py", "__main__.py"}
# deprecated re-exports kept for one release, each a lazy import of one module (see the changelog)
DEPRECATED_REEXPORTS = {"messages/jsonlines.py": {"socs_tcp.testing.jsonserver"}}
# deprecated aliases and the package face may point anywhere in the library
FACES = {"__init__.py", "codec.py", "buffer.py", "framing.py", "policy.py", "stats.py", "interface.py",
         "tcpcom.py", "jsonlines.py", "plugin.py", "errors.py", "record.py", "replay.py"}


def _imports(path):
    tree = ast.parse(path.read_text(), filename=str(path))
    package = path.relative_to(ROOT).with_suffix("").parts[:-1]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                name = ".".join(base + ((node.module,) if node.module else ()))
                if node.module is None:
                    for alias in node.names:
                        yield f"{name}.{alias.name}"
                    continue
                yield name
            else:
                yield node.module


def _modules():
    return sorted(p for p in LIB.rglob("*.py") if "__pycache__" not in p.parts)


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_library_never_imports_ocs_or_the_stack(path):
    bad = sorted({name for name in _imports(path) if name.split(".")[0] in FORBIDDEN})
    assert not bad, f"{path.relative_to(ROOT)} imports {bad}"


def _part(path):
    rel = path.relative_to(LIB).parts
    return rel[0] if len(rel) > 1 else rel[0].removesuffix(".py")


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_modules_import_only_from_lower_layers(path):
    part = _part(path)
    rel = path.relative_to(LIB).parts
    if len(rel) == 1 and rel[0] in FACES:
        return
    if part == "simulators":  # deprecated alias package
        return
    allowed = set(ALLOWED.get(part, ALLOWED["testing"]))
    if part == "devices" and path.name in DEVICE_TEST_SUPPORT:
        allowed.add("testing")
    bad = []
    kept = DEPRECATED_REEXPORTS.get("/".join(rel), set())
    for name in _imports(path):
        if name in kept:
            continue
        parts = name.split(".")
        if parts[0] != "socs_tcp" or len(parts) == 1:
            continue
        target = parts[1]
        if target in (part, "__version__"):
            continue
        if target not in allowed:
            bad.append(name)
    assert not bad, f"{path.relative_to(ROOT)} ({part}) imports {sorted(set(bad))}; allowed: {sorted(allowed)}"
