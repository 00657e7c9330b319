"""Datasets for the experiments: bundled CSVs, seeded synthetic mixtures, a CSV loader and
preprocessing (standardise, split). The metrics that compare a fit with the truth (ARI,
parameter recovery) are `experiments.metrics`.

Everything here is NumPy only, reads nothing from the network, and is used by the
experiment runner; the ``jaxgmm`` library never imports it. scikit-learn and SciPy are
test oracles only.

The registry ``DATASETS`` maps the ``data.dataset`` string of a config to a loader
``loader(config_data, seed) -> Dataset``. ``DATASET_OPTIONS`` lists, for each dataset
that takes options, its option names and defaults; ``experiments.config`` reads it to
validate and fill the ``data`` block, so the defaults live here only.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
import warnings
from pathlib import Path

import numpy as np

DATA_DIR = Path(__file__).resolve().parent / "data"

# Options each dataset reads from the config's ``data`` block, with their defaults.
# Datasets not listed take no options.
DATASET_OPTIONS = {
    "synthetic": {"n_samples": 500, "n_components": 3, "n_features": 2, "separation": 4.0},
    "csv": {"path": None, "columns": None, "label_column": None, "drop": None},
}

# Cells read as missing values, which are an error in a used column.
_MISSING = {"", "na", "nan", "null", "none", "n/a"}

# A column of distinct integers with at least this many rows looks like a row id.
_ID_MIN_ROWS = 10


class DataWarning(UserWarning):
    """Something in a data file that is probably a mistake but not an error (a column
    left out, an id-like feature, a guessed encoding); the runner lists these under its
    table and in ``metrics.json["warnings"]``."""


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
    """A loaded dataset.

    Attributes:
        x: array of shape (n_samples, n_features), float64.
        labels: int array of shape (n_samples,) with values in 0..n_classes-1, or None.
        feature_names: tuple of n_features str.
        name: the dataset's name (the registry key, or the CSV file name).
        true_params: None, or for generated data a dict of float64 arrays
            ``weights`` (n_components,), ``means`` (n_components, n_features),
            ``covariances`` (n_components, n_features, n_features).
        label_names: tuple of str, the original label of each int label, or None.
    """

    x: np.ndarray
    labels: np.ndarray | None
    feature_names: tuple
    name: str
    true_params: dict | None = None
    label_names: tuple | None = None

    @property
    def n_samples(self):
        return self.x.shape[0]

    @property
    def n_features(self):
        return self.x.shape[1]


# --------------------------------------------------------------------------- loading


def _option(config_data, dataset, key):
    value = config_data.get(key)
    return DATASET_OPTIONS[dataset][key] if value is None else value


def _parse_float(cell):
    """float(cell), or None if the cell is missing or not a finite number."""
    if cell.strip().lower() in _MISSING:
        return None
    try:
        value = float(cell)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _label_codes(values):
    """Map label strings to ints 0..n-1; numeric labels sort numerically, not as text."""
    try:
        keys = {v: float(v) for v in set(values)}
    except ValueError:
        keys = {v: v for v in set(values)}
    names = tuple(sorted(keys, key=keys.get))
    code = {name: i for i, name in enumerate(names)}
    return np.array([code[v] for v in values], dtype=np.int64), names


def _decode(path, data):
    """The text of a file's bytes: UTF-8 (a byte-order mark dropped), else Latin-1 with a
    `DataWarning` (numbers are ASCII either way; only names and labels can differ)."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        warnings.warn(
            f"{path}: not UTF-8 (byte 0x{data[error.start]:02x} on line {line}); read as "
            "Latin-1, so check the column names and labels (save the file as UTF-8 to "
            "silence this)",
            DataWarning,
            stacklevel=3,
        )
        return data.decode("latin-1")


def _delimiter(text):
    """',' unless the header line has none and has ';' or a tab (a semicolon-separated
    file, as spreadsheets write where ',' is the decimal mark, or a TSV)."""
    header = next((line for line in text.splitlines() if line.strip()), "")
    if "," not in header:
        for candidate in (";", "\t"):
            if candidate in header:
                return candidate
    return ","


def _bad_cell_message(path, column, line, cell, delimiter):
    message = f"{path}: column {column!r}, line {line}: expected a finite number, got {cell!r}"
    stripped = cell.strip()
    if "," in stripped and _parse_float(stripped.replace(",", ".")) is not None:
        message += (
            f" (a decimal comma? the file is {'semicolon' if delimiter == ';' else 'tab'}"
            "-separated; write decimals with '.')"
            if delimiter != ","
            else " (a decimal comma? write decimals with '.')"
        )
    return message


