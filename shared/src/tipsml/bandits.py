"""Contextual-bandit policies: pure numpy, no I/O.

Every policy keeps one disjoint ridge-regression model per arm:
``A = λI + Σ x xᵀ`` (stored as its inverse, updated by Sherman–Morrison so the
request path never inverts a matrix), ``b = Σ r x``, ``θ = A⁻¹ b``.

* ``egreedy``  — argmax θ·x with probability 1-ε, uniform otherwise.
  propensity(a) = ε/K + (1-ε)/|G| if a is among the |G| tied greedy arms (within
  ``TIE_TOL`` of the best), else ε/K.
* ``linucb``   — disjoint LinUCB (Li et al. 2010): argmax θ·x + α√(xᵀA⁻¹x),
  ties broken uniformly, so propensity = 1/|ties| (deterministic otherwise).
* ``thompson`` — linear Thompson sampling: θ_a ~ N(θ̂_a, v²A_a⁻¹). Only θ_a·x
  matters, which is exactly N(μ_a = θ̂_a·x, σ_a² = v² xᵀA_a⁻¹x), so sampling is one
  normal per arm. Its propensity is computed, not estimated
  (``THOMPSON_PROPENSITY=exact``, the default):
  ``P(a = argmax) = ∫ φ_a(x) Π_{b≠a} Φ_b(x) dx``,
  evaluated by composite Gauss–Legendre quadrature on panels at every arm's own scale
  (:func:`thompson_probs`; within 1e-4 of the integral).
  ``THOMPSON_PROPENSITY=mc`` keeps the former estimate (M = ``THOMPSON_SAMPLES`` extra
  draws, floored at 1/(M+1)), for comparison only: 1/p̂ of a noisy p̂ biases IPS upward.

State of one arm (layout 2, what Redis stores) is one packed **float32** vector
``[n, reward_sum, b(D), triu(A⁻¹)]``: A⁻¹ is symmetric, so only its upper triangle
(row-major, D(D+1)/2 values) is kept — 4·(2 + D + D(D+1)/2) bytes, 148 B for D=7,
368 B for D=12 instead of 464 / 1,264 B. The Lua update reads it, computes in double
precision and rounds the result back to float32 (:func:`stored_update` is its numpy
twin; ``bench/compact_state.py`` measures the drift against a float64 learner over
10,000 updates). The former layout 1 (float64 ``[n, reward_sum, b(D), A⁻¹(D·D)]``) is
still read everywhere (told apart by its length) and rewritten in layout 2 on its next
update. In memory every policy works on the float64 layout-1 vector (:func:`decode_arm`).

Pooled policies (``egreedy-pooled``, ``linucb-pooled``, ``thompson-pooled``) learn across
users: each arm keeps one **shared** ridge model over every user's rewards (θ_s =
(λ_s I + Σ x xᵀ)⁻¹ Σ r x on the same features, ``λ_s = RIDGE_LAMBDA``; its additive
statistics are a sharded global model, see :mod:`tipsml.state`) and the user's own model
is shrunk toward it: the prior of θ_u is N(θ_s, I/λ_p) (``λ_p = POOLED_LAMBDA``), so

    θ_u = (λ_p I + Σ_u x xᵀ)⁻¹ (Σ_u r x + λ_p θ_s).

The user's stored state is the ordinary layout with ridge λ_p (A_u = λ_p I + Σ_u x xᵀ,
b_u = Σ_u r x): the per-user update is unchanged, only the read adds ``λ_p θ_s`` to b
(:meth:`Policy.choose` ``prior=``). A new user starts at the population's model; after
about λ_p / D rewards per arm their own data weigh as much as the prior.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from .features import FS_CTX, FS_CTX_PROFILE, FS_CTX_PROFILE_V2, FeatureSet
from .hot import lib as _hot

# The per-arm maths in C (tipsml.hot): the same numbers to the last bits of a sum taken
# in another order, in about a tenth of the time of the numpy calls on these tiny
# matrices (issue 12). Without it (or with TIPSML_NO_C=1) the numpy path below does the
# same maths.
_HOT_MAXD = 32  # the C part's largest feature dimension


def _hot_pick_agrees() -> bool:
    """Whether the C part's draws are numpy's own (``Generator.random()`` and
    ``Generator.integers(n)`` on the same bit generator give the same numbers in the same
    order, the rejection loop included): checked once at import, so a numpy that changed
    its bounded-integer algorithm silently falls back to the Python pick."""
    a, b = np.random.default_rng(20261130), np.random.default_rng(20261130)
    cap = b.bit_generator.capsule
    for n in (1, 2, 3, 5, 4, 7, 1, 6, 3, 2**31 + 11, 2**31 + 11, 100_003, 5, 2, 9):
        if int(a.integers(n)) != _hot.draw_below(cap, n) or a.random() != _hot.draw_double(cap):
            return False
    return a.integers(2**32 - 1) == b.integers(2**32 - 1)  # and still in step


# Arms whose values (θ·x, LinUCB's score) are within TIE_TOL of the best are tied: the
# choice among them is uniform and the propensity says so. Not 1e-12 (the former value):
# the stored state is float32, and a mean that is 0 in exact arithmetic (an arm whose
# only rewards came with contexts orthogonal to this one) reads as ±1e-8 from float32
# and as ±1e-17 from float64 — a spurious single "greedy" arm in the scorer where the
# simulator, on float64 state, saw a tie (found by devtools/tests/sim/test_nats_mode.py's
# replay). 1e-6 is above that rounding and far below any difference in expected reward
# that could matter; the C pick uses the same value (checked below).
TIE_TOL = 1e-6

_HOT_PICK = _hot is not None and getattr(_hot, "TIE_TOL", None) == TIE_TOL \
    and _hot_pick_agrees()

# features as the DECISIONS log keeps them: x.round(6).tolist(), in C when it is built
round6 = _hot.round6 if _hot is not None else (lambda x: np.asarray(x).round(6).tolist())

HEADER = 2  # n, reward_sum

# ------------------------------------------------------------------ Thompson propensities

def packed_len(dim: int) -> int:
    """Length of the full (layout-1, float64) vector: the in-memory form."""
    return HEADER + dim + dim * dim


def tri_len(dim: int) -> int:
    """Length of the stored (layout-2, float32) vector."""
    return HEADER + dim + dim * (dim + 1) // 2


_TRI: dict[int, tuple[np.ndarray, np.ndarray]] = {}


def _tri_index(dim: int) -> tuple[np.ndarray, np.ndarray]:
    """(flat indices of the upper triangle in a D·D matrix, D·D map full → triangle)."""
    t = _TRI.get(dim)
    if t is None:
        iu = np.triu_indices(dim)
        flat = iu[0] * dim + iu[1]
        full = np.empty((dim, dim), dtype=np.intp)
        full[iu] = np.arange(len(flat))
        full[(iu[1], iu[0])] = np.arange(len(flat))
        t = _TRI[dim] = (flat, full.ravel())
    return t


def encode_arm(v: np.ndarray, dim: int) -> bytes:
    """Full float64 vector → stored layout 2 (float32, upper triangle of A⁻¹)."""
    v = np.asarray(v, dtype=np.float64)
    flat, _ = _tri_index(dim)
    out = np.empty(tri_len(dim), dtype="<f4")
    out[:HEADER + dim] = v[:HEADER + dim]
    out[HEADER + dim:] = v[HEADER + dim:][flat]
    return out.tobytes()


def decode_arm(blob: bytes | None, dim: int, lam: float = 1.0) -> np.ndarray:
    """Stored arm (layout 2, or the former layout 1, or nothing) → full float64 vector."""
    if blob and len(blob) == tri_len(dim) * 4:
        t = np.frombuffer(blob, dtype="<f4").astype(np.float64)
        _, full = _tri_index(dim)
        return np.concatenate([t[:HEADER + dim], t[HEADER + dim:][full]])
    if blob and len(blob) == packed_len(dim) * 8:
        return np.frombuffer(blob, dtype="<f8").copy()
    return initial_arm(dim, lam)


def dim_of(blob: bytes) -> int:
    """The dimension of a stored arm, from its length (either layout); 0 if neither."""
    for d in range(1, 64):
        if len(blob) in (tri_len(d) * 4, packed_len(d) * 8):
            return d
    return 0


def stored_update(blob: bytes | None, x: np.ndarray, r: float, lam: float = 1.0) -> bytes:
    """Numpy twin of the Lua update on stored bytes: decode, update in float64, store
    float32 (x as the decision record keeps it, float32)."""
    x = np.asarray(x, dtype="<f4").astype(np.float64)
    d = x.shape[0]
    return encode_arm(sherman_morrison_update(decode_arm(blob, d, lam), x, r), d)


def shared_add(stats: np.ndarray | None, x: np.ndarray, r: float) -> np.ndarray:
    """Numpy twin of ``GLOBAL_ADD_LUA``: add one reward to a shared-statistics vector
    ``[n, Σr, b = Σ r x, triu(Σ x xᵀ)]`` (float64; x as recorded, float32)."""
    x = np.asarray(x, dtype="<f4").astype(np.float64)
    d = x.shape[0]
    out = (np.zeros(HEADER + d + d * (d + 1) // 2) if stats is None
           else np.array(stats, dtype=np.float64))
    flat, _ = _tri_index(d)
    out[0] += 1
    out[1] += r
    out[HEADER:HEADER + d] += r * x
    out[HEADER + d:] += np.outer(x, x).ravel()[flat]
    return out


def shared_full(stats: np.ndarray | None, dim: int, lam: float) -> np.ndarray:
    """Summed shared statistics → the full float64 model vector ``[n, Σr, b, A⁻¹]`` with
    ``A = λI + Σ x xᵀ`` (what a global model is read as)."""
    if stats is None:
        return initial_arm(dim, lam)
    v = np.asarray(stats, dtype=np.float64)
    _, full = _tri_index(dim)
    xx = v[HEADER + dim:][full].reshape(dim, dim)
    ainv = np.linalg.inv(lam * np.eye(dim) + xx)
    return np.concatenate([v[:HEADER + dim], ainv.ravel()])


def shared_theta(models: list[bytes] | np.ndarray, dim: int) -> np.ndarray:
    """(K, D) θ = A⁻¹ b of full float64 model vectors (bytes or rows of an array)."""
    vs = np.stack([np.frombuffer(m, dtype="<f8") if isinstance(m, (bytes, bytearray))
                   else np.asarray(m, dtype=np.float64) for m in models])
    b = vs[:, HEADER:HEADER + dim]
    ainv = vs[:, HEADER + dim:].reshape(len(vs), dim, dim)
    return np.einsum("kij,kj->ki", ainv, b)


def initial_arm(dim: int, lam: float) -> np.ndarray:
    v = np.zeros(packed_len(dim))
    v[HEADER + dim:] = (np.eye(dim) / lam).ravel()
    return v


_INITIAL: dict[tuple[int, float], np.ndarray] = {}


def _initial_ro(dim: int, lam: float) -> np.ndarray:
    v = _INITIAL.get((dim, lam))
    if v is None:
        v = initial_arm(dim, lam)
        v.setflags(write=False)
        _INITIAL[(dim, lam)] = v
    return v


def unpack(blob: bytes | None, dim: int, lam: float) -> np.ndarray:
    """Full float64 vector of a stored arm (a shared read-only prior for an arm never
    updated, or one whose dimension changed: start afresh rather than crash)."""
    if not blob or len(blob) not in (tri_len(dim) * 4, packed_len(dim) * 8):
        return _initial_ro(dim, lam)
    return decode_arm(blob, dim, lam)


def pack(v: np.ndarray) -> bytes:
    return np.asarray(v, dtype="<f8").tobytes()


def split(v: np.ndarray, dim: int):
    """(n, reward_sum, b, A_inv) views of a packed arm vector."""
    return v[0], v[1], v[HEADER:HEADER + dim], v[HEADER + dim:].reshape(dim, dim)


def sherman_morrison_update(v: np.ndarray, x: np.ndarray, r: float) -> np.ndarray:
    """Reference (numpy) version of the Lua update: one reward r observed with features x."""
    dim = x.shape[0]
    out = np.array(v, dtype=np.float64, copy=True)
    n, rs, b, ainv = split(out, dim)
    u = ainv @ x
    denom = 1.0 + float(x @ u)
    ainv -= np.outer(u, u) / denom
    b += r * x
    out[0] = n + 1
    out[1] = rs + r
    return out



# ------------------------------------------------------------------ Thompson propensities

_SQRT2 = np.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / np.sqrt(2.0 * np.pi)
# Φ by Abramowitz & Stegun 26.2.17 (|error| < 7.5e-8): Φ(z) = 1 − φ(z)·P(t), t = 1/(1 + p|z|)
# for z ≥ 0 (mirrored below 0). It reuses φ(z), which the integrand needs anyway: one exp
# for both. Pure numpy (the scorer image carries no scipy).
_AS_P = 0.2316419
_AS_B = (0.319381530, -0.356563782, 1.781477937, -1.821255978, 1.330274429)
# panel breakpoints of every arm, in units of its own σ, and Gauss–Legendre nodes per panel
QUAD_BREAKS = np.array([-6.0, -3.0, -1.5, 0.0, 1.5, 3.0, 6.0])
QUAD_NODES = 3
_GL: dict[int, tuple[np.ndarray, np.ndarray]] = {}


def _pdf_cdf(z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(φ(z), Φ(z)) elementwise."""
    pdf = np.exp(-0.5 * z * z) * _INV_SQRT_2PI
    t = 1.0 / (1.0 + _AS_P * np.abs(z))
    poly = _AS_B[4]
    for c in _AS_B[3::-1]:
        poly = c + t * poly
    q = pdf * (t * poly)  # upper tail 1 − Φ(|z|)
    return pdf, np.where(z >= 0.0, 1.0 - q, q)


