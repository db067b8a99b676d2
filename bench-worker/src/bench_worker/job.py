"""Bench jobs: the ``bench.run`` payload, its up-front validation and its cells.

A job is ``models × prompts × scenarios`` cells. Its id is a hash of its
configuration (unless the caller names one), so re-sending the same job gives the
same id and the same cell keys: finished cells are skipped, not redone.

Models run one after another: the cells of one model form a *phase*; only the
current phase's cells are on the work queue, so however many workers take cells,
only one model's weights are needed at a time (and every call uses keep_alive=0).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from bench_worker import scenarios as SC
from tipsml.contract import ContractError, ErrorCode

JOB_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
EXPERIMENT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
Judge = Literal["llm", "human", "both"]


class BenchJob(BaseModel):
    """``bench.run`` (DESIGN.md): field names fixed, more may be added."""

    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)

    experiment: str = "tip-bench"
    models: list[str] = Field(min_length=1, max_length=8)
    prompts: list[str] = Field(default_factory=lambda: ["v1"], min_length=1, max_length=12)
    n_scenarios: int = Field(default=4, ge=1, le=SC.MAX_SCENARIOS)
    n_tips: int = Field(default=2, ge=1, le=10)
    temperature: float = Field(default=0.7, ge=0.0, le=2.0)
    max_model_b: float = Field(default=4.0, gt=0.0, le=1000.0)
    judge: Judge = "llm"
    judge_model: str | None = Field(default=None, max_length=200)
    seed: int = Field(default=0, ge=0, le=2**31 - 1)
    max_tokens: int = Field(default=96, ge=4, le=1024)
    job_id: str | None = None

    @field_validator("experiment")
    @classmethod
    def _exp(cls, v: str) -> str:
        if not EXPERIMENT_RE.match(v):
            raise ValueError("experiment: 1-100 characters of [A-Za-z0-9_.-]")
        return v

    @field_validator("models", "prompts")
    @classmethod
    def _distinct(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError("must be distinct")
        for x in v:
            if not x or len(x) > 200:
                raise ValueError("names are 1..200 characters")
        return v

    @field_validator("job_id")
    @classmethod
    def _jid(cls, v: str | None) -> str | None:
        if v is not None and not JOB_ID_RE.match(v):
            raise ValueError("job_id: 1-64 characters of [A-Za-z0-9_-]")
        return v

    def config(self) -> dict:
        """Everything that defines the job's results (the job id hashes this)."""
        return self.model_dump(exclude={"job_id"})

    @property
    def id(self) -> str:
        if self.job_id:
            return self.job_id
        blob = json.dumps(self.config(), sort_keys=True, separators=(",", ":"))
        return "j" + hashlib.sha256(blob.encode()).hexdigest()[:15]

    def cells(self) -> list[Cell]:
        scen = [s.id for s in SC.build(self.n_scenarios, self.seed)]
        out = []
        for mi, m in enumerate(self.models):
            for p in self.prompts:
                for s in scen:
                    out.append(Cell(job_id=self.id, n=len(out), phase=mi, model=m, prompt=p,
                                    scenario=s))
        return out

    def phase_cells(self, phase: int) -> list[Cell]:
        return [c for c in self.cells() if c.phase == phase]

    @property
    def n_cells(self) -> int:
        return len(self.models) * len(self.prompts) * self.n_scenarios

    @property
    def cells_per_phase(self) -> int:
        return len(self.prompts) * self.n_scenarios


@dataclass(frozen=True)
class Cell:
    job_id: str
    n: int
    phase: int  # index of the model: cells of one model form one phase
    model: str
    prompt: str
    scenario: str

    @property
    def key(self) -> str:
        return f"{self.job_id}:{self.n}"

    def label(self) -> str:
        return f"{self.model} × {self.prompt} × {self.scenario}"

    def to_dict(self) -> dict:
        return {"job_id": self.job_id, "n": self.n, "phase": self.phase, "model": self.model,
                "prompt": self.prompt, "scenario": self.scenario}


def cell_message(job: BenchJob, cell: Cell) -> dict:
    """The ``bench.cell.<job_id>.<n>`` payload: the whole job travels with each cell, so a
    worker needs nothing else (no job lookup that could be lost)."""
    return {"job": job.model_dump(), "job_id": job.id, "cell": cell.n}


# ---------------------------------------------------------------- model sizes

_TAG_SIZE = re.compile(r"^(?:(\d+)x)?(\d+(?:\.\d+)?)([bm])(?![a-z0-9])", re.IGNORECASE)
_NAME_SIZE = re.compile(r"[-_:/](?:(\d+)x)?(\d+(?:\.\d+)?)([bm])(?![a-z0-9])", re.IGNORECASE)


def _size(m: re.Match) -> float:
    mult = int(m.group(1)) if m.group(1) else 1
    v = float(m.group(2)) * mult
    return v / 1000.0 if m.group(3).lower() == "m" else v


def model_size_b(model: str) -> float | None:
    """Billions of parameters named by the model string, or None when it names none.

    ``ollama/qwen2.5:1.5b`` → 1.5, ``llama3.2:3b-instruct-q4_K_M`` → 3,
    ``openai/smollm2-135m`` → 0.135, ``mixtral:8x7b`` → 56, ``gemma3:latest`` → None.
    """
    name = model.split("/", 1)[1] if "/" in model else model
    if ":" in name:
        m = _TAG_SIZE.match(name.split(":", 1)[1])
        if m:
            return _size(m)
    m = _NAME_SIZE.search(name)
    return _size(m) if m else None


def parse_parameter_size(text: str | None) -> float | None:
    """Ollama's ``details.parameter_size`` (``"3.2B"``, ``"135M"``) in billions."""
    if not text:
        return None
    m = re.match(r"^\s*(\d+(?:\.\d+)?)\s*([BMK])", str(text), re.IGNORECASE)
    if not m:
        return None
    v = float(m.group(1))
    return {"b": v, "m": v / 1e3, "k": v / 1e6}[m.group(2).lower()]


def validate(job: BenchJob, known_prompts: list[str], size_of) -> None:
    """Refuse the job before any work: unknown prompt versions, models too big or of
    unknown size. ``size_of(model) -> float | None`` (tag first, then server info)."""
    unknown = [p for p in job.prompts if p not in known_prompts]
    if unknown:
        raise ContractError(ErrorCode.unknown_prompt_version,
                            f"unknown prompt version(s) {', '.join(unknown)}; "
                            f"known: {', '.join(sorted(known_prompts))}")
    problems = []
    for m in job.models:
        b = size_of(m)
        if b is None:
            problems.append(f"{m}: size unknown (name it with a size tag such as "
                            f"'qwen2.5:1.5b', or serve it with model info)")
        elif b > job.max_model_b:
            problems.append(f"{m}: {b:g}B parameters > max_model_b {job.max_model_b:g}B")
    if problems:
        raise ContractError(ErrorCode.invalid_request,
                            "model(s) refused: " + "; ".join(problems))