def _column_label(header, j):
    return repr(header[j]) if header[j] else f"{j + 1} (unnamed)"


def _default_columns(path, header, body, index, label_column, drop=()):
    """(columns, notes, ids): the default feature columns, every column but the label and
    those in ``drop`` holding at least one number; a sentence for each column left out
    (all text, or every cell missing) and each kept column that looks like a row id; and
    those id-like columns' (name, smallest, largest)."""
    columns, notes, ids = [], [], []
    for j, h in enumerate(header):
        if h == label_column or h in drop:
            continue
        cells = [row[index[h]] for _, row in body]
        values = [_parse_float(c) for c in cells]
        numbers = [v for v in values if v is not None]
        if not numbers:
            if all(c.strip().lower() in _MISSING for c in cells):
                why = "every cell is blank or NA"
            else:
                why = "it holds text, no numbers"
                if label_column is None:
                    why += " (set data.label_column to use it as class labels)"
            notes.append(
                f"{path}: column {_column_label(header, j)} is not used as a feature: {why}"
            )
            continue
        columns.append(h)
        if (
            len(numbers) == len(cells) >= _ID_MIN_ROWS
            and all(float(v).is_integer() for v in numbers)
            and len(set(numbers)) == len(numbers)
        ):
            ids.append((h, int(min(numbers)), int(max(numbers))))
            notes.append(
                f"{path}: column {_column_label(header, j)} holds distinct integers, one per "
                "row, like a row id, and is used as a feature; if it is an identifier, list "
                "the feature columns in data.columns without it"
            )
    return columns, notes, ids


def _id_columns_message(path, ids):
    names = [n for n, _, _ in ids]
    what = ", ".join(f"{n!r} ({lo} to {hi})" for n, lo, hi in ids)
    one = len(ids) == 1
    return (
        f"{path}: column{'' if one else 's'} {what} hold{'s' if one else ''} distinct "
        f"integers, one per row, like a row id, and would be used as "
        f"{'a feature' if one else 'features'}; leave {'it' if one else 'them'} out with "
        f"data.drop: [{', '.join(names)}], or list the feature columns in data.columns "
        "(a column listed there is used, id-like or not)"
    )