def norm_cdf(z: np.ndarray) -> np.ndarray:
    """Φ(z), vectorised (absolute error < 7.5e-8)."""
    return _pdf_cdf(np.asarray(z, dtype=np.float64))[1]


def _legendre(n: int) -> tuple[np.ndarray, np.ndarray]:
    g = _GL.get(n)
    if g is None:
        g = _GL[n] = np.polynomial.legendre.leggauss(n)
    return g


def thompson_probs(mean: np.ndarray, sd: np.ndarray, nodes: int = QUAD_NODES) -> np.ndarray:
    """P(arm a has the largest draw) for independent draws N(mean_a, sd_a²), every a
    (:func:`thompson_probs_numpy`'s rule; in C when it is built)."""
    if _hot is None:
        return thompson_probs_numpy(mean, sd, nodes)
    g, w = _legendre(nodes)
    return np.array(_hot.thompson_probs(np.ascontiguousarray(mean, dtype=np.float64),
                                        np.ascontiguousarray(sd, dtype=np.float64),
                                        QUAD_BREAKS, g, w))


def thompson_probs_numpy(mean: np.ndarray, sd: np.ndarray,
                         nodes: int = QUAD_NODES) -> np.ndarray:
    """P(arm a has the largest draw) for independent draws N(mean_a, sd_a²), every a.

    ``P_a = ∫ φ_a(x) Π_{b≠a} Φ_b(x) dx``, one integral over x for all arms at once:
    composite Gauss–Legendre (``nodes`` per panel) on panels whose breakpoints are
    ``μ_b + σ_b·{0, ±1.5, ±3, ±6}`` for every arm b, so each arm's density and step are
    resolved at their own scale (a plain Gauss–Hermite rule in arm a's variable is not:
    fine while the widths are within a few × of each other, as in the simulator, but with
    widths 10–300× apart it is off by up to ~1 percentage point even with 32–64 nodes,
    see ``bench/thompson_propensity.py``). Leave-one-out products by prefix/suffix cumprod;
    one (N, K) array of Φ with N ≤ (7K − 1)·nodes (panels below max_b(μ_b − 6σ_b), where
    the integrand is < 1e-9, are dropped). Against adaptive quadrature (scipy ``quad``) on
    63 posteriors with widths up to 500× apart the error is < 1e-4 with 3 nodes (< 2e-6
    with 4); the result is renormalised (its mass before that is 1 within ~1e-3).
    """
    mean = np.asarray(mean, dtype=np.float64)
    sd = np.maximum(np.asarray(sd, dtype=np.float64), 1e-12)
    k = mean.shape[0]
    if k == 1:
        return np.ones(1)
    g, w = _legendre(nodes)
    br = np.sort((mean[:, None] + sd[:, None] * QUAD_BREAKS).ravel())
    # below max_b(μ_b − 6σ_b) some Φ_b (or, for a = b, φ_b) is < 1e-9: nothing to integrate
    br = br[br >= np.max(mean - QUAD_BREAKS[-1] * sd)]
    half = 0.5 * np.diff(br)
    x = ((br[:-1] + half)[:, None] + half[:, None] * g).ravel()
    wx = (half[:, None] * w).ravel()
    z = (x[:, None] - mean) / sd                                   # (N, K)
    pdf, cdf = _pdf_cdf(z)
    pdf = pdf / sd
    pre = np.cumprod(cdf, axis=1)
    suf = np.cumprod(cdf[:, ::-1], axis=1)[:, ::-1]
    loo = np.empty_like(cdf)                                       # Π_{b≠a} Φ_b(x)
    loo[:, 0] = suf[:, 1]
    loo[:, -1] = pre[:, -2]
    loo[:, 1:-1] = pre[:, :-2] * suf[:, 2:]
    p = np.clip(wx @ (pdf * loo), 0.0, None)
    s = p.sum()
    return p / s if s > 0 else np.full(k, 1.0 / k)


