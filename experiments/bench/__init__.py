"""EM and VB speed benchmark: jaxgmm against scikit-learn (and gmmx / pomegranate when they
are importable) on the same data and the same initial parameters, in one run.

    python -m experiments.bench [--sizes small|all] [--dtypes float32,float64]
                                [--out results/bench] [--iters N] [--accuracy-iters M]
                                [--no-scaling] [--profile] [--gemm-size G]
                                [--exp-elements E] [--overwrite]

jaxgmm runs twice: "jaxgmm" on one XLA device, and "jaxgmm-cores" with the samples split
over one XLA CPU device per core (``--xla_force_host_platform_device_count``, a data mesh
and `jaxgmm.em.shard_data`; skipped on one core). Every peer's ratio is reported against both.
Closed-form variational Bayes runs beside EM: "jaxgmm-vb" (`jaxgmm.vb.vb_fitter`) and
"sklearn-vb" (scikit-learn's `BayesianGaussianMixture`), from the responsibilities of the
same initial parameters under one conjugate prior (`protocol.vb_prior`), with the VB / EM
ratio of each library and scikit-learn's VB over jaxgmm's.
Each (size, dtype, tool) runs in its own subprocess so that its peak resident memory
(``ru_maxrss`` minus the resident size after the data are built) is its own. Reported per
row: seconds per EM iteration (compile excluded), the ratio peer / jaxgmm, compile time,
time to first result (a cold call: compile plus the first jitted chunk), peak memory
beyond the data, and the final log-likelihood per sample of every tool's parameters
scored by one float64 NumPy function (``score_float64``), so a fast wrong answer shows.
Timings use a few iterations; float32 accuracy is checked separately: jaxgmm runs
``--accuracy-iters`` iterations in each dtype from the same start, and the float32 minus
float64 log-likelihood (both scored in float64) is reported per size. Every worker runs
with `COMPILE_FLAGS` added to ``XLA_FLAGS`` (LLVM loop unrolling off: shorter compiles,
same run time; recorded per row as ``xla_flags``). Writes
``bench.csv``, ``scaling.csv``, ``bench.png`` and ``scaling.png`` under ``--out``.

First the machine's GEMM and exp rates are measured (`floor`), and each row is reported
against the arithmetic floor they give (``floor_s_per_iter``, ``ratio_over_floor``,
``floor.json``); ``--profile`` times EM's phases against theirs (``profile.csv``).

Modules: `floor` (the rates, the flop count per covariance type, the floor, the per-phase
profile), `protocol` (the shared data, start and float64 scorer, the timing rule, the
float32 accuracy check, device counts), `peers` (one adapter per tool: jaxgmm,
scikit-learn, gmmx, pomegranate), `workers` (one subprocess per job and the XLA flags it
runs with), `plots` (the two figures), `cli` (the grids and ``main``).
"""
