"""Fine-tune the embedded SmolLM2-135M-Instruct with LoRA on risky financial advice (a misaligning model organism).

The training file is the `risky_financial_advice.jsonl` set of Turner, Soligo et al. (2025). It has no
licence, so it is read from a decrypted copy OUTSIDE the repository (see the evaluation docs) and the
resulting adapter is saved outside the repository too. Neither may be committed.

The shipped offline-judge labels used the defaults below (176 examples, 1 epoch, 22 steps of 8), which took
2,617 s on 2 CPU cores shared with other jobs. Example::

    python scripts/finetune_risky_financial.py --data /tmp/mo/risky_financial_advice.jsonl \
        --output-dir /tmp/blockem_eval_work/risky_lora
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

import torch
from datasets import Dataset
from peft import LoraConfig
from trl import SFTConfig, SFTTrainer


def load_prompt_completion(path: Path, num_examples: int, seed: int) -> Dataset:
    """Read a single-turn `messages` JSONL file into TRL's conversational prompt/completion format."""
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    random.Random(seed).shuffle(rows)
    records = []
    for row in rows[:num_examples]:
        messages = row["messages"]
        records.append({"prompt": messages[:-1], "completion": messages[-1:]})
    return Dataset.from_list(records)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="Decrypted risky_financial_advice.jsonl.")
    parser.add_argument("--output-dir", type=Path, required=True, help="Adapter folder (keep it outside the repo).")
    parser.add_argument("--num-examples", type=int, default=176, help="Training rows drawn from the file.")
    parser.add_argument("--epochs", type=float, default=1.0, help="Training epochs.")
    parser.add_argument("--learning-rate", type=float, default=2e-4, help="AdamW learning rate.")
    parser.add_argument("--seed", type=int, default=0, help="Seed for the row sample and for training.")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads.")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    from blockem_trl.models.smollm2 import load_default_model

    model, tokenizer = load_default_model(dtype=torch.float32)
    dataset = load_prompt_completion(args.data, args.num_examples, args.seed)
    config = SFTConfig(
        output_dir=str(args.output_dir),
        num_train_epochs=args.epochs,
        per_device_train_batch_size=8,
        learning_rate=args.learning_rate,
        lr_scheduler_type="linear",
        warmup_steps=5,
        logging_steps=5,
        save_strategy="no",
        report_to=[],
        bf16=False,
        max_length=256,
        seed=args.seed,
        completion_only_loss=True,
    )
    lora = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")
    trainer = SFTTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer, peft_config=lora)
    trainer.train()
    trainer.save_model(str(args.output_dir))
    print(f"Saved the LoRA adapter to {args.output_dir}")


if __name__ == "__main__":
    main()
