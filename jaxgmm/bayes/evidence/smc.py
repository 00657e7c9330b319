"""``smc``: adaptive tempered sequential Monte Carlo for log p(X).

The targets pi_b(u) ∝ p(X | theta(u))^b p(theta(u)) |J(u)| for 0 = b_0 < ... < b_T = 1 in
NumPyro's unconstrained space u (Jacobian included), started from exact prior draws.
Each stage picks the next b by bisection so that the effective sample size of the
incremental weights p(X | theta)^(b' - b) is ``target_ess`` of the particles (the
conditional ESS of Zhou, Johansen and Aston 2016; after resampling every stage the
weights are equal, so CESS = ESS), adds log mean of those weights to log Z (Del Moral,
Doucet and Jasra 2006), resamples systematically, and moves every particle with random-walk
Metropolis steps whose proposal is the particles' covariance, scaled by a factor adapted
to the previous stage's acceptance rate (the scheme of PyMC's SMC, Ching and Chen 2007).

No label-symmetry correction is needed, unlike an importance sampler built on one mode:
the particles start from the (label-symmetric) prior and the sampler estimates the
normalising constant of the whole posterior, all K! relabelled modes included; whether
the particles end up in one mode or spread over several does not bias log Z, because the
incremental weights are label-invariant.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import logsumexp

from jaxgmm._cache import BoundedCache
from jaxgmm.bayes.evidence._common import LogEvidence, prepare, raw_key
from jaxgmm.bayes.evidence._sites import SiteLayout, map_points
from jaxgmm.fit.validation import check_int, check_positive
from jaxgmm.model.linalg import cholesky, triangular_solve

_COMPILED = BoundedCache(8)
# Acceptance rate the proposal scale is steered towards (Roberts, Gelman and Gilks 1997).
_TARGET_ACCEPTANCE = {"rw": 0.234, "hmc": 0.65}  # HMC's: Beskos et al. 2013
_BISECTION_STEPS = 60
KERNELS = ("rw", "hmc")
# Moves per stage when n_mh_steps is not given: an HMC move costs n_leapfrog + 1
# gradient evaluations, a random-walk step one density evaluation.
DEFAULT_MOVES = {"rw": 40, "hmc": 4}


class SMCState(NamedTuple):
    """The particle systems of R independent runs, P particles of dimension d each."""

    u: jax.Array  # (R, P, d) particles
    log_prior: jax.Array  # (R, P) log p(theta(u)) + log |J(u)|
    log_lik: jax.Array  # (R, P) log p(X | theta(u)), a total
    beta: jax.Array  # (R,) current temperature
    log_z: jax.Array  # (R,) running log-evidence estimate
    scale: jax.Array  # (R,) random-walk scale (times the particle covariance's Cholesky)


class SMCStageInfo(NamedTuple):
    """Per stage and run."""

    ess: jax.Array  # (R,) ESS of the incremental weights / P
    acceptance: jax.Array  # (R,) mean Metropolis acceptance of the stage's moves
    frame_changes: jax.Array  # (R,) share of HMC proposals refused for a relabelling (rw: 0)


def _ess_fraction(log_w):
    """(sum w)^2 / sum w^2 / len(w) of log weights."""
    return jnp.exp(2 * logsumexp(log_w) - logsumexp(2 * log_w)) / log_w.shape[0]


def _next_delta(log_lik, beta, target_ess):
    """The temperature step: 1 - beta if its ESS is >= target_ess, else found by bisection
    on ESS(delta) = target_ess (ESS falls as delta grows)."""
    remaining = 1 - beta

    def body(_, bounds):
        lo, hi = bounds
        mid = (lo + hi) / 2
        ok = _ess_fraction(mid * log_lik) >= target_ess
        return jnp.where(ok, mid, lo), jnp.where(ok, hi, mid)

    lo, hi = jax.lax.fori_loop(0, _BISECTION_STEPS, body, (jnp.zeros_like(beta), remaining))
    bisected = jnp.maximum((lo + hi) / 2, jnp.finfo(beta.dtype).tiny)
    full_ok = _ess_fraction(remaining * log_lik) >= target_ess
    return jnp.where(full_ok | (remaining <= 0), remaining, bisected)


def _systematic_resample(key, log_w):
    """(P,) ancestor indices by systematic resampling (Kitagawa 1996)."""
    n = log_w.shape[0]
    cdf = jnp.cumsum(jnp.exp(log_w - logsumexp(log_w)))
    positions = (jax.random.uniform(key, (), log_w.dtype) + jnp.arange(n, dtype=log_w.dtype)) / n
    return jnp.minimum(jnp.searchsorted(cdf, positions), n - 1)


class _Runner:
    """The three compiled pieces of a batch of SMC runs (host loop over stages: one
    while_loop holding everything compiled about three times slower)."""

    def __init__(self, layout, n_particles, n_mh_steps, target_ess, kernel="rw", n_leapfrog=10):
        self.layout, self.n_particles = layout, n_particles
        self.n_mh_steps, self.target_ess = n_mh_steps, target_ess
        self.kernel, self.n_leapfrog = kernel, n_leapfrog
        self.init = jax.jit(self._init)
        self.stage = jax.jit(self._stage)

    def _evaluate_all(self, u, x):
        """(log prior + log |J|, log-likelihood) of particles u (..., d), one at a time."""
        layout = self.layout

        def one(ui):
            sites, log_det = layout.from_unconstrained(ui)
            lp = layout.log_prior(sites) + log_det
            ll = layout.log_likelihood(sites, x)
            bad = jnp.isnan(lp) | jnp.isnan(ll)
            return jnp.where(bad, -jnp.inf, lp), jnp.where(bad, -jnp.inf, ll)

        lead = u.shape[:-1]
        lp, ll = map_points(one, u.reshape((-1, u.shape[-1])))
        return lp.reshape(lead), ll.reshape(lead)

    def _init(self, keys, x):
        layout, p = self.layout, self.n_particles
        dtype, d = layout.dtype, layout.n_unconstrained
        draw_keys = jax.vmap(lambda k: jax.random.split(k, p))(keys).reshape(-1, keys.shape[-1])
        u = map_points(lambda k: layout.to_unconstrained(layout.sample_prior(k)), draw_keys)
        u = u.reshape((keys.shape[0], p, d))
        lp, ll = self._evaluate_all(u, x)
        r = keys.shape[0]
        return SMCState(
            u=u, log_prior=lp, log_lik=ll, beta=jnp.zeros((r,), dtype),
            log_z=jnp.zeros((r,), dtype),
            # RW: Roberts-Gelman-Gilks' 2.38 / sqrt(d); HMC: a step of order d^(-1/4)
            # in whitened coordinates (Beskos et al. 2013). Both adapt per stage.
            scale=jnp.full((r,), self._initial_scale(d), dtype),
        )  # fmt: skip

    def _initial_scale(self, d):
        d = max(d, 1)
        return 2.38 / math.sqrt(d) if self.kernel == "rw" else d**-0.25

    def _stage(self, key, state, x):
        p, dtype = self.n_particles, self.layout.dtype
        d, r = state.u.shape[-1], state.u.shape[0]
        key_resample, key_move = jax.random.split(key)
        delta = jax.vmap(_next_delta, (0, 0, None))(state.log_lik, state.beta, self.target_ess)
        # A finished run (delta = 0) keeps equal weights, even at a particle with ll = -inf.
        log_w = jnp.where(delta[:, None] > 0, delta[:, None] * state.log_lik, 0.0)
        log_z = state.log_z + logsumexp(log_w, axis=1) - math.log(p)
        ess = jax.vmap(_ess_fraction)(log_w)
        beta = jnp.where(delta >= 1 - state.beta, 1.0, state.beta + delta).astype(dtype)
        ancestors = jax.vmap(_systematic_resample)(jax.random.split(key_resample, r), log_w)
        take = jax.vmap(lambda a, i: a[i])
        u, lp, ll = (
            take(state.u, ancestors),
            take(state.log_prior, ancestors),
            take(state.log_lik, ancestors),
        )
        # The proposal lives in each particle's canonical frame (components ordered by
        # their first mean coordinate): a label-symmetric cloud spans K! relabelled
        # modes, whose joint covariance is the spread between modes, not within one.
        canonical = jax.vmap(jax.vmap(self.layout.canonical_index))
        gather = jax.vmap(jax.vmap(lambda v, i: v[i]))
        u_canon = gather(u, canonical(u))
        centred = u_canon - u_canon.mean(axis=1, keepdims=True)
        cov = jnp.einsum("rpd,rpe->rde", centred, centred) / p
        jitter = 1e-9 * (jnp.trace(cov, axis1=1, axis2=2) / d + 1.0)
        chol = cholesky(cov + jitter[:, None, None] * jnp.eye(d, dtype=dtype))
        eye = jnp.broadcast_to(jnp.eye(d, dtype=dtype), chol.shape)
        inv_chol = triangular_solve(chol, eye, left_side=True, lower=True)
        if self.kernel == "hmc":
            u, lp, ll, acceptance, frame_changes = self._hmc_moves(
                key_move, u, lp, ll, beta, chol, inv_chol, state.scale, x
            )
        else:
            u, lp, ll, acceptance = self._rw_moves(
                key_move, u, lp, ll, beta, chol, inv_chol, state.scale, x
            )
            frame_changes = jnp.zeros_like(acceptance)
        target = _TARGET_ACCEPTANCE[self.kernel]
        scale = jnp.clip(state.scale * jnp.exp(acceptance - target), 1e-3, 10.0)
        new = SMCState(u=u, log_prior=lp, log_lik=ll, beta=beta, log_z=log_z, scale=scale)
        return new, SMCStageInfo(ess=ess, acceptance=acceptance, frame_changes=frame_changes)

    def _rw_moves(self, key_move, u, lp, ll, beta, chol, inv_chol, scale, x):
        """``n_mh_steps`` random-walk Metropolis steps of every particle, proposal
        N(0, scale^2 cov) in the particle's canonical frame; (u, lp, ll, acceptance)."""
        dtype, r = self.layout.dtype, u.shape[0]
        canonical = jax.vmap(jax.vmap(self.layout.canonical_index))
        inverse = jax.vmap(jax.vmap(lambda v: self.layout.canonical_index(v, inverse=True)))
        gather = jax.vmap(jax.vmap(lambda v, i: v[i]))
        step_scale = scale[:, None, None]

        def log_q(step, index):
            """log N(step in the frame of ``index``; 0, scale^2 cov) up to a constant."""
            z = jnp.einsum("rde,rpe->rpd", inv_chol, gather(step, index)) / step_scale
            return -0.5 * jnp.sum(z * z, axis=-1)

        def move(i, carry):
            u, lp, ll, accepted = carry
            key_z, key_a = jax.random.split(jax.random.fold_in(key_move, i))
            z = jax.random.normal(key_z, u.shape, dtype)
            index = canonical(u)
            step_canon = step_scale * jnp.einsum("rpe,rde->rpd", z, chol)
            # Back from the canonical frame: step[index] = step_canon.
            step = gather(step_canon, inverse(u))
            proposal = u + step
            # Hastings correction: the reverse move is drawn in the proposal's own frame.
            log_hastings = log_q(-step, canonical(proposal)) - log_q(step, index)
            lp_new, ll_new = self._evaluate_all(proposal, x)
            log_ratio = (lp_new + beta[:, None] * ll_new) - (lp + beta[:, None] * ll)
            log_ratio = log_ratio + log_hastings
            log_ratio = jnp.where(jnp.isnan(log_ratio), -jnp.inf, log_ratio)
            accept = jnp.log(jax.random.uniform(key_a, lp.shape, dtype)) < log_ratio
            return (
                jnp.where(accept[..., None], proposal, u),
                jnp.where(accept, lp_new, lp),
                jnp.where(accept, ll_new, ll),
                accepted + jnp.mean(accept.astype(dtype), axis=1),
            )

        u, lp, ll, accepted = jax.lax.fori_loop(
            0, self.n_mh_steps, move, (u, lp, ll, jnp.zeros((r,), dtype))
        )
        return u, lp, ll, accepted / self.n_mh_steps

    def _hmc_moves(self, key_move, u, lp, ll, beta, chol, inv_chol, scale, x):
        """``n_mh_steps`` HMC moves of every particle (``n_leapfrog`` leapfrog steps, step
        size ``scale`` jittered by +-20%), in whitened coordinates v = L^-1 u_c of the
        particle's canonical frame u_c (L: the cloud's Cholesky factor there, i.e. mass
        matrix cov^-1). A proposal whose canonical frame differs from its start's is
        refused: the frame fixes the map u -> v, and only with the same frame at both ends
        is the move its own inverse (an involution), as Metropolis-Hastings needs.
        Returns (u, lp, ll, acceptance, frame_changes), the last two per run."""
        layout, dtype = self.layout, self.layout.dtype
        r, p, d = u.shape
        n_leapfrog = self.n_leapfrog

        def one(args):
            key, u0, lp0, ll0, beta_r, chol_r, inv_chol_r, eps_r = args
            index = layout.canonical_index(u0)
            back = layout.canonical_index(u0, inverse=True)

            def u_of(v):
                return (chol_r @ v)[back]

            def log_target(v):
                sites, log_det = layout.from_unconstrained(u_of(v))
                lp_v = layout.log_prior(sites) + log_det
                ll_v = layout.log_likelihood(sites, x)
                return lp_v + beta_r * ll_v, (lp_v, ll_v)

            grad_fn = jax.value_and_grad(log_target, has_aux=True)
            key_p, key_eps, key_a = jax.random.split(key, 3)
            eps = eps_r * jax.random.uniform(key_eps, (), dtype, 0.8, 1.2)
            v0 = inv_chol_r @ u0[index]
            m0 = jax.random.normal(key_p, (d,), dtype)
            (t0, _), g0 = grad_fn(v0)

            def leapfrog(_, carry):
                v, m, g, _t, _aux = carry
                m = m + 0.5 * eps * g
                v = v + eps * m
                (t, aux), g = grad_fn(v)
                m = m + 0.5 * eps * g
                return v, m, g, t, aux

            v1, m1, _, t1, (lp1, ll1) = jax.lax.fori_loop(
                0, n_leapfrog, leapfrog, (v0, m0, g0, t0, (lp0, ll0))
            )
            u1 = u_of(v1)
            same_frame = jnp.all(layout.canonical_index(u1) == index)
            log_ratio = (t1 - 0.5 * m1 @ m1) - (t0 - 0.5 * m0 @ m0)
            log_ratio = jnp.where(jnp.isfinite(log_ratio) & same_frame, log_ratio, -jnp.inf)
            accept = jnp.log(jax.random.uniform(key_a, (), dtype)) < log_ratio
            return (
                jnp.where(accept, u1, u0), jnp.where(accept, lp1, lp0),
                jnp.where(accept, ll1, ll0), accept.astype(dtype),
                (~same_frame).astype(dtype),
            )  # fmt: skip

        per_particle = lambda a: jnp.repeat(a, p, axis=0)  # noqa: E731  (R, ...) -> (R*P, ...)

        def move(i, carry):
            u, lp, ll, accepted, changed = carry
            keys = jax.random.split(jax.random.fold_in(key_move, i), r * p)
            out = jax.lax.map(one, (
                keys, u.reshape(r * p, d), lp.reshape(-1), ll.reshape(-1),
                per_particle(beta), per_particle(chol), per_particle(inv_chol),
                per_particle(scale),
            ))  # fmt: skip
            u_new, lp_new, ll_new, acc, frame = out
            return (
                u_new.reshape(r, p, d), lp_new.reshape(r, p), ll_new.reshape(r, p),
                accepted + acc.reshape(r, p).mean(axis=1),
                changed + frame.reshape(r, p).mean(axis=1),
            )  # fmt: skip

        zeros = jnp.zeros((r,), dtype)
        u, lp, ll, accepted, changed = jax.lax.fori_loop(
            0, self.n_mh_steps, move, (u, lp, ll, zeros, zeros)
        )
        return u, lp, ll, accepted / self.n_mh_steps, changed / self.n_mh_steps