def update_id(feature_version: str, lam: float) -> str:
    """What enters the reward update of a policy: its feature set (version fixes the
    dimension and meaning of x) and the ridge λ (the initial state A = λI). The scorer
    writes it per learner into the decision record; the reward update refuses a decision
    whose signature differs from the updater's (``hyper_mismatch``)."""
    return f"{feature_version}/lambda={float(lam)!r}"


@dataclass(slots=True)  # not frozen: a frozen dataclass's __init__ costs 3× (issue 12)
class Choice:
    arm: str
    index: int
    propensity: float
    explored: bool
    scores: dict[str, float]


@dataclass(frozen=True)
class Policy:
    name: str
    kind: str  # egreedy | linucb | thompson
    features: FeatureSet
    lam: float = 1.0
    epsilon: float = 0.1
    alpha: float = 0.5
    v: float = 0.3
    samples: int = 256
    propensity: str = "exact"  # thompson: exact (Gauss–Hermite) | mc (M draws, the former way)
    quad_nodes: int = QUAD_NODES
    global_model: bool = False
    pooled: bool = False      # per-user model shrunk toward a shared one (lam = λ_p)
    shared_lam: float = 1.0   # pooled: ridge λ_s of the shared model
    extra: dict = field(default_factory=dict)

    @property
    def dim(self) -> int:
        return self.features.dim

    @cached_property
    def version(self) -> str:
        p = {"egreedy": f"eps={self.epsilon:g}", "linucb": f"alpha={self.alpha:g}",
             "thompson": (f"v={self.v:g},m={self.samples}" if self.propensity == "mc"
                          else f"v={self.v:g},p=exact")}[self.kind]
        if self.pooled:
            p += f",pooled,shared_lambda={self.shared_lam:g}"
        return f"{self.name}/{self.kind}/{self.features.version}/{p},lambda={self.lam:g}"

    @property
    def global_lam(self) -> float:
        """The ridge λ a global / shared model is read with."""
        return self.shared_lam if self.pooled else self.lam

    @property
    def has_shared(self) -> bool:
        """Whether rewards also feed sharded global statistics (global or pooled)."""
        return self.global_model or self.pooled

    @cached_property
    def update_id(self) -> str:
        return update_id(self.features.version, self.lam)

    @cached_property
    def _initial_bytes(self) -> bytes:
        return encode_arm(initial_arm(self.dim, self.lam), self.dim)

    @cached_property
    def _initial_full(self) -> bytes:
        return pack(initial_arm(self.dim, self.lam))

    def _rows(self, blobs: list[bytes | None]) -> tuple[bool, list[bytes]]:
        """(stored layout?, one row of bytes per arm) as :meth:`stack` reads them: when any
        blob is layout 2 every row is layout 2 (a layout-1 blob converted, a missing one
        the prior in float32); otherwise every row is the full float64 vector."""
        d = self.dim
        n2, n1 = tri_len(d) * 4, packed_len(d) * 8
        if None not in blobs and set(map(len, blobs)) == {n2}:  # the usual case, in C
            return True, blobs
        if not any(b and len(b) == n2 for b in blobs):
            init = self._initial_full
            return False, [b if b and len(b) == n1 else init for b in blobs]
        init = self._initial_bytes
        parts = []
        for b in blobs:
            if b and len(b) == n2:
                parts.append(b)
            elif b and len(b) == n1:
                parts.append(encode_arm(np.frombuffer(b, dtype="<f8"), d))
            else:
                parts.append(init)
        return True, parts

    def stack(self, blobs: list[bytes | None]):
        """(K, packed) models of the arms, b (K, D) and A⁻¹ (K, D, D): the blobs are joined
        and read once (cheaper than K small arrays stacked). Stored float32 blobs (layout
        2) have A⁻¹ expanded from its upper triangle with one gather; float64 full
        vectors (layout 1: the simulator's in-memory models, or not yet rewritten keys)
        are read as they are when no blob is layout 2, else converted one by one."""
        stored, parts = self._rows(blobs)
        return _unpack_rows(stored, parts, self.dim)

    def _model(self, blobs, prior):
        """(b, A⁻¹) per arm; a pooled policy adds λ_p θ_s to b (prior: (K, D) θ_s)."""
        b, ainv = _models(*self._rows(blobs), self.dim)  # as choose_many reads them
        if self.pooled and prior is not None:
            b = b + self.lam * np.asarray(prior, dtype=np.float64)
        return b, ainv

    def arm_stats(self, blobs: list[bytes | None], x: np.ndarray, prior=None,
                  want_ux: bool = True) -> tuple[list[float], list[float] | None]:
        """(θ·x per arm, xᵀA⁻¹x per arm or None) as plain floats: in C
        (``tipsml._hot.arm_stats``) when it is built, else :meth:`arm_stats_numpy`."""
        if _hot is not None and type(x) is np.ndarray and x.dtype == np.float64 \
                and self.dim <= _HOT_MAXD:
            pr = None
            if self.pooled and prior is not None:
                pr = np.ascontiguousarray(prior, dtype=np.float64)
            try:
                return _hot.arm_stats(blobs if type(blobs) is list else list(blobs),
                                      x if x.flags.c_contiguous else np.ascontiguousarray(x),
                                      self.lam, want_ux, pr, self.lam)
            except TypeError:  # rows of another type (bytearray, arrays): numpy reads them
                pass
        return self.arm_stats_numpy(blobs, x, prior, want_ux)

    def arm_stats_numpy(self, blobs, x, prior=None, want_ux: bool = True):
        b, ainv = self._model(blobs, prior)
        u = ainv @ x                      # (K, D): A⁻¹x per arm
        mean = _vecdot(u, b).tolist()     # θ·x = xᵀA⁻¹b (A⁻¹ symmetric)
        return mean, (_vecdot(u, x).tolist() if want_ux else None)

    def choose(self, arms: list[str], blobs: list[bytes | None], x: np.ndarray,
               rng: np.random.Generator, prior: np.ndarray | None = None) -> Choice:
        mean, ux = self.arm_stats(blobs, x, prior, self.kind != "egreedy")
        return self.pick(arms, mean, ux, rng)

    def pick(self, arms: list[str], mean: list[float], ux: list[float] | None,
             rng: np.random.Generator) -> Choice:
        """The choice from the arms' means θ·x and (LinUCB, Thompson) xᵀA⁻¹x, as plain
        floats: K is small, and the float operations below are the ones numpy did
        elementwise (same values; ε-greedy and LinUCB need no numpy call then)."""
        # a draw among one candidate is skipped: numpy draws nothing for a range of one
        # (``integers(1)`` leaves the generator as it was), so the sequence is unchanged
        k = len(arms)
        if _HOT_PICK and self.kind != "thompson" and type(rng) is np.random.Generator \
                and type(mean) is list and len(mean) == k:
            # the same operations and draws in C (tipsml._hot.pick; checked at import). The
            # generator is not locked as numpy's own methods lock it: one thread per
            # generator (the scorer's loop), as everywhere in this project
            lin = self.kind == "linucb"
            try:
                idx, p, explored, scores = _hot.pick(
                    lin, mean, ux, self.alpha if lin else self.epsilon, rng.bit_generator.capsule)
            except TypeError:  # not plain floats (a caller's arrays): the Python pick below
                pass
            else:
                return Choice(arms[idx], idx, min(p, 1.0), explored,
                              dict(zip(arms, mean if scores is None else scores)))
        if self.kind == "egreedy":
            ms = mean
            cut = max(ms) - TIE_TOL
            greedy = [i for i, m in enumerate(ms) if m >= cut]
            explored = rng.random() < self.epsilon
            if explored:
                idx = int(rng.integers(k))
            else:
                idx = greedy[0] if len(greedy) == 1 else greedy[int(rng.integers(len(greedy)))]
            p = self.epsilon / k + ((1.0 - self.epsilon) / len(greedy) if idx in greedy else 0.0)
            explored = bool(explored)
            scores = ms
        elif self.kind == "linucb":
            a, sqrt = self.alpha, math.sqrt
            scores = [m + a * sqrt(max(w, 0.0)) for m, w in zip(mean, ux)]
            cut = max(scores) - TIE_TOL
            top = [i for i, v in enumerate(scores) if v >= cut]
            idx = top[0] if len(top) == 1 else top[int(rng.integers(len(top)))]
            p = 1.0 / len(top)
            explored = bool(mean[idx] < max(mean) - TIE_TOL)
        elif self.kind == "thompson":
            mean, ux = np.array(mean, dtype=np.float64), np.array(ux, dtype=np.float64)
            sd = self.v * np.sqrt(np.maximum(ux, 0.0))
            draw = mean + sd * rng.standard_normal(k)
            idx = int(np.argmax(draw))
            if self.propensity == "mc":
                m = self.samples
                sims = mean + sd * rng.standard_normal((m, k))
                counts = np.bincount(np.argmax(sims, axis=1), minlength=k)
                p = max(counts[idx] / m, 1.0 / (m + 1))
            else:
                p = max(float(thompson_probs(mean, sd, self.quad_nodes)[idx]), 1e-12)
            explored = bool(mean[idx] < mean.max() - TIE_TOL)
            scores = mean
        else:  # pragma: no cover - guarded by build_policies
            raise ValueError(self.kind)
        if not isinstance(scores, list):
            scores = scores.tolist()
        return Choice(arms[idx], idx, float(min(p, 1.0)), explored, dict(zip(arms, scores)))

    def selection_probs(self, arms: list[str], blobs: list[bytes | None], x: np.ndarray,
                        rng: np.random.Generator | None = None,
                        prior: np.ndarray | None = None) -> np.ndarray:
        """Full distribution over arms (for off-policy evaluation)."""
        k = len(arms)
        mean, ux = self.arm_stats(blobs, x, prior, self.kind != "egreedy")
        mean = np.array(mean)
        if self.kind == "egreedy":
            greedy = np.flatnonzero(mean >= mean.max() - TIE_TOL)
            p = np.full(k, self.epsilon / k)
            p[greedy] += (1.0 - self.epsilon) / len(greedy)
            return p
        ux = np.array(ux)
        if self.kind == "linucb":
            s = mean + self.alpha * np.sqrt(np.maximum(ux, 0.0))
            top = np.flatnonzero(s >= s.max() - TIE_TOL)
            p = np.zeros(k)
            p[top] = 1.0 / len(top)
            return p
        sd = self.v * np.sqrt(np.maximum(ux, 0.0))
        if self.propensity != "mc":
            return thompson_probs(mean, sd, self.quad_nodes)
        rng = rng or np.random.default_rng(0)
        sims = mean + sd * rng.standard_normal((max(self.samples, 1024), k))
        return np.bincount(np.argmax(sims, axis=1), minlength=k) / sims.shape[0]


