"""Keras 3: ``model.fit(..., callbacks=[MLBenchCallback(...)])``, on any backend.

pip install -e '.[frameworks]'
KERAS_BACKEND=torch python examples/keras_fit.py          # starts an embedded server
python examples/keras_fit.py --url 127.0.0.1:8080          # or logs to a running one
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("KERAS_BACKEND", "torch")  # the backend installed by the [frameworks] extra

import keras
import numpy as np

from mlbench_metrics import Run
from mlbench_metrics.integrations.keras import MLBenchCallback


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help="a running server (default: start an embedded one)")
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    url, server = args.url or os.environ.get("MLBENCH_METRICS_URL"), None
    if url is None:
        from mlbench_metrics.server import serve

        server = serve()
        url = server.address

    x = np.random.default_rng(0).normal(size=(512, 8)).astype("float32")
    y = x.sum(axis=1, keepdims=True)
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, activation="relu"), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="mse", metrics=["mae"])
    callback = MLBenchCallback(new_run="example-keras", url=url)
    model.fit(x, y, batch_size=32, epochs=args.epochs, validation_split=0.2, verbose=0, callbacks=[callback])

    run = Run.get(callback.run_id or 0, url=url)
    print(f"run {run.id} {run.state}: optimizer {run.config()['optimizer']['name']}")
    for name, points in sorted(run.metrics().items()):
        print(f"  {name}: {len(points)} points")
    if server is not None:
        server.stop()


if __name__ == "__main__":
    main()