def read_csv(path, columns=None, label_column=None, name=None, drop=None, refuse_ids=False):
    """Read a numeric CSV file with a header row.

    The file is read as UTF-8 (a byte-order mark is dropped), or as Latin-1 with a
    `DataWarning` when it is not UTF-8. Fields are separated by ',' unless the header
    line has no ',' but a ';' (spreadsheets' CSV where ',' is the decimal mark) or a tab.

    Args:
        path: str or Path of the file.
        columns: list of column names to use as features, in that order. By default every
            column except ``label_column`` that holds at least one number; a number column
            with a bad cell is kept and reported, so a typo never silently drops a feature.
            A column left out by default (text only, e.g. species names, or every cell
            blank or NA) gets a `DataWarning` naming it, as does a kept column of distinct
            integers (one per row, at least 10 rows: a row id, probably not a feature).
        label_column: optional column of class labels (any strings), mapped to ints in
            sorted order (numerically when all labels are numbers).
        name: the Dataset's name; the file's stem by default.
        drop: list of column names left out of the default features (with ``columns``
            None only; every name must be a column, not the label).
        refuse_ids: raise, instead of warning, when a default feature column holds
            distinct integers (the runner's choice: an id fitted as a feature spoils
            every result, and leaving it out costs one config line).

    Returns:
        Dataset with x of shape (n_rows, len(columns)).

    Raises:
        ValueError naming the file (and the column and line where it applies) for a missing
        file, a folder, an empty file, a missing column, a row of the wrong length, or a
        used cell that is not a finite number, ``drop`` with ``columns`` or naming the
        label or a missing column, and (``refuse_ids``) an id-like default feature column.
        Line numbers count the header as line 1.
    """
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path}: is a folder, not a CSV file")
    if not path.is_file():
        raise ValueError(f"{path}: file not found")
    try:
        data = path.read_bytes()
    except OSError as error:
        raise ValueError(f"{path}: cannot read file: {error.strerror}") from None
    text = _decode(path, data)
    delimiter = _delimiter(text)
    rows = list(csv.reader(io.StringIO(text, newline=""), delimiter=delimiter))
    # Skip blank lines, keeping the file's line numbers for messages.
    rows = [(i + 1, row) for i, row in enumerate(rows) if any(c.strip() for c in row)]
    if not rows:
        raise ValueError(f"{path}: file is empty")
    _, header = rows[0]
    header = [h.strip() for h in header]
    body = rows[1:]
    if not body:
        raise ValueError(f"{path}: no data rows after the header")
    duplicates = sorted({h for h in header if header.count(h) > 1})
    if duplicates:
        raise ValueError(f"{path}: duplicate column names {duplicates}")
    for line, row in body:
        if len(row) != len(header):
            raise ValueError(f"{path}: line {line}: expected {len(header)} fields, got {len(row)}")
    index = {h: i for i, h in enumerate(header)}
    wanted = ([] if columns is None else list(columns)) + (
        [] if label_column is None else [label_column]
    )
    for column in wanted:
        if column not in index:
            raise ValueError(f"{path}: no column {column!r}; columns present: {header}")
    drop = [] if drop is None else list(drop)
    if drop:
        if columns is not None:
            raise ValueError(
                f"{path}: data.columns and data.drop are both set; give the feature columns "
                "(data.columns) or the columns to leave out (data.drop), not both"
            )
        missing = [c for c in drop if c not in index]
        if missing:
            raise ValueError(
                f"{path}: data.drop: no column(s) {missing}; columns present: {header}"
            )
        if label_column in drop:
            raise ValueError(
                f"{path}: data.drop lists the label column {label_column!r}; labels are never "
                "features, so leave it out of data.drop"
            )
    if columns is None:
        columns, notes, ids = _default_columns(path, header, body, index, label_column, drop)
        if not columns:
            raise ValueError(f"{path}: no numeric columns; columns present: {header}")
        if ids and refuse_ids:
            raise ValueError(_id_columns_message(path, ids))
        for note in notes:
            warnings.warn(note, DataWarning, stacklevel=2)
    elif not columns:
        raise ValueError(f"{path}: columns is empty; columns present: {header}")

    x = np.empty((len(body), len(columns)), dtype=np.float64)
    for j, column in enumerate(columns):
        for i, (line, row) in enumerate(body):
            value = _parse_float(row[index[column]])
            if value is None:
                raise ValueError(
                    _bad_cell_message(path, column, line, row[index[column]], delimiter)
                )
            x[i, j] = value

    labels = label_names = None
    if label_column is not None:
        raw = [row[index[label_column]].strip() for _, row in body]
        for (line, _), value in zip(body, raw):
            if value.lower() in _MISSING:
                raise ValueError(
                    f"{path}: label column {label_column!r}, line {line}: missing label"
                )
        labels, label_names = _label_codes(raw)
    return Dataset(
        x=x,
        labels=labels,
        feature_names=tuple(columns),
        name=path.stem if name is None else name,
        label_names=label_names,
    )


def _load_iris(config_data, seed):
    """Fisher's iris: (150, 4), 3 species of 50 (setosa, versicolor, virginica = 0, 1, 2)."""
    return read_csv(DATA_DIR / "iris.csv", label_column="species", name="iris")


def _load_faithful(config_data, seed):
    """Old Faithful eruptions: (272, 2) columns eruptions (min), waiting (min); no labels."""
    return read_csv(DATA_DIR / "faithful.csv", name="faithful")


def _load_csv(config_data, seed):
    path = config_data.get("path")
    if path is None:
        raise ValueError("dataset 'csv' needs data.path")
    return read_csv(
        path,
        config_data.get("columns"),
        config_data.get("label_column"),
        drop=config_data.get("drop"),
        refuse_ids=True,
    )


def _random_rotation(rng, n_features):
    """Haar-random orthogonal matrix (Mezzadri 2007: QR with the signs of R's diagonal)."""
    q, r = np.linalg.qr(rng.standard_normal((n_features, n_features)))
    return q * np.sign(np.diag(r))


