"""tipsml.compiled: a compiled twin serves only while it matches its source, and can be
turned off. The build is real (Cython and the C compiler); each check imports in a fresh
interpreter, since a module is imported once per process."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

from tipsml import compiled
from tipsml.compiled import build as B

pytest.importorskip("Cython")


def _run(code: str, env: dict) -> str:
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


@pytest.fixture
def toy(tmp_path, monkeypatch):
    """A package ``toycy`` with one module, importable from ``tmp_path``; the compiled
    modules' directory in ``tmp_path`` too."""
    pkg = tmp_path / "src" / "toycy"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "mod.py").write_text(textwrap.dedent("""
        from . import helper

        def answer(x: int) -> float:
            return helper.double(x) / 4  # an int annotation does not make a C int
    """))
    (pkg / "helper.py").write_text("def double(x):\n    return 2 * x\n")
    monkeypatch.syspath_prepend(str(tmp_path / "src"))
    for name in [m for m in sys.modules if m == "toycy" or m.startswith("toycy.")]:
        monkeypatch.delitem(sys.modules, name)  # another test's toy package
    monkeypatch.setenv(compiled.DIR_ENV, str(tmp_path / "compiled"))
    env = {k: v for k, v in os.environ.items() if k != compiled.ENV}  # on, whatever ran us
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path / "src"), env.get("PYTHONPATH", "")])
    return pkg, env


PROBE = """
    import tipsml, toycy.mod as m
    from tipsml import compiled
    print(m.__file__.rsplit('.', 1)[-1], m.answer(3), compiled.loaded())
"""


def test_a_compiled_twin_serves_until_its_source_changes(toy):
    pkg, env = toy
    res = B.build(modules=("toycy.mod",), quiet=True)
    assert res["built"] == ["toycy.mod"] and not res["failed"]
    assert B.build(modules=("toycy.mod",), quiet=True)["fresh"] == ["toycy.mod"]
    man = json.loads((compiled.cache_dir() / compiled.MANIFEST).read_text())
    assert man["modules"]["toycy.mod"]["sha256"] == compiled.digest((pkg / "mod.py").read_bytes())
    # compiled: the extension is what is imported, and it behaves as the source does
    assert _run(PROBE, env) == "so 1.5 ['toycy.mod']"
    # off: the source
    assert _run(PROBE, {**env, compiled.ENV: "0"}) == "py 1.5 []"
    # edited since the build: the edit serves, never the old compiled code
    (pkg / "mod.py").write_text((pkg / "mod.py").read_text().replace("/ 4", "/ 8"))
    assert _run(PROBE, env) == "py 0.75 []"
    assert [r["state"] for r in B.status(("toycy.mod",))] == ["stale"]
    # and a build brings it back
    assert B.build(modules=("toycy.mod",), quiet=True)["built"] == ["toycy.mod"]
    assert _run(PROBE, env) == "so 0.75 ['toycy.mod']"


def test_a_module_cython_cannot_compile_is_left_to_python(toy):
    pkg, env = toy
    (pkg / "bad.py").write_text("def f(:\n    pass\n")  # not even Python
    res = B.build(modules=("toycy.bad", "toycy.mod"), quiet=True)
    assert res["failed"] == ["toycy.bad"] and res["built"] == ["toycy.mod"]
    assert [r["state"] for r in B.status(("toycy.bad", "toycy.mod"))] == [
        "missing", "compiled"]


def test_the_scorer_runs_its_hot_modules_compiled_where_they_are_built():
    """After ``make setup`` (which builds them) the scorer's modules load compiled; with
    ``TIPSML_COMPILED=0`` from their source. Skipped where they are not built."""
    rows = B.status()
    if any(r["state"] != "compiled" for r in rows):
        pytest.skip(f"not all built: {rows}")
    probe = """
        import scorer.scoring, tipsml.messaging.fastsub
        print(scorer.scoring.__file__.rsplit('.', 1)[-1],
              tipsml.messaging.fastsub.__file__.rsplit('.', 1)[-1])
    """
    env = {k: v for k, v in os.environ.items() if k != compiled.ENV}
    assert _run(probe, env) == "so so"
    assert _run(probe, {**env, compiled.ENV: "0"}) == "py py"
