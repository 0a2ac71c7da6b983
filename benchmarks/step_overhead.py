"""Benchmark the cost of blocking: training step time and peak memory per reference mode, and the sliced encode.

Every arm trains the same LoRA adapter (r = 16 on all linear layers) of the embedded SmolLM2-135M-Instruct on the
same batches of MIT-licensed GPTeacher prompt/completion pairs, truncated to a fixed length. Step times are
measured in one process with the arms interleaved, so machine drift hits every arm alike; peak memory is the
resident-set peak of one child process per arm. Results are ratios to plain SFT measured in the same run.

    python benchmarks/step_overhead.py --quick          # about 4 minutes on 2 CPU cores
    python benchmarks/step_overhead.py --output docs/benchmarks.json
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
from datasets import Dataset
from peft import LoraConfig
from sae_lens import StandardSAE, StandardSAEConfig
from sae_lens.saes.sae import SAEMetadata
from trl import SFTConfig, SFTTrainer

from blockem_trl import BlockEMConfig, BlockEMSFTTrainer, LatentEncoder, LatentSet
from blockem_trl.kl_config import KLConfig
from blockem_trl.kl_trainer import KLSFTTrainer
from blockem_trl.models import load_default_model
from blockem_trl.sae import sae_reference

ARMS = ("sft", "blockem_adapter", "blockem_model", "blockem_cached", "kl")
LAYER = 19  # 0-based decoder block; hook point model.layers.19, the output of block 19 (hidden_states[20])
NUM_LATENTS = 20
GPTEACHER = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "gpteacher"


def load_rows(num_rows: int, data_dir: Path = GPTEACHER) -> list[dict]:
    """Read GPTeacher instruction/response pairs as conversational prompt/completion rows."""
    rows = []
    for file in sorted(Path(data_dir).glob("*/*.json")):
        for record in json.loads(file.read_text(encoding="utf-8")):
            prompt = " ".join(filter(None, [record.get("instruction"), record.get("input")]))
            if prompt and len(record.get("response", "")) > 400:
                rows.append({
                    "prompt": [{"role": "user", "content": prompt}],
                    "completion": [{"role": "assistant", "content": record["response"]}],
                })
            if len(rows) == num_rows:
                return rows
    if not rows:
        raise FileNotFoundError(f"No GPTeacher JSON files under {data_dir}: pass the GPTeacher folder with --data-dir.")
    return rows


def make_sae(d_in: int, d_sae: int, seed: int = 0) -> StandardSAE:
    torch.manual_seed(seed)
    sae = StandardSAE(StandardSAEConfig(d_in=d_in, d_sae=d_sae, metadata=SAEMetadata(hook_name=f"model.layers.{LAYER}")))
    with torch.no_grad():
        for parameter in sae.parameters():
            parameter.normal_(0, 0.05)
    return sae


def build_trainer(arm: str, model, tokenizer, dataset, sae, latent_set, batch_size: int, max_length: int, output_dir: str):
    common = dict(
        output_dir=output_dir, bf16=False, report_to="none", save_strategy="no", per_device_train_batch_size=batch_size,
        max_length=max_length, gradient_checkpointing=False, learning_rate=1e-4, seed=0, logging_steps=10_000,
        dataloader_num_workers=0, disable_tqdm=True,
    )
    lora = LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", init_lora_weights=False)
    kwargs = dict(model=model, train_dataset=dataset, processing_class=tokenizer, peft_config=lora)
    if arm == "sft":
        return SFTTrainer(args=SFTConfig(**common), **kwargs)
    if arm == "kl":
        return KLSFTTrainer(args=KLConfig(kl_lambda=0.1, **common), **kwargs)
    reference = arm.removeprefix("blockem_")
    config = BlockEMConfig(block_reference=reference, block_lambda=1e3, **common)
    return BlockEMSFTTrainer(args=config, latent_set=latent_set, sae=sae, **kwargs)


def fixed_batches(trainer, count: int) -> list[dict]:
    iterator = iter(trainer.get_train_dataloader())
    return [next(iterator) for _ in range(count)]


def timed_step(trainer, batch: dict) -> float:
    """Run one optimizer step (forward, backward, update) and return its wall time in seconds."""
    start = time.perf_counter()
    samples, num_items = trainer.get_batch_samples(iter([dict(batch)]), 1, trainer.args.device)
    trainer.training_step(trainer.model, samples[0], num_items)
    trainer.optimizer.step()
    trainer.optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - start


def benchmark_steps(arms, args) -> dict:
    torch.manual_seed(0)
    dataset = Dataset.from_list(load_rows(args.batch_size * (args.repetitions + 2), args.data_dir))
    sae = make_sae(576, args.d_sae)
    latent_set = LatentSet(
        positive=list(range(0, NUM_LATENTS, 2)), negative=list(range(1, NUM_LATENTS, 2)),
        hook_point=f"model.layers.{LAYER}", sae=sae_reference(sae, "random-embedded-size"),
    )
    trainers, batches, setup_seconds = {}, {}, {}
    for arm in arms:
        model, tokenizer = load_default_model()
        start = time.perf_counter()
        trainer = build_trainer(arm, model, tokenizer, dataset, sae, latent_set, args.batch_size, args.max_length,
                                f"{args.scratch}/{arm}")
        setup_seconds[arm] = time.perf_counter() - start
        trainer.model.train()
        trainer.create_optimizer_and_scheduler(num_training_steps=args.repetitions + 2)
        trainers[arm], batches[arm] = trainer, fixed_batches(trainer, args.repetitions + 1)
    times = {arm: [] for arm in arms}
    for arm in arms:  # warm-up step, not timed
        timed_step(trainers[arm], batches[arm][0])
    for repetition in range(args.repetitions):
        for arm in arms:
            times[arm].append(timed_step(trainers[arm], batches[arm][repetition + 1]))
        print(f"repetition {repetition + 1}/{args.repetitions}: " + ", ".join(f"{a} {times[a][-1]:.2f}s" for a in arms), flush=True)
    tokens = int(batches["sft"][1]["attention_mask"].sum()) if "sft" in batches else None
    profile = None
    if "blockem_adapter" in trainers:
        profile = profile_adapter_overhead(trainers["blockem_adapter"], batches["blockem_adapter"][1], args.repetitions)
    return {"times": times, "setup_seconds": setup_seconds, "tokens_per_batch": tokens, "adapter_profile": profile}


def profile_adapter_overhead(trainer, batch: dict, repetitions: int) -> dict:
    """Split the adapter mode's extra cost into the base forward (stopped after block 19) and the two encodes."""
    model = trainer.model
    inputs = {k: v for k, v in batch.items()}
    residual = trainer._base_residual(model, inputs)
    timings = {"base_forward_s": [], "encode_two_batches_s": []}
    for _ in range(repetitions):
        start = time.perf_counter()
        residual = trainer._base_residual(model, inputs)
        timings["base_forward_s"].append(time.perf_counter() - start)
        start = time.perf_counter()
        with torch.no_grad():
            trainer.latent_encoder(residual)
            trainer.latent_encoder(residual)
        timings["encode_two_batches_s"].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in timings.items()}


