"""Keras 3: ``model.fit(..., callbacks=[MLBenchCallback(...)])``, on any backend.

pip install -e '.[frameworks]'
KERAS_BACKEND=torch python examples/keras_fit.py          # starts an embedded server
python examples/keras_fit.py --url 127.0.0.1:8080          # or logs to a running one
"""

from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "torch")  # the backend installed by the [frameworks] extra

import keras
import numpy as np

from mlbench_metrics.integrations.keras import MLBenchCallback

from _common import arguments, server_url, summary


def main() -> None:
    args = arguments(__doc__, epochs=3)
    x = np.random.default_rng(0).normal(size=(512, 8)).astype("float32")
    y = x.sum(axis=1, keepdims=True)
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, activation="relu"), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="mse", metrics=["mae"])
    with server_url(args.url) as url:
        callback = MLBenchCallback(new_run="example-keras", url=url)
        model.fit(x, y, batch_size=32, epochs=args.epochs, validation_split=0.2, verbose=0, callbacks=[callback])
        summary(callback.run_id or 0, url, lambda run: f": optimizer {run.config()['optimizer']['name']}")


if __name__ == "__main__":
    main()
