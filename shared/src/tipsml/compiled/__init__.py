"""The scorer's hot modules compiled with Cython, used only while they match their source.

A decision runs through some forty Python functions (parse, features, the choice, the
reply, the record, the log entry: issue 12); the interpreter's own work was about half
of the scorer's CPU per decision. Compiled by Cython as they are — the same source,
no types added — these modules execute about a sixth fewer instructions per decision
(``bench/score_cpu.py --mode callgrind``; README, *Serving latency*). Nothing else
changes: the ``.py`` files stay the source of truth and every module works without its
compiled twin.

* ``python -m tipsml.compiled build`` (``make setup`` runs it; :mod:`.build`) compiles
  :data:`MODULES`
  into ``<venv>/tipsml-compiled/<interpreter>/`` (``TIPSML_COMPILED_DIR`` elsewhere),
  with a manifest of each source's SHA-256; it rebuilds only what changed. Where Cython
  or a C compiler is missing it says so and the Python modules serve.
* :func:`install` (``import tipsml`` calls it) puts a finder first on ``sys.meta_path``:
  a listed module whose ``.py`` still has the manifest's hash is loaded from its
  extension; one edited since (a stale build) is loaded from its ``.py``, with a
  warning — an edit is never silently shadowed by old compiled code.
* ``TIPSML_COMPILED=0`` turns the finder off (the pure-Python modules, e.g. to compare
  or to debug with frames); ``python -m tipsml.compiled status`` lists what is built,
  fresh or stale.

Compiled modules have no Python frames of their own (py-spy and tracebacks show less
inside them); their behaviour is the source's: the test suite runs against them (CI
builds them in ``make setup``) and the scorer's and shared tests also run without them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
from importlib.machinery import ExtensionFileLoader, ModuleSpec, PathFinder
from pathlib import Path

log = logging.getLogger(__name__)

# the modules a decision runs through (the scorer's request path, its decision log, and
# what they call per decision)
MODULES = (
    "tipsml.bandits", "tipsml.contract", "tipsml.features", "tipsml.keys",
    "tipsml.metrics", "tipsml.resp", "tipsml.state", "tipsml.subjects",
    "tipsml.messaging.breaker", "tipsml.messaging.endpoint", "tipsml.messaging.fastsub",
    "scorer.decisionlog", "scorer.handlers", "scorer.scoring",
)

# the source's semantics, compiled: annotations are not C types (an ``int`` annotation
# must not turn into a C long that overflows or refuses a float), functions keep their
# Python introspection (signatures, ``__defaults__``)
DIRECTIVES = {"language_level": 3, "annotation_typing": False, "binding": True}

ENV, DIR_ENV = "TIPSML_COMPILED", "TIPSML_COMPILED_DIR"
MANIFEST = "manifest.json"


def cache_dir() -> Path:
    """Where this interpreter's compiled modules live (one directory per interpreter
    version: an extension is built for one ABI)."""
    base = os.environ.get(DIR_ENV) or str(Path(sys.prefix) / "tipsml-compiled")
    return Path(base) / sys.implementation.cache_tag


def enabled() -> bool:
    return os.environ.get(ENV, "").strip().lower() not in ("0", "off", "no", "false")


def digest(source: bytes) -> str:
    return hashlib.sha256(source).hexdigest()


def read_manifest(root: Path) -> dict:
    try:
        doc = json.loads((root / MANIFEST).read_text())
    except (OSError, ValueError):
        return {}
    return doc.get("modules", {}) if isinstance(doc, dict) else {}


class CompiledFinder:
    """Finds a listed module's extension when its source is unchanged since it was built
    (a meta path finder: asked before the path's own, which would find the ``.py``)."""

    def __init__(self, root: Path, modules: dict):
        self.root = root
        self.modules = modules
        self.loaded: list[str] = []  # loaded compiled, in this process
        self.stale: list[str] = []   # listed, but the source changed since the build

    def find_spec(self, fullname: str, path=None, target=None) -> ModuleSpec | None:
        entry = self.modules.get(fullname)
        if entry is None:
            return None
        src = PathFinder.find_spec(fullname, path)
        if src is None or not src.origin or not src.origin.endswith(".py"):
            return None
        so = self.root / entry.get("file", "")
        try:
            fresh = digest(Path(src.origin).read_bytes()) == entry.get("sha256")
        except OSError:
            return None
        if not fresh:
            if fullname not in self.stale:
                self.stale.append(fullname)
                log.warning("%s changed since it was compiled: its .py serves (rebuild with "
                            "`python -m tipsml.compiled build` or `make setup`)", fullname)
            return None
        if not so.is_file():
            return None
        self.loaded.append(fullname)
        spec = ModuleSpec(fullname, ExtensionFileLoader(fullname, str(so)), origin=str(so))
        spec.has_location = True
        return spec

    def invalidate_caches(self) -> None:
        pass


def finder() -> CompiledFinder | None:
    return next((f for f in sys.meta_path if isinstance(f, CompiledFinder)), None)


def install() -> bool:
    """The finder first on ``sys.meta_path`` where compiled modules are built and
    :func:`enabled`; ``True`` if it is there. Cheap: one small JSON read, once."""
    if not enabled():
        return False
    if finder() is not None:
        return True
    root = cache_dir()
    modules = read_manifest(root)
    if not modules:
        return False
    sys.meta_path.insert(0, CompiledFinder(root, modules))
    return True


def loaded() -> list[str]:
    """The modules this process loaded from their compiled twin."""
    f = finder()
    return list(f.loaded) if f is not None else []
