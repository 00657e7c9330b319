import re
from pathlib import Path

import numpy as np
import pytest

from experiments import datasets
from experiments.datasets import (
    DATASETS,
    load_dataset,
    make_synthetic,
    prepare,
    read_csv,
    standardize,
    train_test_split,
)


def _config(name, tmp_path):
    if name == "csv":
        path = tmp_path / "d.csv"
        path.write_text("a,b,label\n1,2,x\n3,4,y\n5,7,x\n")
        return {"dataset": "csv", "path": str(path), "label_column": "label"}
    return {"dataset": name}


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_every_dataset_loads_consistently(name, tmp_path):
    data = load_dataset(_config(name, tmp_path), seed=0)
    assert data.x.dtype == np.float64 and data.x.ndim == 2
    assert np.isfinite(data.x).all()
    assert len(data.feature_names) == data.x.shape[1]
    if data.labels is not None:
        assert data.labels.shape == (data.x.shape[0],)
        assert set(np.unique(data.labels)) == set(range(data.labels.max() + 1))
    if data.true_params is not None:
        _check_true_params(data.true_params, data.x.shape[1])


def _check_true_params(params, n_features):
    weights, means, covariances = params["weights"], params["means"], params["covariances"]
    n_components = weights.shape[0]
    assert means.shape == (n_components, n_features)
    assert covariances.shape == (n_components, n_features, n_features)
    assert np.all(weights > 0) and np.isclose(weights.sum(), 1.0)
    np.testing.assert_allclose(covariances, covariances.transpose(0, 2, 1))
    assert np.all(np.linalg.eigvalsh(covariances) > 0)


def test_unknown_dataset_lists_valid_names():
    with pytest.raises(ValueError, match="iris") as info:
        load_dataset({"dataset": "irs"}, 0)
    assert "'irs'" in str(info.value)


def test_iris():
    data = load_dataset({"dataset": "iris"}, 0)
    assert data.x.shape == (150, 4)
    assert np.bincount(data.labels).tolist() == [50, 50, 50]
    assert data.label_names == ("setosa", "versicolor", "virginica")
    assert data.feature_names == ("sepal_length", "sepal_width", "petal_length", "petal_width")


def test_iris_matches_sklearn_copy():
    from sklearn.datasets import load_iris

    reference = load_iris()
    data = load_dataset({"dataset": "iris"}, 0)
    np.testing.assert_array_equal(data.x, reference.data)
    np.testing.assert_array_equal(data.labels, reference.target)


def test_faithful():
    data = load_dataset({"dataset": "faithful"}, 0)
    assert data.x.shape == (272, 2)
    assert data.feature_names == ("eruptions", "waiting")
    assert data.labels is None
    # Known ranges of the Old Faithful data (eruptions 1.6-5.1 min, waiting 43-96 min).
    assert 1.5 < data.x[:, 0].min() and data.x[:, 0].max() < 5.2
    assert 40 < data.x[:, 1].min() and data.x[:, 1].max() < 100


def test_synthetic_is_reproducible_per_seed():
    config = {"dataset": "synthetic"}
    a, b, c = load_dataset(config, 1), load_dataset(config, 1), load_dataset(config, 2)
    np.testing.assert_array_equal(a.x, b.x)
    np.testing.assert_array_equal(a.true_params["means"], b.true_params["means"])
    assert not np.allclose(a.x, c.x)
    assert a.x.shape == (500, 2) and a.true_params["weights"].shape == (3,)


@pytest.mark.parametrize("n_components, n_features", [(1, 1), (2, 5), (4, 3)])
def test_synthetic_options_and_separation(n_components, n_features):
    data = make_synthetic(
        3, n_samples=2000, n_components=n_components, n_features=n_features, separation=6.0
    )
    assert data.x.shape == (2000, n_features)
    _check_true_params(data.true_params, n_features)
    means = data.true_params["means"]
    if n_components > 1:
        gaps = np.linalg.norm(means[:, None] - means[None], axis=-1)
        assert np.isclose(gaps[np.triu_indices(n_components, 1)].min(), 6.0)
    # Samples follow their generating component: empirical means near the true ones.
    for k in range(n_components):
        members = data.x[data.labels == k]
        if len(members) > 100:
            assert np.abs(members.mean(0) - means[k]).max() < 0.5


