"""Predict with a saved model: ``python -m experiments.predict RUN_DIR DATA.csv [--method M]
[--out FILE.csv] [--overwrite]``.

Reads the method's saved model (``RUN_DIR/models/<method>.npz``, or a saved-model file
itself), reads the model's feature columns from the CSV by name (other columns are ignored;
the same reader as the runner's, `experiments.datasets.read_csv`), applies the run's
standardisation when it had one, and writes one row per data row:

- ``row``: the data row's index (0 = the first row after the header);
- ``label``: the most probable component (0..K-1);
- ``prob_0`` .. ``prob_<K-1>``: the responsibilities (rows sum to 1);
- ``log_density``: log p(x) of the row as given in the file (nats; with a standardised
  run, the density of the standardised row plus log |Jacobian| = -sum(log scale));
- ``log_density_standardized`` (standardised runs only): log p of the standardised row,
  in the units of the run's ``metrics.json`` log-likelihoods;
- ``log_predictive_density`` (VB only): the posterior predictive (Student-t mixture)
  log-density of the row as given.

An existing output file is never replaced without ``--overwrite``. Exit codes: 0 done,
2 bad input (no such run folder, model or column; a corrupted model file), 3 the output
exists.
"""

from __future__ import annotations

import argparse
import csv
import sys
import warnings
from pathlib import Path

import numpy as np

from experiments.results_io import atomic_open


def predict(saved, x):
    """The prediction columns for data ``x`` (array of shape (n_samples, n_features), in
    the units of the data the run read) under ``saved`` (a `jaxgmm.saved.SavedModel`).

    Returns:
        dict column name -> array of shape (n_samples,), in the order written (see the
        module docstring).
    """
    import jax

    if saved.params.means.dtype == np.float64 and not jax.config.jax_enable_x64:
        # As the runner does for a float64 run: the model's numbers are float64.
        jax.config.update("jax_enable_x64", True)
    model_x = saved.transform(x)
    estimator = saved.estimator()
    log_density = np.asarray(estimator.score_samples(model_x), dtype=np.float64)
    columns = {
        "row": np.arange(model_x.shape[0]),
        "label": np.asarray(estimator.predict(model_x)),
    }
    probabilities = np.asarray(estimator.predict_proba(model_x), dtype=np.float64)
    for k in range(probabilities.shape[1]):
        columns[f"prob_{k}"] = probabilities[:, k]
    columns["log_density"] = log_density + saved.log_abs_det_jacobian
    if saved.standardize is not None:
        columns["log_density_standardized"] = log_density
    if saved.kind == "BayesianGaussianMixture":
        predictive = np.asarray(estimator.score_samples_predictive(model_x), dtype=np.float64)
        columns["log_predictive_density"] = predictive + saved.log_abs_det_jacobian
    return columns


def write_predictions(path, columns):
    """Write the `predict` columns as a CSV (atomically; floats at full precision)."""
    names = list(columns)
    with atomic_open(path, "w") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(names)
        for i in range(len(columns["row"])):
            writer.writerow(
                [
                    repr(float(columns[n][i]))
                    if np.issubdtype(np.asarray(columns[n]).dtype, np.floating)
                    else int(columns[n][i])
                    for n in names
                ]
            )


def build_parser():
    parser = argparse.ArgumentParser(
        prog="python -m experiments.predict",
        description="Labels, responsibilities and log-densities of new data under a saved model.",
    )
    parser.add_argument("run_dir", help="run folder (with models/) or a saved-model .npz file")
    parser.add_argument("data", help="CSV file with a header holding the model's feature columns")
    parser.add_argument("--method", help="which method's model (needed when the run saved several)")
    parser.add_argument(
        "--out", help="output CSV (default: <data stem>.<method>.predictions.csv here)"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output")
    return parser


def main(argv=None):
    import jaxgmm.saved
    from experiments.datasets import DataWarning, read_csv

    args = build_parser().parse_args(argv)
    try:
        saved = jaxgmm.saved.SavedModel.read(args.run_dir, args.method)
    except (FileNotFoundError, jaxgmm.saved.SavedModelError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    method = saved.provenance.get("method") or args.method or "model"
    out = Path(args.out) if args.out else Path(f"{Path(args.data).stem}.{method}.predictions.csv")
    if out.resolve() == Path(args.data).resolve():
        print(f"error: --out {out} is the input data file", file=sys.stderr)
        return 2
    if out.exists() and not args.overwrite:
        print(f"error: {out} exists; pass --overwrite to replace it", file=sys.stderr)
        return 3
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", DataWarning)
        try:
            dataset = read_csv(args.data, columns=saved.feature_names)
        except ValueError as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
    for warning in caught:
        print(f"warning: {warning.message}", file=sys.stderr)
    if dataset.n_features != saved.metadata["n_features"]:
        print(
            f"error: {args.data}: {dataset.n_features} feature columns "
            f"{list(dataset.feature_names)}, but the model has {saved.metadata['n_features']}",
            file=sys.stderr,
        )
        return 2
    columns = predict(saved, dataset.x)
    if not np.all(np.isfinite(columns["log_density"])):
        print("warning: some log-densities are not finite (rows far from every component "
              "in a float32 model?)", file=sys.stderr)  # fmt: skip
    out.parent.mkdir(parents=True, exist_ok=True)
    write_predictions(out, columns)
    note = " (standardised as in the run)" if saved.standardize is not None else ""
    print(
        f"{dataset.n_samples} rows{note}, {saved.kind} of {method!r}: columns "
        f"{', '.join(columns)} written to {out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