class SMCRun(NamedTuple):
    """Outcome of `run_smc`: the final particles at temperature 1 (equally weighted, just
    moved) and what the stages recorded."""

    state: SMCState
    layout: SiteLayout
    n_stages: np.ndarray  # (R,) stages per run
    betas: list  # run 0's temperature ladder
    ess: np.ndarray  # every stage's incremental-weight ESS / P, all runs
    acceptance: np.ndarray  # every stage's mean acceptance, all runs
    frame_changes: np.ndarray  # every stage's share of HMC proposals refused for a relabelling


def check_smc_options(n_particles, n_runs, n_mh_steps, target_ess, max_stages, kernel,
                      n_leapfrog):  # fmt: skip
    """The options of `run_smc`, checked; n_mh_steps None -> the kernel's default."""
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {list(KERNELS)}, got {kernel!r}")
    n_mh_steps = DEFAULT_MOVES[kernel] if n_mh_steps is None else n_mh_steps
    target_ess = check_positive(target_ess, "target_ess")
    if not target_ess < 1:
        raise ValueError(f"target_ess must be in (0, 1), got {target_ess}")
    return dict(
        n_particles=check_int(n_particles, "n_particles", 2),
        n_runs=check_int(n_runs, "n_runs", 2),
        n_mh_steps=check_int(n_mh_steps, "n_mh_steps", 1),
        target_ess=float(target_ess),
        max_stages=check_int(max_stages, "max_stages", 1),
        kernel=kernel,
        n_leapfrog=check_int(n_leapfrog, "n_leapfrog", 1),
    )


