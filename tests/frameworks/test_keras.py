"""A real ``model.fit`` on Keras 3's torch backend (set in conftest.py before keras loads)."""

from __future__ import annotations

import math
from typing import Any

import keras
import numpy as np
import pytest
from readback import epochs, points, run

from mlbench_metrics.integrations.keras import MLBenchCallback
from mlbench_metrics.server import ServerHandle


class _Seen(keras.callbacks.Callback):  # type: ignore[misc]
    """What Keras handed its callbacks, to compare with what was stored."""

    def __init__(self) -> None:
        super().__init__()
        self.batches: list[dict[str, float]] = []
        self.epochs: list[dict[str, float]] = []

    def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
        self.batches.append(dict(logs))

    def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
        self.epochs.append(dict(logs))


def _model() -> keras.Model:
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, activation="relu"), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=0.05), loss="mse", metrics=["mae"])
    return model


def _data(n: int) -> tuple[np.ndarray, np.ndarray]:
    x = np.random.default_rng(0).normal(size=(n, 4)).astype("float32")
    return x, x.sum(axis=1, keepdims=True)


def test_fit_records_every_batch_and_epoch_with_its_step_the_settings_and_the_end(server: ServerHandle) -> None:
    assert keras.backend.backend() == "torch"
    callback = MLBenchCallback(new_run="keras-fit", url=server.address)
    seen = _Seen()
    x, y = _data(32)
    _model().fit(x, y, batch_size=8, epochs=2, validation_data=_data(8), verbose=0, callbacks=[callback, seen])

    run_id = callback.run_id
    assert isinstance(run_id, int)
    stored = points(server, run_id)
    expected: dict[str, list[tuple[int, float]]] = {}
    for i, logs in enumerate(seen.batches, start=1):
        for name, value in logs.items():
            expected.setdefault("batch_" + name, []).append((i, value))
    for i, logs in enumerate(seen.epochs, start=1):
        for name, value in logs.items():
            expected.setdefault("epoch_" + name, []).append((4 * i, value))
    assert {"batch_loss", "batch_mae", "epoch_loss", "epoch_val_loss", "epoch_val_mae"} <= set(expected)
    assert sorted(stored) == sorted(expected)
    for name, rows in expected.items():
        assert [s for s, _ in stored[name]] == [s for s, _ in rows], name
        assert all(math.isclose(a, b, rel_tol=1e-6) for (_, a), (_, b) in zip(stored[name], rows)), name
    assert epochs(server, run_id, "batch_loss") == [0] * 4 + [1] * 4
    assert epochs(server, run_id, "epoch_loss") == [0, 1]
    config = run(server, run_id).config()
    assert (config["epochs"], config["steps"]) == (2, 4)
    assert config["optimizer"]["learning_rate"] == pytest.approx(0.05)
    assert run(server, run_id).state == "finished"


def test_every_nth_batch(server: ServerHandle) -> None:
    callback = MLBenchCallback(new_run="keras-every", url=server.address, update_freq=3)
    x, y = _data(64)
    _model().fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=[callback])
    assert callback.step == 8
    stored = points(server, callback.run_id or 0)
    assert [s for s, _ in stored["batch_loss"]] == [3, 6]
    assert [s for s, _ in stored["epoch_loss"]] == [8]


def test_a_bad_update_freq_is_refused() -> None:
    with pytest.raises(ValueError, match="update_freq"):
        MLBenchCallback(update_freq=0)