def make_synthetic(seed, n_samples=500, n_components=3, n_features=2, separation=4.0):
    """Draw a Gaussian mixture with known parameters, then samples from it.

    Each covariance is R diag(s**2) R^T with R a random rotation and per-axis standard
    deviations s ~ Uniform(0.5, 1.5), so a cluster's std is about 1 in every direction.
    Means are Gaussian draws rescaled so that the closest pair is exactly ``separation``
    apart, i.e. ``separation`` is the smallest distance between means in units of the
    typical cluster std. Weights are Dirichlet(5, ..., 5): unequal but rarely tiny.

    Args:
        seed: seed for ``np.random.default_rng``.
        n_samples, n_components, n_features: ints >= 1.
        separation: float > 0.

    Returns:
        Dataset named "synthetic" with x (n_samples, n_features), labels (n_samples,)
        giving the generating component, and true_params.
    """
    for key, value in (
        ("n_samples", n_samples),
        ("n_components", n_components),
        ("n_features", n_features),
    ):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"synthetic: {key} must be an int >= 1, got {value!r}")
    if not separation > 0:
        raise ValueError(f"synthetic: separation must be > 0, got {separation!r}")
    rng = np.random.default_rng(seed)
    weights = rng.dirichlet(np.full(n_components, 5.0))
    means = rng.standard_normal((n_components, n_features))
    if n_components > 1:
        gaps = np.linalg.norm(means[:, None] - means[None], axis=-1)
        means *= separation / gaps[np.triu_indices(n_components, 1)].min()
    covariances = np.empty((n_components, n_features, n_features))
    for k in range(n_components):
        rotation = _random_rotation(rng, n_features)
        stds = rng.uniform(0.5, 1.5, size=n_features)
        covariances[k] = (rotation * stds**2) @ rotation.T
    covariances = 0.5 * (covariances + covariances.transpose(0, 2, 1))
    labels = rng.choice(n_components, size=n_samples, p=weights)
    chol = np.linalg.cholesky(covariances)
    noise = rng.standard_normal((n_samples, n_features))
    x = means[labels] + np.einsum("nde,ne->nd", chol[labels], noise)
    return Dataset(
        x=x,
        labels=labels.astype(np.int64),
        feature_names=tuple(f"x{d}" for d in range(n_features)),
        name="synthetic",
        true_params={"weights": weights, "means": means, "covariances": covariances},
    )


def _load_synthetic(config_data, seed):
    options = {key: _option(config_data, "synthetic", key) for key in DATASET_OPTIONS["synthetic"]}
    return make_synthetic(seed, **options)


# The classic 1-D EM tutorial example: three well separated groups of 100.
_TOY1D_MEANS = np.array([-10.0, 0.0, 10.0])
_TOY1D_STDS = np.array([1.5, 1.0, 2.0])
_TOY1D_PER_GROUP = 100


def _load_toy1d(config_data, seed):
    """Three 1-D groups of 100 around -10, 0, 10 (stds 1.5, 1, 2), shuffled; x is (300, 1)."""
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.repeat(np.arange(3), _TOY1D_PER_GROUP))
    x = _TOY1D_MEANS[labels] + _TOY1D_STDS[labels] * rng.standard_normal(labels.size)
    return Dataset(
        x=x[:, None],
        labels=labels.astype(np.int64),
        feature_names=("x",),
        name="toy1d",
        true_params={
            "weights": np.full(3, 1.0 / 3.0),
            "means": _TOY1D_MEANS[:, None].copy(),
            "covariances": (_TOY1D_STDS**2)[:, None, None].copy(),
        },
    )


DATASETS = {
    "iris": _load_iris,
    "faithful": _load_faithful,
    "synthetic": _load_synthetic,
    "toy1d": _load_toy1d,
    "csv": _load_csv,
}


def load_dataset(config_data, seed):
    """Load the dataset named by ``config_data["dataset"]``.

    Args:
        config_data: the config's ``data`` mapping; only the chosen dataset's options
            (see ``DATASET_OPTIONS``) are read, missing or None ones take their defaults.
            Preprocessing keys (standardize, test_fraction) are left to ``prepare``.
        seed: int seed, used by the generated datasets only.

    Returns:
        Dataset.
    """
    name = config_data.get("dataset")
    if name not in DATASETS:
        raise ValueError(f"dataset must be one of {sorted(DATASETS)}, got {name!r}")
    return DATASETS[name](config_data, seed)


# --------------------------------------------------------------------- preprocessing