def run_smc(key, x, spec, *, n_particles, n_runs, n_mh_steps, target_ess, max_stages, kernel,
            n_leapfrog, progress=None) -> SMCRun:  # fmt: skip
    """R independent tempered SMC runs from the prior to the posterior of ``spec`` given
    ``x`` (already prepared: `prepare`; options checked: `check_smc_options`).
    ``progress(run_0_beta)``, if given, is called after every stage."""
    layout = SiteLayout(spec.prior, spec, x.shape[1], x.dtype)
    cache_key = (spec, x.shape[1], jnp.dtype(x.dtype).name, n_particles, n_mh_steps,
                 target_ess, kernel, n_leapfrog)  # fmt: skip
    runner = _COMPILED.get(cache_key)
    if runner is None:
        runner = _COMPILED[cache_key] = _Runner(
            layout, n_particles, n_mh_steps, target_ess, kernel, n_leapfrog
        )
    key_init, key_stages = jax.random.split(raw_key(key))
    state = runner.init(jax.random.split(key_init, n_runs), x)
    n_stages = np.zeros(n_runs, dtype=int)
    betas, ess, acc, frames = [], [], [], []
    for i in range(max_stages):
        beta_before = np.asarray(state.beta)
        if np.all(beta_before >= 1):
            break
        state, info = runner.stage(jax.random.fold_in(key_stages, i), state, x)
        active = beta_before < 1
        n_stages += active
        betas.append(float(state.beta[0]) if active[0] else None)
        ess.append(np.asarray(info.ess)[active])
        acc.append(np.asarray(info.acceptance)[active])
        frames.append(np.asarray(info.frame_changes)[active])
        if progress is not None:
            progress(float(np.min(np.asarray(state.beta))))
    final_beta = np.asarray(state.beta)
    if not np.all(final_beta >= 1):
        raise ValueError(
            f"smc: {int(np.sum(final_beta < 1))} of {n_runs} runs did not reach temperature 1 "
            f"within max_stages={max_stages} (lowest temperature {final_beta.min():.3g}); "
            "raise max_stages or lower target_ess"
        )
    return SMCRun(
        state=state, layout=layout, n_stages=n_stages,
        betas=[b for b in betas if b is not None], ess=np.concatenate(ess),
        acceptance=np.concatenate(acc), frame_changes=np.concatenate(frames),
    )  # fmt: skip


