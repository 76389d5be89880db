"""A machine with N GPUs, presented to the suite without a real device: the GPU counts and capabilities are
faked where the suite learns them, and anything that would initialise CUDA in the notebook's process (which can
then no longer fork its training processes) fails the test. What no CPU can show is in scripts/gpu_check.sh."""
from __future__ import annotations

import ast
import json
import os
import re
import sys

import ignite.distributed as idist
import nbformat
import pytest
import torch
from conftest import ENGINE_NOTEBOOKS, NOTEBOOKS

from common import config
from common import runtime
from common.config import auto_budget, load_config
from common.data.datasets import prepare_data
from common.train.resume import resume_key
from common.train.run import forking, run_device, start_run

T4, A100, P100 = ("Tesla T4", (7, 5)), ("NVIDIA A100-SXM4-40GB", (8, 0)), ("Tesla P100-PCIE-16GB", (6, 0))


class CudaInitialised(AssertionError):
    """Raised by the stand-in wherever real torch would initialise CUDA."""


@pytest.fixture()
def gpu_machine(monkeypatch):
    """``gpu_machine(T4, T4)`` makes this process see those GPUs: NVML's answers (names, capabilities, count) are
    faked, CUDA_VISIBLE_DEVICES="" hides them as it would, and every call that initialises CUDA raises."""
    set_devices = []

    def present(*gpus):
        def visible():
            shown = () if os.environ.get("CUDA_VISIBLE_DEVICES") == "" else gpus
            return runtime.Gpus(tuple(n for n, _ in shown), tuple(c for _, c in shown) if shown else None)

        def set_device(index):
            if index >= visible().count:
                raise RuntimeError("CUDA error: invalid device ordinal")
            set_devices.append(index)

        def initialises(*args, **kwargs):
            raise CudaInitialised("this call initialises CUDA before the processes are forked")

        monkeypatch.setattr(runtime, "visible_gpus", visible)
        monkeypatch.setattr(config, "visible_gpus", visible)  # imported by name there (budget auto)
        # What Ignite and Lightning ask: NVML-based in real torch (PYTORCH_NVML_BASED_CUDA_CHECK=1), so no init.
        monkeypatch.setattr(torch.cuda, "is_available", lambda: visible().count > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: visible().count)
        monkeypatch.setattr(torch.cuda, "set_device", set_device)
        for name in ("_lazy_init", "init", "is_bf16_supported", "get_device_capability", "get_device_properties",
                     "get_device_name", "current_device", "synchronize"):
            monkeypatch.setattr(torch.cuda, name, initialises)
        monkeypatch.setattr(torch._C, "_cuda_getDeviceCount", initialises)
        return set_devices
    return present


def tiny_config(tiny_base, tmp_path, **changes):
    return load_config(budget="smoke", dataset="demo", weights="random", image_size=32, demo_images_per_class=12,
                       data_dir=tiny_base / "data", runs_dir=tmp_path / "runs", **changes)


def test_before_the_fork_nothing_initialises_cuda(gpu_machine, tiny_base, tmp_path, capsys):
    gpu_machine(T4, T4)  # Kaggle's "GPU T4 x2"
    cfg = tiny_config(tiny_base, tmp_path, devices="auto")
    cfg.show()
    assert runtime.resolve_devices(cfg.devices, cfg.device) == 2
    assert "Training on 2 GPUs" in runtime.describe_devices(cfg.devices, cfg.device)
    assert runtime.distributed_backend(cfg.device) == "nccl"
    data = prepare_data(cfg)
    # Lightning's path: the notebook's copy of the run, on the CPU, handed to every forked process.
    run = start_run(cfg, data, "lightning", "transfer", world=2)
    assert run.device.type == "cpu" and next(run.model.parameters()).device.type == "cpu"
    assert (run.precision, run.lightning_precision) == ("fp16", "16-mixed")
    with forking(cfg, data, world=2):
        assert os.environ.get("CUDA_VISIBLE_DEVICES") != ""  # GPU processes keep their GPUs
    assert "device: cuda" in capsys.readouterr().out


@pytest.mark.parametrize("gpus, precision, channels_last", [
    ((T4, T4), "fp16", True), ((A100, A100), "bf16", True), ((A100, T4), "fp16", True), ((P100,), "fp16", False)])
