"""KLL sketch interop with Apache DataSketches for Python (the `datasketches` package).

Reads SKETCH (a KLL float sketch serialized by Outpost), prints JSON with its `n`, `k`,
min, max and its inclusive quantiles at RANKS; then sketches the values of VALUES (one float
per line) with `kll_floats_sketch(200)` and writes the serialized sketch to OUT, for Outpost to
read back.

Usage: python kll_interop.py SKETCH VALUES OUT
"""

import json
import sys
from pathlib import Path

from datasketches import kll_floats_sketch

RANKS = [0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99]


def main():
    sketch_path, values_path, out_path = (Path(arg) for arg in sys.argv[1:4])
    ours = kll_floats_sketch.deserialize(sketch_path.read_bytes())
    theirs = kll_floats_sketch(200)
    for line in values_path.read_text().split():
        theirs.update(float(line))
    out_path.write_bytes(theirs.serialize())
    json.dump(
        {
            "n": ours.n,
            "k": ours.k,
            "min": ours.get_min_value(),
            "max": ours.get_max_value(),
            "ranks": RANKS,
            "quantiles": [ours.get_quantile(rank, True) for rank in RANKS],
            "their_quantiles": [theirs.get_quantile(rank, True) for rank in RANKS],
        },
        sys.stdout,
    )


if __name__ == "__main__":
    main()
