"""Compiling :data:`tipsml.compiled.MODULES` (``python -m tipsml.compiled build``): Cython
to C to an extension per module, each in its own process (one that fails is left to
Python, the others are built), into :func:`tipsml.compiled.cache_dir` with a manifest of
the sources' hashes."""

from __future__ import annotations

import json
import os
import sys
import time
from contextlib import contextmanager
from importlib.machinery import PathFinder
from pathlib import Path

from . import DIRECTIVES, MANIFEST, MODULES, cache_dir, digest, read_manifest


def source_of(name: str) -> Path:
    """A listed module's ``.py`` (its parent package imported, the module itself not)."""
    import importlib

    parent, _, _ = name.rpartition(".")
    pkg = importlib.import_module(parent)
    spec = PathFinder.find_spec(name, pkg.__path__)
    if spec is None or not spec.origin or not spec.origin.endswith(".py"):
        raise ModuleNotFoundError(f"no source file for {name}")
    return Path(spec.origin)


@contextmanager
def _output_to(path: Path):
    """This process's stdout and stderr, the C compiler's included, into ``path``."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for f in (fd, *saved):
            os.close(f)


def _compile_one(name: str, src: str, root: str) -> tuple[str, str | None, str]:
    """Cython → C → extension for one module, in its own process (a failure is its own;
    the compilers' chatter stays out of the build's output). Returns (name, the
    extension's path relative to ``root`` or None, the end of what went wrong)."""
    import tempfile

    try:
        from Cython.Build import cythonize
        from setuptools import Distribution, Extension
    except ImportError as e:
        return name, None, f"Cython or setuptools missing ({e})"
    with tempfile.TemporaryDirectory(prefix="tipsml-cy-") as tmp:
        log = Path(tmp) / "build.log"
        try:
            with _output_to(log):
                ext = cythonize([Extension(name, [src])], build_dir=tmp, quiet=True,
                                compiler_directives=DIRECTIVES, force=True)
                dist = Distribution({"ext_modules": ext})
                cmd = dist.get_command_obj("build_ext")
                cmd.build_lib = root
                cmd.build_temp = str(Path(tmp) / "obj")
                cmd.ensure_finalized()
                cmd.run()
                path = Path(cmd.get_ext_fullpath(name))
        except BaseException as e:  # noqa: BLE001 - SystemExit from distutils included
            said = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            return name, None, f"{type(e).__name__}: {e}\n{said}"
    return name, str(path.relative_to(root)), ""


def build(modules=MODULES, jobs: int | None = None, force: bool = False,
          quiet: bool = False) -> dict:
    """Compile what is missing or stale; keep the rest. Returns a summary
    (``built``, ``fresh``, ``failed``: module names; ``dir``)."""
    from concurrent.futures import ProcessPoolExecutor

    try:
        import Cython
        cython_version = Cython.__version__
    except ImportError:
        cython_version = None
    root = cache_dir()
    root.mkdir(parents=True, exist_ok=True)
    old = read_manifest(root)
    entries, todo, fresh = {}, [], []
    for name in modules:
        src = source_of(name)
        h = digest(src.read_bytes())
        e = old.get(name)
        if (not force and e and e.get("sha256") == h and e.get("cython") == cython_version
                and e.get("directives") == DIRECTIVES and (root / e["file"]).is_file()):
            entries[name] = e
            fresh.append(name)
        else:
            todo.append((name, src, h))
    failed: dict[str, str] = {}
    if todo and cython_version is None:
        failed = {n: "Cython is not installed (pip install cython)" for n, _, _ in todo}
        todo = []
    if todo and not quiet:
        print(f"tipsml.compiled: compiling {len(todo)} module(s) with Cython {cython_version} "
              f"into {root} ...", flush=True)
    t0 = time.monotonic()
    jobs = max(1, jobs or os.cpu_count() or 1)
    results = []
    if todo:
        with ProcessPoolExecutor(max_workers=min(jobs, len(todo))) as pool:
            futs = [(h, pool.submit(_compile_one, n, str(s), str(root))) for n, s, h in todo]
            results = [(h, *f.result()) for h, f in futs]
    for h, name, rel, err in results:
        if rel is None:
            failed[name] = err
            if not quiet:
                print(f"  {name}: not compiled ({err.splitlines()[0] if err else '?'})",
                      flush=True)
            continue
        entries[name] = {"file": rel, "sha256": h, "cython": cython_version,
                         "directives": DIRECTIVES}
        if not quiet:
            print(f"  {name}", flush=True)
    doc = {"python": sys.version.split()[0], "cython": cython_version,
           "modules": dict(sorted(entries.items()))}
    tmp = root / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(doc, indent=2))
    tmp.replace(root / MANIFEST)
    built = [n for n, _, _ in todo if n not in failed]
    if (built or failed) and not quiet:
        print(f"tipsml.compiled: {len(built)} built, {len(fresh)} already fresh, "
              f"{len(failed)} left to Python in {time.monotonic() - t0:.0f} s", flush=True)
    return {"dir": str(root), "built": built, "fresh": fresh, "failed": sorted(failed)}


def status(modules=MODULES) -> list[dict]:
    """Per listed module: ``compiled`` (fresh), ``stale`` (source changed) or ``missing``."""
    root = cache_dir()
    man = read_manifest(root)
    rows = []
    for name in modules:
        e = man.get(name)
        try:
            h = digest(source_of(name).read_bytes())
        except (OSError, ModuleNotFoundError):
            h = None
        state = ("missing" if not e or not (root / e.get("file", "")).is_file()
                 else "compiled" if e.get("sha256") == h else "stale")
        rows.append({"module": name, "state": state})
    return rows
