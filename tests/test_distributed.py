"""BLOCK-EM under `accelerate launch`: two CPU processes (gloo) must train like one process on the same global batch.

Each run is one SGD step over a global batch of 8 rows: one process with 4 rows per micro-batch and 2
accumulation steps, or two processes with 2 rows each and 2 accumulation steps. The penalty is normalised
over the step's selected tokens gathered from every process, so the logged loss, the logged penalty and the
LoRA update must agree to float tolerance.

The same launch also shards the model with FSDP2 (`fully_shard`, which runs on gloo) and checks that
`compute_loss` on the sharded model gives the penalty and gradients of the unsharded model.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

WORKER = Path(__file__).resolve().parent / "distributed_worker.py"
LOGGED_VALUES = ("loss", "blockem/sft_loss", "blockem/penalty", "blockem/violating_token_fraction", "grad_norm")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _environment() -> dict[str, str]:
    return {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "HF_HUB_OFFLINE": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "ACCELERATE_USE_CPU": "true",
    }


def _run(command: list[str], output: Path) -> dict:
    completed = subprocess.run(command, env=_environment(), capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, f"{' '.join(command)} failed:\n{completed.stdout[-3000:]}\n{completed.stderr[-6000:]}"
    return torch.load(output, weights_only=False)


def _single_process(tmp_path: Path) -> dict:
    output = tmp_path / "single.pt"
    command = [sys.executable, str(WORKER), "--output", str(output), "--per_device_batch_size", "4"]
    return _run(command, output)


def _two_processes(tmp_path: Path) -> dict:
    output = tmp_path / "distributed.pt"
    # `--cpu` makes accelerate 1.16 start a single process (several CPU processes need mpirun), so the
    # processes are started as multi-GPU workers and ACCELERATE_USE_CPU=true keeps them on the CPU with gloo.
    command = [
        sys.executable, "-m", "accelerate.commands.accelerate_cli", "launch",
        "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
        "--main_process_ip", "127.0.0.1", "--main_process_port", str(_free_port()),
        "--multi_gpu", str(WORKER), "--output", str(output), "--per_device_batch_size", "2", "--check_fsdp2",
    ]  # fmt: skip
    return _run(command, output)


@pytest.fixture(scope="module")
def single_process_result(tmp_path_factory) -> dict:
    return _single_process(tmp_path_factory.mktemp("single"))


@pytest.fixture(scope="module")
def two_process_result(tmp_path_factory) -> dict:
    return _two_processes(tmp_path_factory.mktemp("distributed"))


def _assert_same_step(distributed: dict, single: dict) -> None:
    assert distributed["num_processes"] == 2
    assert single["num_processes"] == 1
    assert single["logs"]["blockem/penalty"] > 0
    assert distributed["logs"]["num_tokens"] == single["logs"]["num_tokens"]
    for key in LOGGED_VALUES:
        assert distributed["logs"][key] == pytest.approx(single["logs"][key], rel=1e-5), key
    assert distributed["update"].keys() == single["update"].keys()
    for name, update in single["update"].items():
        assert update.abs().max() > 0, name
        torch.testing.assert_close(distributed["update"][name], update, rtol=1e-4, atol=1e-7, msg=lambda message: f"{name}: {message}")


def test_ddp_two_processes_match_one(two_process_result, single_process_result):
    assert two_process_result["distributed_type"] == "DistributedType.MULTI_CPU"
    _assert_same_step(two_process_result, single_process_result)


def test_map_across_processes_keeps_order(two_process_result):
    # 7 items over 2 processes: uneven shares of 4 and 3 items.
    assert two_process_result["mapped"] == [f"{i}:{i * i}" for i in range(7)]


def test_map_across_one_process():
    from blockem_trl.distributed import map_across_processes

    assert map_across_processes(lambda share, labels: [f"{x}{y}" for x, y in zip(share, labels)], [1, 2], ["a", "b"]) == ["1a", "2b"]


def test_map_across_processes_rejects_misaligned():
    from blockem_trl.distributed import map_across_processes

    with pytest.raises(ValueError, match="has 1 entries but there are 2 items"):
        map_across_processes(lambda share, labels: share, [1, 2], ["a"])


def test_vllm_generate_reports_missing_vllm():
    from blockem_trl.distributed import is_vllm_available, vllm_generate_answers

    if is_vllm_available():
        pytest.skip("vLLM is installed")
    with pytest.raises(ImportError, match="needs vLLM, which is not installed"):
        vllm_generate_answers("some/model", ["hello"])


def test_fsdp2_sharded_loss_matches_unsharded(two_process_result):
    fsdp2 = two_process_result["fsdp2"]
    assert fsdp2["sharded_parameters"]
    assert fsdp2["reference_penalty"] > 0
    assert fsdp2["sharded_penalty"] == pytest.approx(fsdp2["reference_penalty"], rel=1e-5)
    assert fsdp2["sharded_gradients"].keys() == fsdp2["reference_gradients"].keys()
    for name, gradient in fsdp2["reference_gradients"].items():
        assert gradient.abs().max() > 0, name
        # Each process pads only its own rows, so sums run in another order: compare relative to the norm.
        error = (fsdp2["sharded_gradients"][name] - gradient).norm() / gradient.norm()
        assert error < 1e-5, f"{name}: relative error {error:.2e}"


RECIPES = Path(__file__).resolve().parent.parent / "recipes" / "accelerate"


@pytest.mark.parametrize(
    "file_name, distributed_type, settings",
    [
        ("ddp.yaml", "MULTI_GPU", {}),
        ("fsdp2.yaml", "FSDP", {"fsdp_version": 2}),
        ("deepspeed_zero2.yaml", "DEEPSPEED", {"zero_stage": 2}),
        ("deepspeed_zero3.yaml", "DEEPSPEED", {"zero_stage": 3}),
    ],
)
def test_accelerate_recipe_parses(file_name, distributed_type, settings):
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(RECIPES / file_name))
    assert config.distributed_type.name == distributed_type
    assert config.num_processes > 1
    assert not config.use_cpu
    plugin_settings = config.fsdp_config if distributed_type == "FSDP" else config.deepspeed_config
    for key, value in settings.items():
        assert plugin_settings[key] == value, key