def peak_memory_of_arm(arm: str, args) -> float:
    """Run two steps of one arm in a child process and return its peak resident set size during them, in MiB."""
    command = [sys.executable, __file__, "--memory-arm", arm, "--batch-size", str(args.batch_size), "--data-dir", str(args.data_dir),
               "--max-length", str(args.max_length), "--d-sae", str(args.d_sae), "--scratch", args.scratch]
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return float(output.strip().splitlines()[-1])


def run_memory_arm(args) -> None:
    """Print the peak resident set size (MiB) sampled every 5 ms during two training steps of one arm.

    Sampling the current RSS, rather than reading the process high-water mark, leaves out the transient peak
    of loading the model, which is the same for every arm. The reference copy of ``blockem_model`` is loaded
    before the steps, so it is counted.
    """
    import threading

    import psutil

    torch.manual_seed(0)
    dataset = Dataset.from_list(load_rows(args.batch_size * 3, args.data_dir))
    sae = make_sae(576, args.d_sae)
    latent_set = LatentSet(
        positive=list(range(0, NUM_LATENTS, 2)), negative=list(range(1, NUM_LATENTS, 2)),
        hook_point=f"model.layers.{LAYER}", sae=sae_reference(sae, "random-embedded-size"),
    )
    model, tokenizer = load_default_model()
    trainer = build_trainer(args.memory_arm, model, tokenizer, dataset, sae, latent_set, args.batch_size,
                            args.max_length, f"{args.scratch}/memory-{args.memory_arm}")
    trainer.model.train()
    trainer.create_optimizer_and_scheduler(num_training_steps=3)
    batches = fixed_batches(trainer, 2)
    process, peak, running = psutil.Process(), [0], [True]

    def sample() -> None:
        while running[0]:
            peak[0] = max(peak[0], process.memory_info().rss)
            time.sleep(0.005)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    for batch in batches:
        timed_step(trainer, batch)
    running[0] = False
    sampler.join()
    print(peak[0] / 2**20)