def _unpack_rows(stored: bool, parts: list[bytes], d: int):
    """(rows, b, A⁻¹) of joined arm rows (layout 2 float32, or full float64 vectors)."""
    n = len(parts)
    if not stored:
        vs = np.frombuffer(b"".join(parts), dtype="<f8").reshape(n, -1)
        return vs, vs[:, HEADER:HEADER + d], vs[:, HEADER + d:].reshape(n, d, d)
    t = np.frombuffer(b"".join(parts), dtype="<f4").reshape(n, -1).astype(np.float64)
    _, full = _tri_index(d)
    return t, t[:, HEADER:HEADER + d], t[:, HEADER + d:][:, full].reshape(n, d, d)


_GATHER: dict[tuple[int, int, bool], np.ndarray] = {}


def _gather_index(n: int, d: int, stored: bool) -> np.ndarray:
    """(n, D + D·D) flat positions, in ``n`` joined rows, of each row's b then its full
    A⁻¹ (expanded from the upper triangle when ``stored``): one ``take`` reads both."""
    key = (n, d, stored)
    idx = _GATHER.get(key)
    if idx is None:
        if stored:
            _, full = _tri_index(d)
            row, width = np.concatenate([np.arange(HEADER, HEADER + d), HEADER + d + full]), \
                tri_len(d)
        else:
            row, width = np.arange(HEADER, packed_len(d)), packed_len(d)
        idx = (np.arange(n)[:, None] * width + row[None, :]).astype(np.intp)
        if len(_GATHER) < 4096:  # a handful of (arms x policies, D) shapes in practice
            _GATHER[key] = idx
    return idx


