"""Trace one eager task head for one processor into a TorchScript module, or (--format aoti, cpu and
gpu only) export and compile it into an AOTInductor package (tracing/aoti.py).

cpu: torch.jit.trace, frozen; bf16 is traced under CPU autocast, and freezing folds the weight
casts into bf16 constants (without it every call re-casts every weight). gpu: the same under
CUDA autocast (fp16). inf1: torch.neuron.trace (torch-neuron, Python 3.10 image); inf2:
torch_neuronx.trace. Where a runtime is missing the error says what is needed and where it runs.
"""
from __future__ import annotations

import contextlib
import importlib
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, List, Optional, Tuple

import torch

from contracts.models import ARTIFACT_FORMATS
from tracing.aoti import DEFAULT_MAX_BATCH

PROCESSORS = ("cpu", "gpu", "inf1", "inf2")
AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}
# TorchScript stays the default although AOTInductor measured 7-19 % faster on MiniLM with less memory
# (bench/results/aoti.md): a package costs ~45-65 s of compiling against ~1 s, runs only on CPUs with the vector
# instructions of the machine that compiled it, and the benchmarks and test fixtures that read model.pt would need
# to ask for --format torchscript first. Choose aoti per run (--format aoti) for cpu models where that pays.
DEFAULT_FORMAT = "torchscript"
AOTI_PROCESSORS = ("cpu", "gpu")


class RuntimeMissing(RuntimeError):
    """The runtime a processor needs is not on this machine."""


@dataclass(frozen=True)
class TraceOptions:
    processor: str
    precision: str = "fp32"
    pipeline_cores: int = 1  # inf1: NeuronCores one model is split over (--neuroncore-pipeline-cores)
    workdir: Optional[Path] = None  # the Neuron compiler's work directory (its logs and NEFFs)
    force: bool = False  # publish: upload the bundle even if the store has it
    format: str = DEFAULT_FORMAT  # torchscript | aoti (cpu and gpu)
    max_batch: int = DEFAULT_MAX_BATCH  # aoti: the largest batch the package takes


@dataclass
class Traced:
    module: Any  # a torch.jit.ScriptModule; for format aoti, the Path of the compiled .pt2 package
    compiler_args: List[str] = field(default_factory=list)
    runtime: dict = field(default_factory=dict)
    format: str = "torchscript"


def check_format(processor: str, model_format: str) -> None:
    """ValueError saying what to use when `model_format` is unknown or not available for `processor`."""
    if model_format not in ARTIFACT_FORMATS:
        raise ValueError(f"--format: unknown format {model_format!r}; use one of {', '.join(ARTIFACT_FORMATS)}")
    if model_format == "aoti" and processor not in AOTI_PROCESSORS:
        raise ValueError(f"--format aoti is not available for {processor}: AOTInductor packages run on cpu and gpu only, "
                         f"and {processor} artifacts are compiled by torch-neuron (inf1) or torch-neuronx (inf2), which "
                         f"produce TorchScript. Trace {processor} with --format torchscript (the default)")


def neuron_module(processor: str):
    """The Neuron tracing entry point (torch.neuron or torch_neuronx), or RuntimeMissing saying why not."""
    name = "torch_neuron" if processor == "inf1" else "torch_neuronx"
    try:
        module = importlib.import_module(name)
    except ImportError as exc:
        if processor == "inf1":
            need = ("torch-neuron (AWS Neuron SDK for Inferentia 1; Python 3.7-3.10 with torch 1.13, from "
                    "https://pip.repos.neuron.amazonaws.com; PyPI only holds a placeholder). Trace inf1 inside the "
                    "inf1 image: docker run <inf1 image> python -m tracing trace --processor inf1 ...")
        else:
            need = ("torch-neuronx (AWS Neuron SDK for Inferentia 2 / Trainium, from "
                    "https://pip.repos.neuron.amazonaws.com). Trace inf2 inside the inf2 image on an inf2 or trn1 host")
        raise RuntimeMissing(f"{processor} tracing needs {need} [import {name} failed: {exc}]") from None
    if processor == "inf1":
        return sys.modules["torch"].neuron  # torch_neuron registers itself as torch.neuron
    return module


def served_precision(processor: str, precision: str) -> str:
    """What a processor runs a model of `precision` at. fp32 in models.yaml names the checkpoint's
    precision; each accelerator casts it as it is normally served (gpu: fp16 AMP, Neuron: bf16
    matmuls, neuron-cc's default), while cpu runs what it is told."""
    if precision != "fp32" or processor == "cpu":
        return precision
    return "fp16" if processor == "gpu" else "bf16"


def neuron_compiler_args(opts: TraceOptions) -> List[str]:
    precision = served_precision(opts.processor, opts.precision)
    if opts.processor == "inf1":
        args = ["--neuroncore-pipeline-cores", str(opts.pipeline_cores)]
        # neuron-cc casts fp32 matmuls to bf16 by default; fp16 must be asked for.
        return args + (["--fast-math", "fp32-cast-matmult-fp16"] if precision == "fp16" else [])
    return ["--auto-cast", "matmult", "--auto-cast-type", precision]