def test_synthetic_reads_options_from_config():
    data = load_dataset(
        {"dataset": "synthetic", "n_samples": 40, "n_features": 3, "n_components": None}, 0
    )
    assert data.x.shape == (40, 3)
    assert data.true_params["weights"].shape == (3,)


@pytest.mark.parametrize(
    "key, value", [("n_samples", 0), ("n_components", 2.5), ("separation", 0.0)]
)
def test_synthetic_rejects_bad_options(key, value):
    with pytest.raises(ValueError, match=key):
        make_synthetic(0, **{key: value})


def test_toy1d_groups():
    data = load_dataset({"dataset": "toy1d"}, 0)
    assert data.x.shape == (300, 1)
    assert np.bincount(data.labels).tolist() == [100, 100, 100]
    group_means = [data.x[data.labels == k, 0].mean() for k in range(3)]
    np.testing.assert_allclose(group_means, [-10, 0, 10], atol=0.6)


# ------------------------------------------------------------------------------ csv


def _write(tmp_path, text, name="data.csv"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_csv_default_columns_skip_text_and_label(tmp_path):
    path = _write(tmp_path, "a,kind,b,cls\n1,u,2.5,10\n3,v,4,2\n\n5,w,6,10\n")
    data = read_csv(path, label_column="cls")
    assert data.feature_names == ("a", "b")
    np.testing.assert_array_equal(data.x, [[1, 2.5], [3, 4], [5, 6]])
    # Numeric labels sort numerically: 2 < 10.
    assert data.labels.tolist() == [1, 0, 1] and data.label_names == ("2", "10")
    assert data.name == "data"


def test_csv_explicit_columns_keep_order(tmp_path):
    path = _write(tmp_path, "a,b,c\n1,2,3\n4,5,6\n")
    data = load_dataset({"dataset": "csv", "path": str(path), "columns": ["c", "a"]}, 0)
    np.testing.assert_array_equal(data.x, [[3, 1], [6, 4]])
    assert data.labels is None


@pytest.mark.parametrize(
    "text, kwargs, fragments",
    [
        ("a,b\n1,2\n", {"columns": ["a", "z"]}, ["'z'", "['a', 'b']"]),
        ("a,b\n1,2\n", {"label_column": "y"}, ["'y'", "['a', 'b']"]),
        ("a,b\n1,2\n3,oops\n", {}, ["'b'", "line 3", "'oops'"]),
        ("a,b\n1,2\n3,nan\n", {"columns": ["b"]}, ["'b'", "line 3"]),
        ("a,b\n1,\n", {"columns": ["a", "b"]}, ["'b'", "line 2"]),
        ("a,b\n1,2,3\n", {}, ["line 2", "expected 2 fields"]),
        ("a,b\n", {}, ["no data rows"]),
        ("", {}, ["empty"]),
        ("a,a\n1,2\n", {}, ["duplicate", "'a'"]),
        ("s,t\nx,y\n", {}, ["no numeric columns"]),
        ("a,c\n1,x\n2,\n", {"label_column": "c"}, ["'c'", "line 3", "missing label"]),
    ],
)
def test_csv_errors_name_file_column_and_line(tmp_path, text, kwargs, fragments):
    path = _write(tmp_path, text, "bad.csv")
    with pytest.raises(ValueError) as info:
        read_csv(path, **kwargs)
    message = str(info.value)
    assert "bad.csv" in message
    for fragment in fragments:
        assert fragment in message


def test_csv_missing_file_and_missing_path(tmp_path):
    with pytest.raises(ValueError, match="nothere.csv: file not found"):
        load_dataset({"dataset": "csv", "path": str(tmp_path / "nothere.csv")}, 0)
    with pytest.raises(ValueError, match="data.path"):
        load_dataset({"dataset": "csv"}, 0)


# -------------------------------------------------------------------- preprocessing


def test_standardize():
    x = np.random.default_rng(0).normal(3.0, 5.0, size=(100, 3))
    x_std, mean, scale = standardize(x)
    np.testing.assert_allclose(x_std.mean(0), 0, atol=1e-12)
    np.testing.assert_allclose(x_std.std(0), 1)
    np.testing.assert_allclose(x_std * scale + mean, x)


def test_standardize_rejects_constant_column():
    x = np.column_stack([np.arange(5.0), np.full(5, 0.1)])
    with pytest.raises(ValueError, match="'flat'"):
        standardize(x, ("ok", "flat"))
    with pytest.raises(ValueError, match="column 1"):
        standardize(x)


def test_train_test_split_partitions_rows():
    x = np.arange(20.0).reshape(10, 2)
    labels = np.arange(10)
    x_train, x_test, y_train, y_test = train_test_split(0, x, labels, 0.25)
    assert len(x_test) == 3 and len(x_train) == 7  # ceil, as scikit-learn
    assert sorted(np.concatenate([y_train, y_test]).tolist()) == list(range(10))
    np.testing.assert_array_equal(x_train[:, 0], 2 * y_train)
    again = train_test_split(0, x, labels, 0.25)
    np.testing.assert_array_equal(again[0], x_train)
    other = train_test_split(1, x, labels, 0.25)
    assert not np.array_equal(other[3], y_test)


def test_train_test_split_zero_fraction_and_no_labels():
    x = np.ones((4, 2))
    x_train, x_test, y_train, y_test = train_test_split(0, x, None, 0.0)
    assert x_train.shape == (4, 2) and x_test.shape == (0, 2)
    assert y_train is None and y_test is None


@pytest.mark.parametrize("fraction", [-0.1, 1.0, 0.99])
def test_train_test_split_rejects_bad_fraction(fraction):
    with pytest.raises(ValueError, match="test_fraction"):
        train_test_split(0, np.ones((3, 1)), None, fraction)


def test_prepare_standardizes_with_training_statistics_and_moves_true_params():
    data = make_synthetic(0, n_samples=300)
    train, test, (mean, scale) = prepare(data, 0, standardize_data=True, test_fraction=0.2)
    assert train.n_samples == 240 and test.n_samples == 60
    np.testing.assert_allclose(train.x.mean(0), 0, atol=1e-12)
    # Undoing the transform gives back exactly the original rows, each once.
    restored = np.concatenate([train.x, test.x]) * scale + mean
    order = lambda a: a[np.lexsort(a.T)]
    np.testing.assert_allclose(order(restored), order(data.x))
    np.testing.assert_allclose(train.true_params["means"] * scale + mean, data.true_params["means"])
    np.testing.assert_allclose(
        train.true_params["covariances"] * np.outer(scale, scale), data.true_params["covariances"]
    )
    plain_train, plain_test, transform = prepare(data, 0)
    assert plain_test is None and transform is None and plain_train.x is data.x


def test_data_files_are_bundled():
    assert (datasets.DATA_DIR / "iris.csv").is_file()
    assert (datasets.DATA_DIR / "faithful.csv").is_file()


# ------------------------------------------------------------ id-like columns, data.drop


def _id_csv(tmp_path, name="ids.csv"):
    rng = np.random.default_rng(1)
    rows = "".join(
        f"{i + 7},{v:.3f},{int(w)},{'ab'[i % 2]}\n"
        for i, (v, w) in enumerate(rng.normal(size=(12, 2)))
    )
    return _write(tmp_path, "row_id,x,w,cls\n" + rows, name)


def test_runner_refuses_an_id_like_default_feature_by_name(tmp_path):
    path = _id_csv(tmp_path)
    config = {"dataset": "csv", "path": str(path), "label_column": "cls"}
    with pytest.raises(ValueError) as info:
        load_dataset(config, 0)
    message = str(info.value)
    expected = (str(path), "column 'row_id' (7 to 18)", "distinct integers", "data.drop: [row_id]")
    for fragment in expected + ("data.columns",):
        assert fragment in message, message
    # w holds integers with repeats and x is not integer-valued: neither is named.
    assert "'w'" not in message and "'x'" not in message
    # Left out by data.drop, or not listed in data.columns: accepted, no warning.
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dropped = load_dataset(dict(config, drop=["row_id"]), 0)
    assert dropped.feature_names == ("x", "w") and dropped.labels is not None
    listed = load_dataset(dict(config, columns=["x", "w"]), 0)
    np.testing.assert_array_equal(listed.x, dropped.x)
    # Listed explicitly, an id-like column is the user's choice and is used.
    kept = load_dataset(dict(config, columns=["row_id", "x"]), 0)
    np.testing.assert_array_equal(kept.x[:, 0], np.arange(7, 19))


def test_two_id_like_columns_are_named_together(tmp_path):
    rows = "".join(f"{i},{100 - 3 * i},{0.5 * i % 1.7:.3f}\n" for i in range(15))
    path = _write(tmp_path, "a,b,c\n" + rows, "two.csv")
    named = r"columns 'a' \(0 to 14\), 'b' \(58 to 100\) hold .*data\.drop: \[a, b\]"
    with pytest.raises(ValueError, match=named):
        read_csv(path, refuse_ids=True)
    # Below 10 rows a column of distinct integers is too common to call an id.
    short = _write(tmp_path, "a,b\n" + "".join(f"{i},{i * 0.3}\n" for i in range(9)), "s.csv")
    assert read_csv(short, refuse_ids=True).feature_names == ("a", "b")


@pytest.mark.parametrize(
    "kwargs, fragments",
    [
        ({"drop": ["nope"]}, ["data.drop", "'nope'", "columns present"]),
        ({"drop": ["cls"], "label_column": "cls"}, ["data.drop", "label column 'cls'"]),
        ({"drop": ["row_id"], "columns": ["x"]}, ["data.columns and data.drop"]),
    ],
)
def test_drop_errors_name_the_key(tmp_path, kwargs, fragments):
    path = _id_csv(tmp_path)
    with pytest.raises(ValueError) as info:
        read_csv(path, **kwargs)
    for fragment in [str(path)] + fragments:
        assert fragment in str(info.value), str(info.value)


MODEL = {"n_components": 2}


def test_drop_is_a_csv_only_config_key(tmp_path):
    from experiments.config import ConfigError, validate

    with pytest.raises(ConfigError, match="data.drop: only used by dataset 'csv'"):
        validate({"name": "t", "data": {"dataset": "iris", "drop": ["x"]}, "model": MODEL})
    data = {"dataset": "csv", "path": "f.csv", "drop": ["id"]}
    config = validate({"name": "t", "data": data, "model": MODEL})
    assert config["data"]["drop"] == ["id"]


# ------------------------------------------------------- the docs' complete CSV example

DOC = Path(__file__).resolve().parents[2] / "docs" / "experiments.md"


def measurements_csv(n_rows=40):
    """The file of the docs' CSV example: a row id, two measurements, a site label."""
    rng = np.random.default_rng(0)
    lines = ["id,length,width,site"]
    for i in range(n_rows):
        site = ("north", "south")[i % 2]
        centre = (4.0, 2.0) if site == "north" else (6.0, 3.0)
        length, width = rng.normal(centre, (0.4, 0.25))
        lines.append(f"{i + 1},{length:.2f},{width:.2f},{site}")
    return "\n".join(lines) + "\n"


def _doc_example():
    """(csv head, yaml text, refusal text) of the docs' example, between its markers."""
    text = DOC.read_text(encoding="utf-8")
    block = text.split("<!-- csv-example:start -->")[1].split("<!-- csv-example:end -->")[0]
    (head,) = re.findall(r"```text\n(.*?)```", block, flags=re.S)
    (config,) = re.findall(r"```yaml\n(.*?)```", block, flags=re.S)
    (refusal,) = re.findall(r"```console\n(.*?)```", block, flags=re.S)
    return head, config, refusal


def test_docs_csv_example_runs_as_written(tmp_path, monkeypatch, capsys):
    from experiments import run as run_module
    from experiments import run_experiment

    head, config_text, refusal = _doc_example()
    csv_text = measurements_csv()
    assert csv_text.startswith(head), "the docs show the first lines of the file tested"
    monkeypatch.chdir(tmp_path)  # the docs' working directory: the repository root
    folder = tmp_path / "mydata"
    folder.mkdir()
    (folder / "measurements.csv").write_text(csv_text)
    (folder / "measurements.yaml").write_text(config_text)
    result = run_experiment("mydata/measurements.yaml", plots=False)
    assert result.metrics["data"]["feature_names"] == ["length", "width"]
    assert result.metrics["data"]["n_train"] == 30 and result.metrics["data"]["standardized"]
    em = result.rows["em"]
    assert em["converged"] and em["ari"] == pytest.approx(1.0)  # two well separated sites
    assert not result.metrics["warnings"]

    # Without data.drop the runner refuses, with the message the docs show.
    lines = [ln for ln in config_text.splitlines() if not ln.strip().startswith("drop:")]
    (folder / "no_drop.yaml").write_text("\n".join(lines) + "\n")
    command, *expected = refusal.strip().splitlines()
    assert command == "$ python -m experiments.run mydata/no_drop.yaml"
    assert run_module.main(["mydata/no_drop.yaml"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == expected
    assert not (tmp_path / "results" / "measurements").exists()  # nothing fitted or written
