"""Plug-in priors from the config (issue 20 item 5): ``model.prior: {name:
"module:Class", ...}`` runs a prior from the researcher's own file through the runner's
command-line entry point (gradient MAP, SVI, NUTS), hierarchical ones included; a bad
plug-in or an unsupported combination is a config error (exit 2) naming the key."""

import json
import textwrap

import pytest

from experiments import run as run_module

PLUGIN = textwrap.dedent(
    '''
    import dataclasses
    from typing import ClassVar

    import jax.numpy as jnp
    import numpyro
    import numpyro.distributions as dist

    import jaxgmm
    from jaxgmm.priors import Prior


    @dataclasses.dataclass(frozen=True)
    class ShrunkMeans(Prior):
        """Diagonal components whose means share a learnt spread tau (a hyper-site)."""

        name: ClassVar[str] = "shrunk_means"
        covariance_types: ClassVar[tuple] = ("diag",)
        hyper_sites: ClassVar[tuple] = ("tau",)
        tau_scale: float = 5.0

        def sample(self, spec, n_features, dtype):
            self.check(spec, n_features)
            k = spec.n_components
            tau = numpyro.sample("tau", dist.HalfNormal(jnp.asarray(self.tau_scale, dtype)))
            w = numpyro.sample("weights", dist.Dirichlet(jnp.full((k,), 2.0, dtype)))
            mu = numpyro.sample("means", dist.Normal(0.0, tau).expand((k, n_features)).to_event(2))
            sd = numpyro.sample(
                "sd", dist.LogNormal(0.0, 1.0).expand((k, n_features)).to_event(2)
            )
            return jaxgmm.GMMParams(w, mu, 1.0 / sd)

        def site_values(self, params, spec):
            return {"weights": params.weights, "means": params.means, "sd": 1.0 / params.prec_chol}


    class NotAPrior:
        pass
    '''
)

BASE = (
    "name: plugin\nseed: 0\n"
    "data: {dataset: synthetic, n_samples: 60, n_components: 2, n_features: 2}\n"
    "model: {n_components: 2, covariance_type: diag, prior: PRIOR}\n"
    "methods: METHODS\n"
    "gradient: {max_steps: 30}\n"
    "svi: {num_steps: 60, n_eval_samples: 50}\n"
    "nuts: {num_warmup: 20, num_samples: 20, num_chains: 2, census_n_init: 1}\n"
    "evidence: {methods: null}\n"  # what is tested here is the fitters, not log p(X)
)


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    (tmp_path / "my_priors_h3.py").write_text(PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def _config(folder, prior, methods):
    path = folder / "plugin.yaml"
    path.write_text(BASE.replace("PRIOR", prior).replace("METHODS", methods))
    return path


@pytest.mark.parametrize(
    "prior",
    [
        "{name: 'my_priors_h3:ShrunkMeans', tau_scale: 3.0}",
        "{name: hierarchical_conjugate, scale_shape: 0.5}",
    ],
)
def test_plugin_and_hierarchical_priors_run_through_map_svi_nuts(plugin, prior):
    path = _config(plugin, prior, "[gradient, svi, nuts]")
    out = plugin / "out"
    code = run_module.main([str(path), "--output", str(out), "--quiet", "--no-plots"])
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    for method in ("gradient", "svi", "nuts"):
        assert method in metrics["methods"], sorted(metrics["methods"])


@pytest.mark.parametrize(
    "prior, methods, message",
    [
        ("{name: 'no_such_module_h3:Prior'}", "[gradient]",
         "model.prior.name: cannot import module 'no_such_module_h3'"),
        ("{name: 'my_priors_h3:Missing'}", "[gradient]",
         "model.prior.name: module 'my_priors_h3' (" ),
        ("{name: 'my_priors_h3:NotAPrior'}", "[gradient]",
         "is not a prior: expected a frozen dataclass subclass of jaxgmm.priors.Prior"),
        ("{name: 'my_priors_h3:ShrunkMeans', tau: 1.0}", "[gradient]",
         "model.prior.tau: prior 'my_priors_h3:ShrunkMeans' has no such hyperparameter"),
        ("{name: 'my_priors_h3:ShrunkMeans'}", "[em]",
         "methods: em cannot fit this model"),
        ("{name: hierarchical_conjugate}", "[vb]", "'hierarchical_conjugate'"),
    ],
)  # fmt: skip
def test_bad_plugins_and_unsupported_combinations_exit_2(plugin, capsys, prior, methods, message):
    path = _config(plugin, prior, methods)
    code = run_module.main([str(path), "--output", str(plugin / "out"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert str(path) in err and message in err, err