def _models(stored: bool, parts: list[bytes], d: int) -> tuple[np.ndarray, np.ndarray]:
    """(b (n, D), A⁻¹ (n, D, D)) of joined arm rows, float64, with one gather."""
    n = len(parts)
    flat = np.frombuffer(b"".join(parts), dtype="<f4" if stored else "<f8")
    g = flat.take(_gather_index(n, d, stored))
    if stored:
        g = g.astype(np.float64)
    return g[:, :d], g[:, d:].reshape(n, d, d)


# row-wise dot products (numpy >= 2: a gufunc, one C call; each row summed by the same
# inner loop whatever the batch's size, so a policy's scores do not depend on which
# other policies shared its pass)
_vecdot = getattr(np, "vecdot", None) or (lambda a, b: np.einsum("...d,...d->...", a, b))


def choose_many(pols: list[Policy], arms: list[str], blobs: list[list[bytes | None]],
                xs: list[np.ndarray], rng: np.random.Generator,
                priors: list | None = None) -> list[Choice]:
    """``[p.choose(arms, b, x, rng, prior) for ...]``, the same choices (the same numbers
    up to the last bit of a sum taken in another order, the same draws from ``rng`` in the
    same order) with the per-arm maths of every policy sharing a feature vector done in
    one numpy pass: the arms of those policies are stacked into one (P·K, D, D) batch, so a
    request with shadows costs about as many numpy calls as one policy did — a dozen C
    calls per pass (one gather for b and A⁻¹, matmul, vecdot; no Python-level numpy
    wrapper: issue 12, round 3). A pooled policy with a prior (its b shifted by λθ_s) is
    computed on its own, as :meth:`Policy.choose` does. With the C part built, each
    policy's arms are one C call (:meth:`Policy.arm_stats`), which is what
    :meth:`Policy.choose` does too."""
    if _hot is not None:
        out = []
        for i in range(len(pols)):
            p = pols[i]
            mean, ux = p.arm_stats(blobs[i], xs[i], priors[i] if priors else None,
                                   p.kind != "egreedy")
            out.append(p.pick(arms, mean, ux, rng))
        return out
    k = len(arms)
    n_p = len(pols)
    groups: dict[tuple, list[int]] = {}
    rows: list = [None] * n_p
    means: list = [None] * n_p
    uxs: list = [None] * n_p
    for i in range(n_p):
        p, x = pols[i], xs[i]
        if p.pooled and priors and priors[i] is not None:
            b, ainv = p._model(blobs[i], priors[i])
            u = ainv @ x
            means[i] = _vecdot(u, b).tolist()
            uxs[i] = None if p.kind == "egreedy" else _vecdot(u, x).tolist()
            continue
        stored, rows[i] = p._rows(blobs[i])
        key = (id(x), p.dim, stored)
        g = groups.get(key)
        if g is None:
            groups[key] = [i]
        else:
            g.append(i)
    for (_, d, stored), idx in groups.items():
        x = xs[idx[0]]
        b, ainv = _models(stored, rows[idx[0]] if len(idx) == 1 else
                          [r for i in idx for r in rows[i]], d)
        u = ainv @ x                       # (P·K, D): A⁻¹x per arm
        mean = _vecdot(u, b).tolist()      # θ·x = bᵀA⁻¹x (A⁻¹ symmetric)
        ux = None
        for i in idx:
            if pols[i].kind != "egreedy":
                ux = _vecdot(u, x).tolist()  # xᵀA⁻¹x (per row: the same bits at any batch size)
                break
        if len(idx) == 1:
            means[idx[0]], uxs[idx[0]] = mean, ux
            continue
        for j, i in enumerate(idx):
            means[i] = mean[j * k:(j + 1) * k]
            uxs[i] = None if ux is None else ux[j * k:(j + 1) * k]
    return [pols[i].pick(arms, means[i], uxs[i], rng) for i in range(n_p)]