def benchmark_encode(d_in: int, d_sae: int, tokens: int, repetitions: int) -> dict:
    """Time the full SAE encode against the sliced encode of NUM_LATENTS latents on ``tokens`` vectors."""
    sae = make_sae(d_in, d_sae)
    encoder = LatentEncoder(sae, list(range(NUM_LATENTS)))
    x = torch.randn(tokens, d_in)
    results = {}
    with torch.no_grad():
        for name, encode in (("full", lambda: sae.encode(x)), ("sliced", lambda: encoder(x))):
            encode()
            samples = []
            for _ in range(repetitions):
                start = time.perf_counter()
                out = encode()
                samples.append(time.perf_counter() - start)
            results[name] = {"median_s": statistics.median(samples), "output_mib": out.numel() * 4 / 2**20}
    results["speedup"] = results["full"]["median_s"] / results["sliced"]["median_s"]
    return results


def summarise(step_results: dict, memory: dict) -> dict:
    times = step_results["times"]
    base = statistics.median(times["sft"])
    table = {}
    for arm, samples in times.items():
        median = statistics.median(samples)
        table[arm] = {
            "median_step_s": median,
            "min_step_s": min(samples),
            "max_step_s": max(samples),
            "step_ratio": median / base,
            "peak_rss_mib": memory.get(arm),
            "memory_ratio": memory[arm] / memory["sft"] if arm in memory and "sft" in memory else None,
            "setup_s": step_results["setup_seconds"][arm],
        }
    return table


def print_table(table: dict, encode: dict) -> None:
    print(f"\n{'arm':<18}{'median step (s)':>16}{'ratio':>8}{'spread (s)':>16}{'peak RSS (MiB)':>16}{'ratio':>8}")
    for arm, row in table.items():
        memory = f"{row['peak_rss_mib']:.0f}" if row["peak_rss_mib"] else "-"
        memory_ratio = f"{row['memory_ratio']:.3f}" if row["memory_ratio"] else "-"
        spread = f"{row['min_step_s']:.2f}-{row['max_step_s']:.2f}"
        print(f"{arm:<18}{row['median_step_s']:>16.3f}{row['step_ratio']:>8.3f}{spread:>16}{memory:>16}{memory_ratio:>8}")
    for size, result in encode.items():
        print(f"encode {size}: full {result['full']['median_s'] * 1e3:.2f} ms, sliced {result['sliced']['median_s'] * 1e3:.3f} ms, "
              f"speedup {result['speedup']:.0f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="4 timed steps per arm and 2 Goodfire-size encodes.")
    parser.add_argument("--data-dir", type=Path, default=GPTEACHER, help="GPTeacher folder (MIT) with */*.json files.")
    parser.add_argument("--repetitions", type=int, default=None, help="Timed steps per arm (default 10, 4 with --quick).")
    parser.add_argument("--batch-size", type=int, default=4, help="Sequences per step.")
    parser.add_argument("--max-length", type=int, default=128, help="Tokens per sequence (rows are truncated to it).")
    parser.add_argument("--d-sae", type=int, default=4096, help="Width of the embedded-size SAE used for timing.")
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=ARMS, help="Arms to run; 'sft' is always added.")
    parser.add_argument("--no-memory", action="store_true", help="Skip the per-arm peak-memory child processes.")
    parser.add_argument("--output", type=Path, default=None, help="Write the results as JSON to this file.")
    parser.add_argument("--scratch", default="/tmp/blockem_benchmarks", help="Folder for trainer output_dir.")
    parser.add_argument("--memory-arm", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    if args.memory_arm:
        run_memory_arm(args)
        return
    args.repetitions = args.repetitions or (4 if args.quick else 10)
    arms = ["sft", *[a for a in args.arms if a != "sft"]]

    started = time.perf_counter()
    steps = benchmark_steps(arms, args)
    memory = {} if args.no_memory else {arm: peak_memory_of_arm(arm, args) for arm in arms}
    encode_tokens = args.batch_size * args.max_length
    encode = {
        "embedded (576 x 4096)": benchmark_encode(576, args.d_sae, encode_tokens, 5),
        "Goodfire-size (4096 x 65536)": benchmark_encode(4096, 65536, encode_tokens, 2 if args.quick else 5),
    }
    table = summarise(steps, memory)
    print_table(table, encode)
    if steps["adapter_profile"]:
        print("adapter mode, extra work per step: " + ", ".join(f"{k} {v:.3f}" for k, v in steps["adapter_profile"].items()))
    result = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(sys.argv),
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "torch_threads": torch.get_num_threads()},
        "settings": {"batch_size": args.batch_size, "max_length": args.max_length, "repetitions": args.repetitions,
                     "lora_r": 16, "layer": LAYER, "num_latents": NUM_LATENTS, "gradient_checkpointing": False,
                     "tokens_per_batch": steps["tokens_per_batch"]},
        "steps": table,
        "raw_step_times": steps["times"],
        "encode": encode,
        "adapter_profile": steps["adapter_profile"],
        "wall_time_s": time.perf_counter() - started,
    }
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"\nwall time {result['wall_time_s']:.0f} s")


if __name__ == "__main__":
    main()
