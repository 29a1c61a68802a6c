"""Reference drift numbers from scipy, for checking `outpost drift` against them.

Writes two pairs of CSV files with known shifts into OUT (fixed seed, so the data is the same
on every run) and `expected.json` with, per dataset and column, what scipy and numpy compute:

- numeric columns: the reference-quantile bin edges (numpy's linear `quantile`), counts over
  them with underflow/overflow bins, PSI (empty bins smoothed to 1e-4),
  `scipy.spatial.distance.jensenshannon(base=2)`, `scipy.stats.ks_2samp` (statistic and
  p-value; exact for these sample sizes), `scipy.stats.wasserstein_distance` and the normed
  Wasserstein distance (divided by the reference's population standard deviation);
- categorical columns: counts per category, PSI, Jensen-Shannon and
  `scipy.stats.chi2_contingency(correction=False)`.

Usage: python scipy_reference.py OUT
"""

import csv
import json
import sys
from pathlib import Path

import numpy as np
from scipy.spatial.distance import jensenshannon
from scipy.stats import chi2_contingency, ks_2samp, wasserstein_distance

BINS = 10
PSI_EPSILON = 1e-4


def psi(reference_counts, current_counts):
    p = np.asarray(reference_counts, dtype=float)
    q = np.asarray(current_counts, dtype=float)
    p = np.maximum(p / p.sum(), PSI_EPSILON)
    q = np.maximum(q / q.sum(), PSI_EPSILON)
    return float(np.sum((q - p) * np.log(q / p)))


def numeric_expectation(reference, current):
    reference = np.asarray([v for v in reference if v is not None], dtype=float)
    current = np.asarray([v for v in current if v is not None], dtype=float)
    edges = np.unique(np.quantile(reference, np.linspace(0.0, 1.0, BINS + 1)))

    def counts(values):
        inside, _ = np.histogram(values, bins=edges)
        below = int(np.sum(values < edges[0]))
        above = int(np.sum(values > edges[-1]))
        return [below, *[int(c) for c in inside], above]

    reference_counts, current_counts = counts(reference), counts(current)
    ks = ks_2samp(reference, current)
    w = wasserstein_distance(reference, current)
    return {
        "kind": "numeric",
        "reference_count": int(reference.size),
        "current_count": int(current.size),
        "edges": [float(e) for e in edges],
        "reference_counts": reference_counts,
        "current_counts": current_counts,
        "psi": psi(reference_counts, current_counts),
        "js_distance": float(jensenshannon(reference_counts, current_counts, base=2)),
        "ks_statistic": float(ks.statistic),
        "ks_p_value": float(ks.pvalue),
        "wasserstein": float(w),
        "normed_wasserstein": float(w / np.std(reference)),
    }


def categorical_expectation(reference, current):
    reference = [v for v in reference if v is not None]
    current = [v for v in current if v is not None]
    categories = sorted(set(reference) | set(current))
    reference_counts = [reference.count(c) for c in categories]
    current_counts = [current.count(c) for c in categories]
    chi = chi2_contingency(np.array([reference_counts, current_counts]), correction=False)
    return {
        "kind": "categorical",
        "reference_count": len(reference),
        "current_count": len(current),
        "categories": categories,
        "reference_counts": reference_counts,
        "current_counts": current_counts,
        "psi": psi(reference_counts, current_counts),
        "js_distance": float(jensenshannon(reference_counts, current_counts, base=2)),
        "chi_square_statistic": float(chi.statistic),
        "chi_square_dof": int(chi.dof),
        "chi_square_p_value": float(chi.pvalue),
    }


def write_csv(path, columns):
    names = list(columns)
    rows = len(columns[names[0]])
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(names)
        for i in range(rows):
            writer.writerow(
                ["" if columns[n][i] is None else columns[n][i] for n in names]
            )


def with_missing(values, every):
    return [None if i % every == 0 else v for i, v in enumerate(values)]


def main(out):
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(20261124)
    datasets = {}

    # Dataset "a": 5000 reference rows, 4000 current rows, one column per kind of shift.
    n_ref, n_cur = 5000, 4000
    reference = {
        "no_shift": with_missing([repr(float(v)) for v in rng.normal(0.0, 1.0, n_ref)], 97),
        "mean_shift": [repr(float(v)) for v in rng.normal(10.0, 2.0, n_ref)],
        "variance_change": [repr(float(v)) for v in rng.normal(0.0, 1.0, n_ref)],
        "tier": [str(v) for v in rng.choice([1, 2, 3, 4], n_ref, p=[0.4, 0.3, 0.2, 0.1])],
        "colour": list(rng.choice(["red", "green", "blue"], n_ref, p=[0.5, 0.3, 0.2])),
        "new_category": list(rng.choice(["a", "b", "c"], n_ref, p=[0.5, 0.3, 0.2])),
    }
    current = {
        "no_shift": with_missing([repr(float(v)) for v in rng.normal(0.0, 1.0, n_cur)], 89),
        "mean_shift": [repr(float(v)) for v in rng.normal(11.0, 2.0, n_cur)],
        "variance_change": [repr(float(v)) for v in rng.normal(0.0, 1.6, n_cur)],
        "tier": [str(v) for v in rng.choice([1, 2, 3, 4], n_cur, p=[0.4, 0.3, 0.2, 0.1])],
        "colour": list(rng.choice(["red", "green", "blue"], n_cur, p=[0.5, 0.3, 0.2])),
        "new_category": list(
            rng.choice(["a", "b", "c", "d"], n_cur, p=[0.45, 0.27, 0.18, 0.10])
        ),
    }
    write_csv(out / "a-reference.csv", reference)
    write_csv(out / "a-current.csv", current)
    as_number = lambda cells: [None if c is None else float(c) for c in cells]
    datasets["a"] = {
        "categorical_flag": ["tier"],
        "columns": {
            "no_shift": numeric_expectation(
                as_number(reference["no_shift"]), as_number(current["no_shift"])
            ),
            "mean_shift": numeric_expectation(
                as_number(reference["mean_shift"]), as_number(current["mean_shift"])
            ),
            "variance_change": numeric_expectation(
                as_number(reference["variance_change"]),
                as_number(current["variance_change"]),
            ),
            "tier": categorical_expectation(reference["tier"], current["tier"]),
            "colour": categorical_expectation(reference["colour"], current["colour"]),
            "new_category": categorical_expectation(
                reference["new_category"], current["new_category"]
            ),
        },
        "expect_alert": ["mean_shift", "variance_change", "new_category"],
        "expect_no_alert": ["no_shift", "tier", "colour"],
    }

    # Dataset "b": equal sample sizes (a different path of the exact KS p-value) and a shift
    # small enough that the p-value is neither 0 nor 1.
    n = 3000
    reference = {
        "small_shift": [repr(float(v)) for v in rng.uniform(0.0, 1.0, n)],
        "same": [repr(float(v)) for v in rng.exponential(1.0, n)],
    }
    current = {
        "small_shift": [repr(float(v)) for v in rng.uniform(0.03, 1.03, n)],
        "same": [repr(float(v)) for v in rng.exponential(1.0, n)],
    }
    write_csv(out / "b-reference.csv", reference)
    write_csv(out / "b-current.csv", current)
    datasets["b"] = {
        "categorical_flag": [],
        "columns": {
            name: numeric_expectation(as_number(reference[name]), as_number(current[name]))
            for name in reference
        },
        "expect_alert": [],
        "expect_no_alert": ["same"],
    }

    (out / "expected.json").write_text(json.dumps(datasets, indent=1))


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(Path(sys.argv[1]))