def test_every_process_and_engine_gets_one_precision_for_the_machine(gpu_machine, tiny_base, tmp_path, gpus,
                                                                     precision, channels_last):
    gpu_machine(*gpus)
    cfg = tiny_config(tiny_base, tmp_path)
    cuda = torch.device("cuda")
    # The notebook's copy (Lightning's Trainer takes its precision) and each forked process decide alike.
    copy = start_run(cfg, prepare_data(cfg), "lightning", "transfer", world=2)
    assert copy.precision == runtime.resolve_precision(cfg.precision, cuda) == precision
    assert copy.lightning_precision == {"bf16": "bf16-mixed", "fp16": "16-mixed"}[precision]
    assert runtime.resolve_channels_last(cfg.channels_last, cuda) is channels_last  # a P100 has no tensor cores


def test_where_nvml_cannot_answer_one_device_is_used_loudly(gpu_machine, monkeypatch, capsys):
    """Without NVML, torch counts the GPUs through the CUDA runtime, after which forked processes cannot use CUDA."""
    gpu_machine(T4, T4)
    monkeypatch.setattr(runtime, "visible_gpus", lambda: runtime.Gpus(("GPU",) * 2))
    assert runtime.resolve_devices("auto") == 1 and "NVML" in capsys.readouterr().out


def test_after_training_on_a_gpu_machine_no_process_is_forked_not_even_on_the_cpu(monkeypatch, capsys):
    """Seen on an H200: once the kernel ran a backward pass there (on the GPU or the CPU), a forked process's backward
    fails ("Unable to handle autograd's threading in combination with fork-based multiprocessing"), CPU processes
    included. The suite asks a throwaway fork first; here that fork's answer is faked, as no CPU machine gives it."""
    monkeypatch.setattr(runtime, "backward_survives_fork", lambda: False)
    assert runtime.resolve_devices(3, "cpu") == 1
    assert "cannot train (not even on the CPU)" in capsys.readouterr().out
    monkeypatch.undo()
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(runtime, "visible_gpus", lambda: runtime.Gpus(("NVIDIA H200",), ((9, 0),)))
    assert runtime.resolve_devices(3, "cpu") == 1


def test_on_a_machine_without_gpus_a_fork_can_train_after_the_kernel_did():
    torch.ones(1, requires_grad=True).sum().backward()  # the kernel trained
    assert runtime.backward_survives_fork()


def test_each_process_gets_its_own_gpu_and_cpu_processes_none(gpu_machine, tiny_base, tmp_path):
    set_devices = gpu_machine(T4, T4)
    cfg = tiny_config(tiny_base, tmp_path)
    assert [run_device(cfg, rank, 2) for rank in (0, 1)] == [torch.device("cuda", 0), torch.device("cuda", 1)]
    assert set_devices == [0, 1]
    assert run_device(cfg, None, 2).type == "cpu"  # the notebook's copy
    cpu = tiny_config(tiny_base, tmp_path, device="cpu")
    assert run_device(cpu, 1, 2).type == "cpu" and runtime.distributed_backend("cpu") == "gloo"
    with runtime.processes_environment("cpu"):
        assert os.environ["CUDA_VISIBLE_DEVICES"] == "" and runtime.pick_device().type == "cpu"
    assert "CUDA_VISIBLE_DEVICES" not in os.environ  # the notebook's own environment is back


def _report(local_rank, folder):
    (folder / f"rank{idist.get_rank()}.json").write_text(json.dumps(dict(cuda=torch.cuda.is_available(),
                                                                        backend=idist.backend())))


def test_ignite_cpu_processes_on_a_one_gpu_runtime_start_and_see_no_gpu(gpu_machine, tiny_base, tmp_path):
    """devices=2, device='cpu' on a one-GPU Colab: without hiding the GPU, Ignite puts rank 1 on GPU 1, which does
    not exist ("invalid device ordinal"), and rank 0 opens a CUDA context."""
    gpu_machine(T4)
    cfg = tiny_config(tiny_base, tmp_path, device="cpu", devices=2)
    assert runtime.resolve_devices(cfg.devices, cfg.device) == 2
    with forking(cfg, prepare_data(cfg), world=2):
        with idist.Parallel(backend="gloo", nproc_per_node=2, master_port=runtime.free_port(),
                            start_method="fork") as parallel:
            parallel.run(_report, tmp_path)
    reports = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert reports == [dict(cuda=False, backend="gloo")] * 2