def standardize(x, feature_names=None):
    """Centre each column and scale it to unit standard deviation (ddof=0).

    A constant column raises rather than being left unscaled: a GMM fitted to it has a
    zero-variance direction whose likelihood is controlled by reg_covar alone, which is
    almost always a data mistake worth hearing about.

    Args:
        x: array of shape (n_samples, n_features).
        feature_names: optional names used in the error message.

    Returns:
        (x_std, mean, scale): x_std of shape (n_samples, n_features), mean and scale of
        shape (n_features,), with x_std = (x - mean) / scale.
    """
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 1:
        raise ValueError(f"x must have shape (n_samples, n_features), got {x.shape}")
    mean = x.mean(axis=0)
    scale = x.std(axis=0)
    # Relative floor: the std of a constant column is rounding noise of order eps * |mean|.
    constant = scale <= 10 * np.finfo(np.float64).eps * np.maximum(1.0, np.abs(mean))
    if constant.any():
        names = feature_names or [f"column {j}" for j in range(x.shape[1])]
        bad = [names[j] for j in np.flatnonzero(constant)]
        raise ValueError(f"cannot standardize constant feature(s) {bad}")
    return (x - mean) / scale, mean, scale


def train_test_split(rng_seed, x, labels, test_fraction):
    """Shuffle and split rows into a training and a test part.

    The test part has ceil(test_fraction * n_samples) rows, as in scikit-learn. With
    test_fraction == 0 nothing is shuffled: train is x itself and test is empty.

    Args:
        rng_seed: anything ``np.random.default_rng`` accepts.
        x: array of shape (n_samples, n_features).
        labels: array of shape (n_samples,), or None.
        test_fraction: float with 0 <= test_fraction < 1.

    Returns:
        (x_train, x_test, labels_train, labels_test); the label parts are None when
        labels is None.

    Raises:
        ValueError if test_fraction is out of range or either part would be empty.
    """
    x = np.asarray(x)
    n_samples = x.shape[0]
    if labels is not None and len(labels) != n_samples:
        raise ValueError(f"labels has length {len(labels)}, x has {n_samples} rows")
    if not 0.0 <= test_fraction < 1.0:
        raise ValueError(f"test_fraction must satisfy 0 <= test_fraction < 1, got {test_fraction}")
    n_test = math.ceil(test_fraction * n_samples)
    if n_test == 0:
        empty_labels = None if labels is None else np.asarray(labels)[:0]
        return x, x[:0], labels, empty_labels
    if n_test >= n_samples:
        raise ValueError(
            f"test_fraction={test_fraction} of {n_samples} samples leaves no training data"
        )
    order = np.random.default_rng(rng_seed).permutation(n_samples)
    train, test = order[n_test:], order[:n_test]
    if labels is None:
        return x[train], x[test], None, None
    labels = np.asarray(labels)
    return x[train], x[test], labels[train], labels[test]


def _standardize_params(true_params, mean, scale):
    """Express true parameters in standardised coordinates, x' = (x - mean) / scale."""
    return {
        "weights": true_params["weights"],
        "means": (true_params["means"] - mean) / scale,
        "covariances": true_params["covariances"] / np.outer(scale, scale),
    }


def prepare(dataset, seed, standardize_data=False, test_fraction=0.0):
    """Split a Dataset, then standardise both parts with the training statistics.

    Standardising after the split keeps test statistics out of training; true_params
    are transformed to the same coordinates so recovery errors stay meaningful.

    Args:
        dataset: Dataset.
        seed: int; the split uses a stream derived from it, independent of the one a
            synthetic dataset was drawn with.
        standardize_data: bool (config ``data.standardize``).
        test_fraction: float (config ``data.test_fraction``).

    Returns:
        (train, test, (mean, scale)): Datasets (test is None when test_fraction == 0) and
        the standardisation applied, or None when standardize_data is False.
    """
    split_seed = np.random.SeedSequence([seed, 1])
    x_train, x_test, y_train, y_test = train_test_split(
        split_seed, dataset.x, dataset.labels, test_fraction
    )
    true_params, transform = dataset.true_params, None
    if standardize_data:
        x_train, mean, scale = standardize(x_train, dataset.feature_names)
        x_test = (x_test - mean) / scale
        transform = (mean, scale)
        if true_params is not None:
            true_params = _standardize_params(true_params, mean, scale)
    train = dataclasses.replace(dataset, x=x_train, labels=y_train, true_params=true_params)
    test = None
    if x_test.shape[0] > 0:
        test = dataclasses.replace(dataset, x=x_test, labels=y_test, true_params=true_params)
    return train, test, transform