POLICY_KINDS = {
    "egreedy-v1": ("egreedy", FS_CTX),
    "egreedy-v2": ("egreedy", FS_CTX_PROFILE_V2),  # log-scaled dwell (features.py)
    "linucb": ("linucb", FS_CTX),
    "linucb-v2": ("linucb", FS_CTX_PROFILE),
    "thompson": ("thompson", FS_CTX),
    "thompson-v2": ("thompson", FS_CTX_PROFILE),
    # learn across users: per-user models shrunk toward a shared model (module doc)
    "egreedy-pooled": ("egreedy", FS_CTX_PROFILE_V2),
    "linucb-pooled": ("linucb", FS_CTX_PROFILE_V2),
    "thompson-pooled": ("thompson", FS_CTX_PROFILE_V2),
}
POOLED_POLICIES = frozenset({"egreedy-pooled", "linucb-pooled", "thompson-pooled"})
POOLED_LAMBDA = 50.0  # default strength λ_p of the shared prior (settings: POOLED_LAMBDA)


def policy_lambda(name: str, lam: float, pooled_lambda: float = POOLED_LAMBDA) -> float:
    """The ridge λ of a policy's per-user state: λ_p for a pooled policy, else λ."""
    return pooled_lambda if name in POOLED_POLICIES else lam


def build_policies(settings) -> dict[str, Policy]:
    """The policy registry, parameterised from settings (one entry per policy name)."""
    out = {}
    plam = getattr(settings, "pooled_lambda", POOLED_LAMBDA)
    for name, (kind, fs) in POLICY_KINDS.items():
        pooled = name in POOLED_POLICIES
        out[name] = Policy(
            name=name, kind=kind, features=fs,
            lam=policy_lambda(name, settings.ridge_lambda, plam),
            epsilon=getattr(settings, "pooled_epsilon", settings.epsilon) if pooled
            else settings.epsilon,
            alpha=getattr(settings, "pooled_alpha", settings.linucb_alpha) if pooled
            else settings.linucb_alpha,
            v=getattr(settings, "pooled_v", settings.thompson_v) if pooled else settings.thompson_v,
            samples=settings.thompson_samples,
            propensity=getattr(settings, "thompson_propensity", "exact"),
            global_model=name in settings.global_policies and not pooled,
            pooled=pooled, shared_lam=settings.ridge_lambda,
        )
    return out