def to_device(module: torch.nn.Module, example: Tuple[torch.Tensor, ...], device: str):
    return module.to(device), tuple(t.to(device) for t in example)


def _autocast(device_type: str, precision: str):
    if precision == "fp32":
        return torch.autocast(device_type, enabled=False)
    return torch.autocast(device_type, dtype=AUTOCAST[precision], cache_enabled=False)


@contextlib.contextmanager
def quiet_tracer():
    """transformers' Python branches on shapes warn on every trace (the traced shapes are fixed by
    design), and torch marks TorchScript deprecated: neither says anything to act on here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=r".*torch\.jit.*deprecated", category=DeprecationWarning)
        yield


def _jit(module: torch.nn.Module, example: Tuple[torch.Tensor, ...], device_type: str, precision: str):
    with quiet_tracer(), torch.no_grad(), _autocast(device_type, precision):
        traced = torch.jit.trace(module, example, check_trace=False)
        return torch.jit.freeze(traced.eval())


def _aoti(module: torch.nn.Module, example: Tuple[torch.Tensor, ...], device_type: str, precision: str,
          opts: TraceOptions, scratch_dir: Optional[Path], runtime: dict) -> Traced:
    """Compile into scratch_dir/model.pt2 (a fresh temporary folder by default); write_bundle moves it into the bundle."""
    import tempfile

    from tracing.aoti import compile_package

    folder = scratch_dir if scratch_dir is not None else Path(tempfile.mkdtemp(prefix="modelfleet-aoti-"))
    autocast = None if precision == "fp32" else (device_type, AUTOCAST[precision])
    target = folder / "model.pt2"
    args = compile_package(module, example, target, autocast=autocast, max_batch=opts.max_batch)
    if device_type == "cpu":
        # The kernels are built for the vector instructions of this machine (inductor probes them): a node without
        # them cannot run the package, so the manifest says which it needs.
        runtime["cpu_isa"] = str(torch._inductor.cpu_vec_isa.pick_vec_isa()) or "none"
    return Traced(target, compiler_args=args, runtime=runtime, format="aoti")


def trace_module(module: torch.nn.Module, example: Tuple[torch.Tensor, ...], opts: TraceOptions,
                 scratch_dir: Optional[Path] = None) -> Traced:
    """The processor's artifact for `module` at `example`; aoti packages are written into `scratch_dir`."""
    check_format(opts.processor, opts.format)
    runtime = {"torch": torch.__version__}
    if opts.processor == "cpu":
        if opts.precision == "fp16":
            raise ValueError("precision fp16 is not served on cpu (no fast fp16 kernels): use fp32 or bf16")
        if opts.format == "aoti":
            return _aoti(module, example, "cpu", opts.precision, opts, scratch_dir, runtime)
        return Traced(_jit(module, example, "cpu", opts.precision), runtime=runtime)
    if opts.processor == "gpu":
        if not torch.cuda.is_available():
            raise RuntimeMissing("gpu tracing needs CUDA: a CUDA build of torch and an NVIDIA GPU (this machine has "
                                 f"torch {torch.__version__} and no GPU). Trace gpu inside the gpu image on a g4dn/g5 node")
        module, example = to_device(module, example, "cuda")
        runtime["cuda"] = str(torch.version.cuda)
        precision = served_precision("gpu", opts.precision)
        if opts.format == "aoti":
            return _aoti(module, example, "cuda", precision, opts, scratch_dir, runtime)
        return Traced(_jit(module, example, "cuda", precision), runtime=runtime)
    if opts.processor in ("inf1", "inf2"):
        neuron = neuron_module(opts.processor)
        args = neuron_compiler_args(opts)
        kwargs: dict = {"compiler_args": args}
        if opts.workdir is not None:
            opts.workdir.mkdir(parents=True, exist_ok=True)
            kwargs["compiler_workdir"] = str(opts.workdir)
        with quiet_tracer(), torch.no_grad():
            traced = neuron.trace(module, example, **kwargs)
        runtime[opts.processor] = str(getattr(neuron, "__version__", "unknown"))
        return Traced(traced, compiler_args=args, runtime=runtime)
    raise ValueError(f"unknown processor {opts.processor!r}: use one of {', '.join(PROCESSORS)}")


def check_runtime(processor: str) -> None:
    """Fail before any work when the processor's runtime is not here (RuntimeMissing says why)."""
    if processor == "gpu" and not torch.cuda.is_available():
        trace_module(torch.nn.Identity(), (), TraceOptions("gpu"))  # raises with the full message
    elif processor in ("inf1", "inf2"):
        neuron_module(processor)
    elif processor not in PROCESSORS:
        raise ValueError(f"unknown processor {processor!r}: use one of {', '.join(PROCESSORS)}")
