"""Hugging Face Transformers: ``Trainer(callbacks=[MLBenchCallback(...)])``.

A tiny BERT built from a config (nothing is downloaded) learns a toy task for a few steps.

    pip install -e '.[frameworks]'
    python examples/transformers_trainer.py                      # starts an embedded server
    python examples/transformers_trainer.py --url 127.0.0.1:8080 # or logs to a running one
"""

from __future__ import annotations

import argparse
import os
import tempfile
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing from the hub: the model is built here

import torch
from transformers import BertConfig, BertForSequenceClassification, Trainer, TrainingArguments

from mlbench_metrics import Run
from mlbench_metrics.integrations.transformers import MLBenchCallback


def dataset(n: int, seed: int) -> list[dict[str, Any]]:
    """Label 1 when the sequence starts with an even token."""
    ids = torch.randint(1, 64, (n, 16), generator=torch.Generator().manual_seed(seed))
    mask = torch.ones(16, dtype=torch.long)
    return [{"input_ids": row, "attention_mask": mask, "labels": int(row[0] % 2 == 0)} for row in ids]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help="a running server (default: start an embedded one)")
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    url, server = args.url or os.environ.get("MLBENCH_METRICS_URL"), None
    if url is None:
        from mlbench_metrics.server import serve

        server = serve()
        url = server.address

    config = BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
    model = BertForSequenceClassification(config)
    callback = MLBenchCallback(new_run="example-transformers", url=url)
    with tempfile.TemporaryDirectory() as out:
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

    run = Run.get(callback.run_id or 0, url=url)
    print(f"run {run.id} {run.state}: {len(run.config())} settings in its config")
    for name, points in sorted(run.metrics().items()):
        print(f"  {name}: {len(points)} points")
    if server is not None:
        server.stop()


if __name__ == "__main__":
    main()
