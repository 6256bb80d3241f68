"""Export one eager task head with torch.export and compile it ahead of time with AOTInductor into a
.pt2 package: cpu and gpu only (torch-neuron and torch-neuronx produce TorchScript).

The package takes any batch from 1 to `max_batch` and any sequence length from MIN_SEQUENCE to the
traced length, so the server can trim a batch to its longest row as it does with TorchScript. Freezing
is on: weights become constants that inductor folds (bf16 casts included) instead of re-reading them
as parameters on every call. Compiling runs the C++ compiler (g++): about a minute per model here.
The kernels are built for this machine's vector instructions (the manifest's runtime.cpu_isa)."""
from __future__ import annotations

import contextlib
import warnings
from pathlib import Path
from typing import List, Optional, Tuple

import torch

DEFAULT_MAX_BATCH = 64
MIN_SEQUENCE = 1
# torch.export specialises a dimension whose example size is 0 or 1 (it cannot tell 1 from a broadcast),
# so the example that exports a range starting at 1 must itself be at least 2 along each dynamic dim.
SMALLEST_DYNAMIC_EXAMPLE = 2
INDUCTOR_CONFIGS = {
    "freezing": True,
    # Weights in one blob beside the library, read into memory at load, instead of in the library's data section:
    # there they stayed resident twice (the mapped library and the constants copied out of it), MiniLM 181 MiB of
    # RSS against TorchScript's 112; as a blob, 95 MiB, the same speed and the same outputs.
    "aot_inductor.package_constants_in_so": False,
    "aot_inductor.package_constants_on_disk_format": "binary_blob",
}


class WithAutocast(torch.nn.Module):
    """The head with autocast entered inside forward: torch.export records autocast regions within the
    module (as wrap_with_autocast) but ignores an autocast context around the export call."""

    def __init__(self, module: torch.nn.Module, device_type: str, dtype: torch.dtype) -> None:
        super().__init__()
        self.module = module
        self.device_type = device_type
        self.dtype = dtype

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        with torch.autocast(self.device_type, dtype=self.dtype, cache_enabled=False):
            return self.module(input_ids, attention_mask)


def dynamic_shapes(max_batch: int, max_sequence: int) -> Tuple[dict, dict]:
    """Dims 0 and 1 of both inputs (input_ids, attention_mask) vary together."""
    batch = torch.export.Dim("batch", min=1, max=max_batch)
    sequence = torch.export.Dim("sequence", min=MIN_SEQUENCE, max=max_sequence)
    return {0: batch, 1: sequence}, {0: batch, 1: sequence}


def export_example(example: Tuple[torch.Tensor, ...], max_batch: int) -> Tuple[torch.Tensor, ...]:
    """The traced example with at least SMALLEST_DYNAMIC_EXAMPLE rows, so export keeps batch dynamic."""
    rows = example[0].shape[0]
    if rows > max_batch:
        raise ValueError(f"the model's batch_size {rows} is above --max-batch {max_batch}: raise --max-batch")
    if example[0].shape[1] < SMALLEST_DYNAMIC_EXAMPLE:
        raise ValueError(f"sequence_length {example[0].shape[1]} is too short to export with a dynamic length: "
                         f"use at least {SMALLEST_DYNAMIC_EXAMPLE}")
    if rows >= SMALLEST_DYNAMIC_EXAMPLE:
        return example
    return tuple(t[:1].repeat(SMALLEST_DYNAMIC_EXAMPLE, 1) for t in example)


def compiler_args(max_batch: int, max_sequence: int) -> List[str]:
    """What the manifest records of the compile (`compiler_args`); the server reads the batch range back
    (serving/model.py, aoti_max_batch), so keep the `batch=1..N` form."""
    return [f"batch=1..{max_batch}", f"sequence={MIN_SEQUENCE}..{max_sequence}",
            *(f"{k}={v}" for k, v in INDUCTOR_CONFIGS.items())]


@contextlib.contextmanager
def quiet_compile():
    """torch.export and inductor warn about internals (deprecated pytree helpers, guards they add) that
    say nothing to act on here; errors still raise."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        yield


def export_program(module: torch.nn.Module, example: Tuple[torch.Tensor, ...], *,
                   autocast: Optional[Tuple[str, torch.dtype]], max_batch: int):
    """torch.export of `module` (on the device it should run on) with a dynamic batch (1..max_batch) and sequence
    length (MIN_SEQUENCE..the example's length); autocast (device type, dtype) is recorded inside the program."""
    if max_batch < 1:
        raise ValueError(f"--max-batch must be >= 1, got {max_batch}")
    max_sequence = int(example[0].shape[1])
    inputs = export_example(example, max_batch)
    if max_batch < SMALLEST_DYNAMIC_EXAMPLE:  # a batch of exactly 1: batch is exported static
        inputs = tuple(t[:1] for t in example)
        shapes: Tuple[dict, ...] = tuple({1: d[1]} for d in dynamic_shapes(SMALLEST_DYNAMIC_EXAMPLE, max_sequence))
    else:
        shapes = dynamic_shapes(max_batch, max_sequence)
    wrapped = WithAutocast(module, *autocast) if autocast else module
    with quiet_compile(), torch.no_grad():
        return torch.export.export(wrapped.eval(), inputs, dynamic_shapes=shapes)


def compile_package(module: torch.nn.Module, example: Tuple[torch.Tensor, ...], target: Path, *,
                    autocast: Optional[Tuple[str, torch.dtype]], max_batch: int) -> List[str]:
    """Export `module` (export_program), compile it into the package `target` and return the manifest's
    compiler_args."""
    import torch._inductor  # aoti_compile_and_package

    program = export_program(module, example, autocast=autocast, max_batch=max_batch)
    target.parent.mkdir(parents=True, exist_ok=True)
    with quiet_compile(), torch.no_grad():
        written = torch._inductor.aoti_compile_and_package(program, package_path=str(target),
                                                           inductor_configs=dict(INDUCTOR_CONFIGS))
    if Path(written) != target or not target.is_file():
        raise RuntimeError(f"AOTInductor wrote its package to {written}, not {target}")
    return compiler_args(max_batch, int(example[0].shape[1]))
