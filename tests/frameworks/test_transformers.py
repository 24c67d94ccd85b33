"""A real ``Trainer.train`` on a tiny BERT built from a config (nothing downloaded)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from readback import points, run
from transformers import BertConfig, BertForSequenceClassification, Trainer, TrainingArguments

from mlbench_metrics.integrations.transformers import MLBenchCallback
from mlbench_metrics.server import ServerHandle


def _dataset(n: int) -> list[dict[str, Any]]:
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(1, 50, (n, 8), generator=generator)
    return [
        {"input_ids": row, "attention_mask": torch.ones(8, dtype=torch.long), "labels": int(row[0] % 2)} for row in ids
    ]


def test_train_records_every_log_with_its_step_the_config_and_the_end(server: ServerHandle, tmp_path: Path) -> None:
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, num_labels=2
    )
    model = BertForSequenceClassification(config)
    args = TrainingArguments(
        output_dir=str(tmp_path),
        max_steps=6,
        logging_steps=1,
        eval_strategy="steps",
        eval_steps=3,
        per_device_train_batch_size=4,
        per_device_eval_batch_size=4,
        learning_rate=1e-3,
        report_to="none",
        save_strategy="no",
        use_cpu=True,
        disable_tqdm=True,
        seed=0,
    )
    callback = MLBenchCallback(new_run="hf-train", url=server.address)
    trainer = Trainer(
        model=model, args=args, train_dataset=_dataset(24), eval_dataset=_dataset(8), callbacks=[callback]
    )
    trainer.train()

    run_id = callback.run_id
    assert isinstance(run_id, int)
    stored = points(server, run_id)
    expected: dict[str, list[tuple[int, float]]] = {}
    for entry in trainer.state.log_history:
        for name, value in entry.items():
            if name != "step":
                expected.setdefault(name, []).append((entry["step"], float(value)))
    assert {"loss", "learning_rate", "grad_norm", "eval_loss", "epoch", "train_runtime"} <= set(expected)
    assert sorted(stored) == sorted(expected)
    for name, rows in expected.items():
        assert [s for s, _ in stored[name]] == [s for s, _ in rows], name
        assert all(math.isclose(a, b, rel_tol=1e-6) for (_, a), (_, b) in zip(stored[name], rows)), name

    stored_config = run(server, run_id).config()
    assert stored_config["learning_rate"] == 1e-3
    assert stored_config["max_steps"] == 6
    assert stored_config["hidden_size"] == 16
    assert stored_config["model_type"] == "bert"
    assert run(server, run_id).state == "finished"

    trainer.evaluate()  # after the end: the same run
    callback.close()
    assert [s for s, _ in points(server, run_id)["eval_loss"]] == [3, 6, 6]
