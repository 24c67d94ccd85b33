"""Hugging Face Transformers: ``Trainer(callbacks=[MLBenchCallback(...)])``.

A tiny BERT built from a config (nothing is downloaded) learns a toy task for a few steps.

    pip install -e '.[frameworks]'
    python examples/transformers_trainer.py                      # starts an embedded server
    python examples/transformers_trainer.py --url 127.0.0.1:8080 # or logs to a running one
"""

from __future__ import annotations

import os
import tempfile
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing from the hub: the model is built here

import torch
from transformers import BertConfig, BertForSequenceClassification, Trainer, TrainingArguments

from mlbench_metrics.integrations.transformers import MLBenchCallback

from _common import arguments, server_url, summary


def dataset(n: int, seed: int) -> list[dict[str, Any]]:
    """Label 1 when the sequence starts with an even token."""
    ids = torch.randint(1, 64, (n, 16), generator=torch.Generator().manual_seed(seed))
    mask = torch.ones(16, dtype=torch.long)
    return [{"input_ids": row, "attention_mask": mask, "labels": int(row[0] % 2 == 0)} for row in ids]


def main() -> None:
    args = arguments(__doc__, steps=20)
    config = BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
    model = BertForSequenceClassification(config)
    with server_url(args.url) as url, tempfile.TemporaryDirectory() as out:
        callback = MLBenchCallback(new_run="example-transformers", url=url)
        training = TrainingArguments(
            output_dir=out,
            max_steps=args.steps,
            logging_steps=2,
            eval_strategy="steps",
            eval_steps=10,
            per_device_train_batch_size=16,
            learning_rate=5e-4,
            report_to="none",  # the callback is given below; report_to cannot name it
            save_strategy="no",
            use_cpu=True,
            disable_tqdm=True,
        )
        trainer = Trainer(
            model=model,
            args=training,
            train_dataset=dataset(320, 0),
            eval_dataset=dataset(64, 1),
            callbacks=[callback],
        )
        trainer.train()  # the run is marked finished at the end
        summary(callback.run_id or 0, url, lambda run: f": {len(run.config())} settings in its config")


if __name__ == "__main__":
    main()