def stage_diagnostics(run: SMCRun, options) -> dict:
    """The JSON-able stage diagnostics of an `SMCRun` (see `log_evidence_smc`)."""
    return {
        "kernel": options["kernel"],
        "n_runs": int(options["n_runs"]),
        "n_particles": int(options["n_particles"]),
        "n_mh_steps": int(options["n_mh_steps"]),
        "n_stages": run.n_stages.tolist(),
        "min_ess": float(run.ess.min() * options["n_particles"]),
        "acceptance_min": float(run.acceptance.min()),
        "acceptance_mean": float(run.acceptance.mean()),
        "frame_changes_mean": float(run.frame_changes.mean()),
        "betas": run.betas,
    }


def log_evidence_smc(
    key,
    x,
    spec,
    *,
    n_particles: int = 200,
    n_runs: int = 4,
    n_mh_steps: int | None = None,
    target_ess: float = 0.9,
    max_stages: int = 500,
    kernel: str = "rw",
    n_leapfrog: int = 10,
) -> LogEvidence:
    """Tempered-SMC estimate of log p(X) (a total, in nats) under ``spec.prior``.

    Args:
        key: PRNG key (split into one key per run).
        x: array of shape (n_samples, n_features).
        spec: `GMMSpec` with a resolved, proper prior.
        n_particles: particles per run.
        n_runs: independent runs R (>= 2); the estimate is the mean of their log Z and
            its standard error sd / sqrt(R) of those R values (ddof 1).
        n_mh_steps: moves per stage (default 40 random-walk steps, or 4 HMC moves; too
            few leave the particles correlated and log Z biased low, a bias the runs'
            spread does not show: see docs/evidence.md).
        target_ess: the ESS, as a fraction of ``n_particles``, each stage aims for. The
            default 0.9 makes many small stages, each with its ``n_mh_steps`` moves: at
            0.5 the particles did not mix within a stage on Old Faithful (log Z 0.85 nats
            low against bridge sampling, docs/evidence.md).
        max_stages: stages allowed per run before giving up (ValueError).
        kernel: the moves: ``"rw"`` (random-walk Metropolis, the particles' covariance as
            proposal) or ``"hmc"`` (Hamiltonian Monte Carlo, ``n_leapfrog`` leapfrog
            steps with the particles' covariance as inverse mass matrix, step size adapted
            to acceptance 0.65).
        n_leapfrog: leapfrog steps per HMC move.

    Returns:
        `LogEvidence`; diagnostics: ``run_estimates`` (R log Z),
        ``n_stages`` (per run), ``min_ess`` (the smallest incremental-weight ESS of any
        stage, in particles), ``acceptance_min`` / ``acceptance_mean`` (of the stages'
        mean acceptance), ``frame_changes_mean`` (HMC: the share of proposals refused
        because the components' order changed), ``betas`` (run 0's temperature ladder),
        ``run_sd`` (the runs' standard deviation of log Z), ``jensen_bias`` (run_sd^2 / 2,
        about how far the estimate, a mean of log Z, is low: it is not in ``stderr``; more
        moves or particles shrink it) and ``log_mean_z`` (log of the runs' mean Z).
    """
    x, spec = prepare(x, spec)
    options = check_smc_options(n_particles, n_runs, n_mh_steps, target_ess, max_stages,
                                kernel, n_leapfrog)  # fmt: skip
    return evidence_of_run(run_smc(key, x, spec, **options), options)


