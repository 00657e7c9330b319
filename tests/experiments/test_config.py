import textwrap

import pytest
import yaml

from experiments import config as config_module
from experiments.config import (
    METHOD_BLOCKS,
    SCHEMA,
    ConfigError,
    Field,
    at_least,
    dump_config,
    load_config,
    register_method_block,
    schema_markdown,
    validate,
)
from experiments.datasets import DATASET_OPTIONS

MINIMAL = """\
name: iris
data:
  dataset: iris
model:
  n_components: 3
"""


def _write(tmp_path, text, name="cfg.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def _error_lines(path, overrides=()):
    with pytest.raises(ConfigError) as info:
        load_config(path, overrides)
    assert isinstance(info.value, ValueError)
    assert str(info.value) == "\n".join(info.value.errors)
    return info.value.errors


def test_defaults_filled(tmp_path):
    config = load_config(_write(tmp_path, MINIMAL))
    assert config["seed"] == 0 and config["dtype"] == "float64"
    assert config["data"]["standardize"] is False and config["data"]["test_fraction"] == 0.0
    assert config["model"] == {
        "n_components": 3,
        "covariance_type": "full",
        "reg_covar": 1e-6,
        "prior": None,
    }
    assert config["init"] == {"method": "kmeans", "n_init": 1, "select": "non_degenerate"}
    assert config["methods"] == ["em"]
    assert config["em"] == {"max_iter": 500, "tol": 1e-6}
    # Dataset options of other datasets stay null.
    assert config["data"]["n_samples"] is None and config["data"]["path"] is None


def test_resolved_config_follows_schema_order(tmp_path):
    config = load_config(
        _write(tmp_path, "model: {n_components: 2}\ndata: {dataset: iris}\nname: x\n")
    )
    assert list(config) == list(SCHEMA)
    assert list(config["data"]) == list(SCHEMA["data"])


def test_defaults_are_not_shared_between_configs(tmp_path):
    path = _write(tmp_path, MINIMAL)
    load_config(path)["methods"].append("em")
    assert load_config(path)["methods"] == ["em"]


def test_synthetic_options_default_from_datasets(tmp_path):
    path = _write(
        tmp_path, "name: s\ndata: {dataset: synthetic, n_samples: 50}\nmodel: {n_components: 2}\n"
    )
    data = load_config(path)["data"]
    expected = dict(DATASET_OPTIONS["synthetic"], n_samples=50)
    assert {key: data[key] for key in expected} == expected


def test_overrides_are_typed(tmp_path):
    config = load_config(
        _write(tmp_path, MINIMAL),
        [
            "model.n_components=4",
            "model.reg_covar=1.0e-3",
            "data.standardize=true",
            "methods=[em]",
            "model.prior.name=conjugate",
            "model.prior.weight_concentration=2",
            "name=other",
        ],
    )
    assert config["model"]["n_components"] == 4
    assert config["model"]["reg_covar"] == 1e-3
    assert config["data"]["standardize"] is True
    assert config["model"]["prior"] == {"name": "conjugate", "weight_concentration": 2}
    assert config["name"] == "other"


def test_float_written_without_dot_is_accepted(tmp_path):
    # YAML 1.1 (PyYAML) reads 1e-6 as a string; it is still the float the user meant.
    path = _write(tmp_path, MINIMAL + "em: {tol: 1e-8}\n")
    assert load_config(path)["em"]["tol"] == 1e-8
    assert load_config(path, ["model.reg_covar=2"])["model"]["reg_covar"] == 2.0


def test_round_trip_through_dump(tmp_path):
    config = load_config(
        _write(
            tmp_path,
            "name: s\ndata: {dataset: synthetic}\nmodel: {n_components: 2, prior: {name: conjugate, mean_prior: [1, 2]}}\n",
        )
    )
    text = dump_config(config)
    assert validate(yaml.safe_load(text)) == config
    assert text.index("name:") < text.index("data:") < text.index("em:")


@pytest.mark.parametrize(
    "text, overrides, key_path, fragments",
    [
        (
            MINIMAL.replace("n_components: 3", "n_components: 3\n  covariance_type: ful"),
            (),
            "model.covariance_type",
            ["expected one of ['diag', 'full', 'spherical', 'tied'], got 'ful'"],
        ),
        (MINIMAL + "init: {n_init: true}\n", (), "init.n_init", ["expected int", "bool"]),
        (MINIMAL + "seed: 1.5\n", (), "seed", ["expected int", "float"]),
        (
            MINIMAL.replace("n_components: 3", "n_components: three"),
            (),
            "model.n_components",
            ["expected int"],
        ),
        (MINIMAL + "model_: {}\n", (), "model_", ["unknown key", "did you mean 'model'"]),
        (
            MINIMAL.replace("n_components: 3", "n_componets: 3"),
            (),
            "model.n_componets",
            ["unknown key", "did you mean 'n_components'"],
        ),
        (MINIMAL + "zzz: 1\n", (), "zzz", ["unknown key", "valid keys"]),
        ("name: x\ndata: {dataset: iris}\n", (), "model.n_components", ["required"]),
        ("data: {dataset: iris}\nmodel: {n_components: 2}\n", (), "name", ["required"]),
        (
            MINIMAL.replace("dataset: iris", "dataset: irs"),
            (),
            "data.dataset",
            ["expected one of", "'iris'", "'irs'"],
        ),
        (MINIMAL + "methods: [em, mcmc]\n", (), "methods", ["'mcmc'", "'nuts'"]),
        (MINIMAL + "methods: []\n", (), "methods", ["at least one"]),
        (MINIMAL + "methods: [em, em]\n", (), "methods", ["twice"]),
        (MINIMAL + "methods: em\n", (), "methods", ["expected list[str]"]),
        (MINIMAL + "dtype: float16\n", (), "dtype", ["float32"]),
        (MINIMAL + "em: {max_iter: 0}\n", (), "em.max_iter", [">= 1"]),
        (MINIMAL + "em: 3\n", (), "em", ["expected a mapping"]),
        (
            MINIMAL.replace("n_components: 3", "n_components: 3\n  reg_covar: 0"),
            (),
            "model.reg_covar",
            ["> 0"],
        ),
        (
            MINIMAL.replace("n_components: 3", "n_components: 3\n  prior: {alpha: 1}"),
            (),
            "model.prior",
            ["'name'"],
        ),
        (
            MINIMAL.replace("n_components: 3", "n_components: 3\n  prior: dirichlet"),
            (),
            "model.prior",
            ["mapping"],
        ),
        (MINIMAL.replace("name: iris", "name: ../x"), (), "name", ["folder"]),
        (
            MINIMAL.replace("dataset: iris", "dataset: iris\n  test_fraction: 1.0"),
            (),
            "data.test_fraction",
            ["< 1"],
        ),
        (
            MINIMAL.replace("dataset: iris", "dataset: csv"),
            (),
            "data.path",
            ["required when data.dataset is 'csv'"],
        ),
        (
            MINIMAL.replace("dataset: iris", "dataset: iris\n  n_samples: 10"),
            (),
            "data.n_samples",
            ["only used by dataset 'synthetic'", "'iris'"],
        ),
        (
            MINIMAL,
            ("model.n_componets=4",),
            "model.n_componets (from --set)",
            ["did you mean 'n_components'"],
        ),
        (
            MINIMAL,
            ("model.n_components=four",),
            "model.n_components (from --set)",
            ["expected int", "'four'"],
        ),
        (MINIMAL, ("name.sub=1",), "name.sub (from --set)", ["name is a str, not a block"]),
        (MINIMAL, ("model.n_components",), "--set 'model.n_components'", ["KEY.PATH=VALUE"]),
        (MINIMAL, ("model.n_components=[1",), "model.n_components (from --set)", ["invalid YAML"]),
    ],
)
def test_error_names_file_and_key_path(tmp_path, text, overrides, key_path, fragments):
    path = _write(tmp_path, text, "my_config.yaml")
    errors = _error_lines(path, overrides)
    matching = [e for e in errors if e.startswith(f"{path}: {key_path}")]
    assert matching, errors
    for fragment in fragments:
        assert fragment in matching[0], matching[0]


def test_all_errors_reported_together(tmp_path):
    path = _write(
        tmp_path,
        "name: x\nseed: -1\ndata: {dataset: irs}\nmodel: {n_components: 0, covariance_type: ful}\nbogus: 1\n",
    )
    errors = _error_lines(path)
    keys = [e.split(": ")[1] for e in errors]
    assert set(keys) == {
        "seed",
        "data.dataset",
        "model.n_components",
        "model.covariance_type",
        "bogus",
    }


def test_cross_checks_still_run_when_other_blocks_have_errors(tmp_path):
    path = _write(tmp_path, "name: x\nseed: -1\ndata: {dataset: csv}\nmodel: {n_components: 1}\n")
    keys = [e.split(": ")[1] for e in _error_lines(path)]
    assert keys == ["seed", "data.path"]


def test_invalid_yaml_reports_line(tmp_path):
    path = _write(tmp_path, "name: x\ndata:\n  dataset: [iris\nmodel: {n_components: 1}\n")
    (error,) = _error_lines(path)
    assert error.startswith(f"{path}: line ") and "invalid YAML" in error


def test_duplicate_key_is_an_error(tmp_path):
    path = _write(tmp_path, MINIMAL + "name: again\n")
    (error,) = _error_lines(path)
    assert str(path) in error and "duplicate key 'name'" in error and "line 6" in error


def test_missing_file(tmp_path):
    path = tmp_path / "absent.yaml"
    assert _error_lines(path) == [f"{path}: file not found"]


@pytest.mark.parametrize("text", ["", "- a\n- b\n", "just a string\n"])
def test_top_level_must_be_a_mapping(tmp_path, text):
    path = _write(tmp_path, text)
    errors = _error_lines(path)
    assert all(e.startswith(str(path)) for e in errors)
    if text:
        assert "mapping" in errors[0]
    else:
        assert {e.split(": ")[1] for e in errors} == {"name", "data.dataset", "model.n_components"}


@pytest.fixture
def extra_block():
    register_method_block(
        "extra_method",
        {
            "steps": Field(10, "int", at_least(1), "steps"),
            "inner": {"lr": Field(0.1, "float", None, "rate")},
        },
    )
    yield
    del SCHEMA["extra_method"]
    METHOD_BLOCKS.remove("extra_method")


def test_register_method_block_extends_schema(tmp_path, extra_block):
    path = _write(
        tmp_path, MINIMAL + "methods: [em, extra_method]\nextra_method: {inner: {lr: 1}}\n"
    )
    config = load_config(path)
    assert config["methods"] == ["em", "extra_method"]
    assert config["extra_method"] == {"steps": 10, "inner": {"lr": 1.0}}
    errors = _error_lines(path, ["extra_method.inner.lr=x", "extra_method.stepz=3"])
    assert any("extra_method.inner.lr (from --set): expected float" in e for e in errors)
    assert any(
        "extra_method.stepz (from --set): unknown key; did you mean 'steps'" in e for e in errors
    )
    assert "`extra_method.inner.lr`" in schema_markdown()


def test_register_method_block_twice_fails():
    with pytest.raises(ValueError, match="em"):
        register_method_block("em", {})


def test_schema_markdown_lists_every_key():
    table = schema_markdown()
    lines = table.strip().splitlines()
    assert lines[0].startswith("| key |")

    def leaves(schema, prefix=""):
        for key, spec in schema.items():
            if isinstance(spec, dict):
                yield from leaves(spec, f"{prefix}{key}.")
            else:
                yield prefix + key

    keys = list(leaves(SCHEMA))
    assert len(lines) == 2 + len(keys)
    for key, line in zip(keys, lines[2:]):
        assert line.startswith(f"| `{key}` |")
    assert "| `model.n_components` | int | *required* |" in table
    assert "`1.0e-06`" in table


def test_every_field_default_passes_its_own_validation():
    def fields(schema):
        for spec in schema.values():
            if isinstance(spec, dict):
                yield from fields(spec)
            else:
                yield spec

    for spec in fields(SCHEMA):
        if spec.default is config_module.REQUIRED or spec.default is None:
            continue
        value = config_module.TYPES[spec.type](spec.default)
        assert spec.check is None or spec.check(value) is None