def test_a_resume_point_names_the_precision_it_was_made_with(gpu_machine, tiny_base, tmp_path):
    """precision='auto' is bf16 on an A100 and fp16 on a T4: a resume point from one must not load on the other
    (its gradient scaler state would not fit, or the run would change precision half-way)."""
    keys = {}
    for gpu in (A100, T4):
        gpu_machine(gpu)
        cfg = tiny_config(tiny_base, tmp_path)
        keys[gpu[0]] = resume_key(start_run(cfg, prepare_data(cfg), "lightning", "transfer", world=2))
    assert keys[A100[0]]["config"]["precision"] == "bf16" and keys[A100[0]] != keys[T4[0]]


def test_deterministic_runs_set_cublas_workspace_before_cuda_starts(monkeypatch, tiny_base, tmp_path):
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", "")  # so that the test's end restores what was there
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG")
    cfg = tiny_config(tiny_base, tmp_path, deterministic=True)
    start_run(cfg, prepare_data(cfg), "plain", "transfer")
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    torch.use_deterministic_algorithms(False)


def test_asking_whether_cuda_is_there_asks_nvml_not_the_cuda_runtime(monkeypatch):
    """Real torch, NVML faked to show two GPUs: with the suite imported, torch.cuda.is_available() (which Ignite,
    Lightning and learners call) and the suite's own questions never reach the CUDA runtime, whose first call
    would leave every forked process unable to use CUDA."""
    def runtime_call():
        raise CudaInitialised("cudaGetDeviceCount: forked processes could no longer use CUDA")

    assert os.environ["PYTORCH_NVML_BASED_CUDA_CHECK"] == "1"
    monkeypatch.setattr(torch.cuda, "_device_count_nvml", lambda: 2)
    monkeypatch.setattr(torch._C, "_cuda_getDeviceCount", runtime_call)
    monkeypatch.setattr(runtime, "_nvml_gpus", lambda: [T4, T4])
    runtime._gpus.cache_clear()
    try:
        assert torch.cuda.is_available()
        assert runtime.visible_gpus() == runtime.Gpus(("Tesla T4",) * 2, ((7, 5),) * 2)
        assert auto_budget() == ("smoke" if os.environ.get("CI") else "full")
        assert runtime.resolve_devices("auto") == 2 and runtime.resolve_precision("auto", torch.device("cuda")) == "fp16"
    finally:
        runtime._gpus.cache_clear()


def test_ignite_metrics_accumulate_on_the_training_device():
    """Ignite's metrics default to the CPU: on a GPU every iteration would wait for a copy to the host, and 04's
    engine timings would be biased against Ignite. Every metric 02 builds names the run's device."""
    nb = nbformat.read(NOTEBOOKS / ENGINE_NOTEBOOKS["ignite"], as_version=4)
    calls = [node for cell in nb.cells if cell.cell_type == "code"
             for node in ast.walk(ast.parse(re.sub(r"(?m)^%.*$", "", cell.source))) if isinstance(node, ast.Call)
             and getattr(node.func, "id", "") in ("Loss", "Accuracy", "TopKCategoricalAccuracy")]
    assert len(calls) == 5
    assert all(any(k.arg == "device" and ast.unparse(k.value) == "run.device" for k in call.keywords) for call in calls)


def test_the_scaling_benchmark_sizes_its_runs_for_where_they_run(monkeypatch):
    """With fewer GPUs than processes every run goes to the CPU: at GPU sizes that would take hours on Colab."""
    monkeypatch.syspath_prepend(str(NOTEBOOKS.parent / "benchmarks"))
    import parallel_speed
    monkeypatch.setattr(sys, "argv", ["parallel_speed.py"])
    one_gpu, two_gpus = parallel_speed.parse_args(gpus=1), parallel_speed.parse_args(gpus=2)
    assert (one_gpu.on_gpus, one_gpu.processes, one_gpu.image_size, one_gpu.images_per_class) == (False, 2, 112, 12)
    assert (two_gpus.on_gpus, two_gpus.processes, two_gpus.image_size, two_gpus.batch_size) == (True, 2, 224, 64)
    monkeypatch.setattr(sys, "argv", ["parallel_speed.py", "--image-size", "64"])
    assert parallel_speed.parse_args(gpus=0).image_size == 64  # what is given wins