def evidence_of_run(run: SMCRun, options) -> LogEvidence:
    """The `LogEvidence` of an `SMCRun`: the mean of its runs' log Z, sd / sqrt(R), and
    the stage and spread diagnostics. ValueError when a run's log Z is not finite."""
    estimates = np.asarray(run.state.log_z, dtype=np.float64)
    if not np.all(np.isfinite(estimates)):
        raise ValueError(
            f"smc: a run's log-evidence estimate is not finite ({estimates.tolist()}); "
            "the likelihood overflowed or every particle was rejected"
        )
    diagnostics = {"run_estimates": estimates.tolist(), **stage_diagnostics(run, options)}
    diagnostics.update(run_spread(estimates))
    return LogEvidence(
        estimate=float(estimates.mean()),
        stderr=float(estimates.std(ddof=1) / math.sqrt(estimates.size)),
        method="smc",
        diagnostics=diagnostics,
    )


def run_spread(estimates) -> dict:
    """``run_sd``, ``jensen_bias`` and ``log_mean_z`` of R runs' log Z."""
    estimates = np.asarray(estimates, np.float64)
    # Each run's Z estimate is unbiased, so its log is biased low by about
    # Var(log Z_r) / 2 (exactly so for a log-normal Z_r); the mean of the runs' log Z
    # keeps that bias however many runs there are, and the standard error omits it.
    return {
        "run_sd": float(estimates.std(ddof=1)),
        "jensen_bias": float(estimates.var(ddof=1) / 2.0),
        "log_mean_z": float(logsumexp(estimates) - math.log(estimates.size)),
    }
