"""Reproducible starter-pack builds: pinned CPU kernels and threads, deterministic algorithms, and a record of it all.

Three things can change a CPU build's weights between machines with the same seed and package versions:

* **kernel dispatch** -- ATen picks vectorised kernels for the CPU it finds (AVX-512 on one machine, AVX2
  on another), oneDNN and MKL do the same for convolutions and matrix products; different kernels sum in
  a different order, and the last bits differ.  :func:`pinned_env` fixes them through
  ``ATEN_CPU_CAPABILITY``, ``ONEDNN_MAX_CPU_ISA`` and ``MKL_CBWR``.  These are read once, when torch loads,
  so a pinned build runs in a **child process** started with them (:func:`run_isolated`, which
  ``build_starter_pack(isolated=True)`` and ``mhub starter-pack`` use);
* **threads** -- parallel reductions split their work by the thread count: the build pins it
  (:data:`BUILD_THREADS`, ``OMP_NUM_THREADS`` / ``MKL_NUM_THREADS`` and ``torch.set_num_threads``);
* **algorithms** -- :func:`deterministic` turns on ``torch.use_deterministic_algorithms`` (warn only: a
  CPU op without a deterministic variant warns instead of failing).

Every other random draw is seeded: the data builders draw from ``numpy.random.default_rng([seed,
modality])``, trimesh's surface sampling gets a seed from that generator, augmentations take the
training loop's per-epoch generator, dropout is seeded per epoch (``hub.train.loop``), encoder and
projector initialisation is seeded, and espeak-ng is deterministic for the same voice, speed and pitch.

What stays machine-dependent: the pinned instruction set must exist on the machine (``avx2`` on x86-64
CPUs since 2013; an older CPU, or an ARM one, falls back to ``default`` and is recorded as such -- results
then match other ``default`` builds, not ``avx2`` ones), and a different espeak-ng version may speak the
words differently (its version is recorded, and the audio fingerprint in ``pack.json`` detects it).
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
from contextlib import contextmanager
from typing import Any, Iterator

#: intra-op threads of a pinned build (fixed so a build does not depend on the machine's core count;
#: one thread also avoids waits for descheduled OpenMP workers on shared CPUs)
BUILD_THREADS = 1
#: the instruction set a pinned build asks for (ATen name); x86-64 CPUs without AVX2 and other CPUs get "default"
PINNED_ISA = "avx2"
#: the environment variables a pinned build sets (recorded in pack.json / eval.json)
PINNED_VARIABLES = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_CBWR", "OPENBLAS_CORETYPE", "OMP_NUM_THREADS",
                    "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "PYTHONHASHSEED", "CUBLAS_WORKSPACE_CONFIG")
#: set in a pinned child process, so a build inside it knows it is pinned
PINNED_MARKER = "MHUB_PINNED_BUILD"

# oneDNN and MKL names of the instruction sets ATen knows
_ONEDNN = {"avx2": "AVX2", "avx512": "AVX512_CORE", "default": "SSE41"}
_MKL = {"avx2": "AVX2", "avx512": "AVX512", "default": "COMPATIBLE"}


def _is_x86() -> bool:
    return platform.machine().lower() in ("x86_64", "amd64", "i386", "i686")


def supported_isa(wanted: str = PINNED_ISA) -> str:
    """``wanted`` when this CPU has it (x86-64 with AVX2 / AVX-512), else ``"default"``."""
    if wanted == "default" or not _is_x86():
        return "default"
    have = _cpu_isa()
    order = ("default", "avx2", "avx512")
    if have not in order:
        return "default"
    return wanted if order.index(have) >= order.index(wanted) else "default"


def _cpu_isa() -> str:
    """The best of default / avx2 / avx512 this CPU has: from /proc/cpuinfo where there is one (not from torch,
    which reports what ``ATEN_CPU_CAPABILITY`` told it), else what ATen found."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            flags = next((set(line.split(":", 1)[1].split()) for line in fh if line.startswith("flags")), None)
    except OSError:
        flags = None
    if flags is None:
        import torch

        return torch.backends.cpu.get_cpu_capability().lower()
    if {"avx512f", "avx512bw", "avx512vl", "avx512dq"} <= flags:
        return "avx512"
    return "avx2" if {"avx2", "fma"} <= flags else "default"


def pinned_env(threads: int = BUILD_THREADS, isa: str | None = None) -> dict[str, str]:
    """The environment variables of a pinned build: instruction set, thread counts and hash seed."""
    if threads < 1:
        from hub.errors import InvalidOptionsError

        raise InvalidOptionsError(f"build threads must be >= 1; got {threads}")
    isa = supported_isa(isa or PINNED_ISA)
    env = {"ATEN_CPU_CAPABILITY": isa, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
           "OPENBLAS_NUM_THREADS": str(threads), "PYTHONHASHSEED": "0", "CUBLAS_WORKSPACE_CONFIG": ":4096:8",
           PINNED_MARKER: f"{isa}:{threads}"}
    if _is_x86():
        env["ONEDNN_MAX_CPU_ISA"] = _ONEDNN[isa]
        if isa != "default":  # numpy's OpenBLAS (the 3D data's transforms): the Haswell (AVX2) kernels
            env["OPENBLAS_CORETYPE"] = "SkylakeX" if isa == "avx512" else "Haswell"
        env["MKL_CBWR"] = _MKL[isa] + (",STRICT" if isa != "default" else "")  # STRICT: same bits whatever the threads
    return env


def is_pinned(threads: int = BUILD_THREADS, isa: str | None = None) -> bool:
    """Whether this process was started with :func:`pinned_env` (``isa`` / ``threads``)."""
    return os.environ.get(PINNED_MARKER) == f"{supported_isa(isa or PINNED_ISA)}:{threads}"


@contextmanager
def deterministic(threads: int = BUILD_THREADS) -> Iterator[dict[str, Any]]:
    """Deterministic algorithms (warn only), ``threads`` intra-op threads, cuDNN without autotuning; the previous
    settings come back afterwards.  Yields :func:`environment` as it is inside."""
    import torch

    before = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
              torch.get_num_threads(), torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    try:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.set_num_threads(threads)
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
        yield environment()
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])
        torch.set_num_threads(before[2])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = before[3], before[4]


def espeak_version() -> str | None:
    """``espeak-ng --version`` (first line), or None when it is not installed."""
    binary = shutil.which("espeak-ng") or shutil.which("espeak")
    if binary is None:
        return None
    try:
        out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):  # pragma: no cover - a broken binary
        return None
    return out.split("Data at:")[0].strip() or None


_DISTS = ("modality-hub", "modality-hub-starter", "modality-hub-text", "modality-hub-image", "modality-hub-audio",
          "modality-hub-graph", "modality-hub-3d", "torch", "torchaudio", "transformers", "sentence-transformers",
          "tokenizers", "safetensors", "numpy", "scipy", "scikit-learn", "networkx", "trimesh", "torch-geometric",
          "pillow", "soundfile")


def versions() -> dict[str, str]:
    """Python, platform, every package the build touches, and espeak-ng."""
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version(), "platform": platform.platform()}
    for dist in _DISTS:
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            pass
    espeak = espeak_version()
    if espeak:
        out["espeak-ng"] = espeak
    return out


def environment() -> dict[str, Any]:
    """What decides this process's numbers: torch threads, the instruction set ATen dispatches to,
    deterministic algorithms, the pinning variables as set, and the CPU."""
    import torch

    return {
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
        "pinned": os.environ.get(PINNED_MARKER) is not None,
        "variables": {k: os.environ[k] for k in PINNED_VARIABLES if k in os.environ},
        "machine": platform.machine(),
        "processor": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "mkl": torch.backends.mkl.is_available(),
        "mkldnn": torch.backends.mkldnn.is_available(),
    }


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def run_isolated(request: dict[str, Any], *, threads: int = BUILD_THREADS, isa: str | None = None,
                 progress: bool = True) -> None:
    """Run ``build_starter_pack(**request)`` in a child Python started with :func:`pinned_env` (the variables
    must be set before torch loads).  ``request`` is JSON (out_dir, seed, force, budget as a dict, pretrain,
    modalities, cache_dir).  The child's :class:`hub.errors.HubError` comes back as one."""
    import tempfile

    from hub.errors import HubError

    env = {**os.environ, **pinned_env(threads, isa)}
    with tempfile.TemporaryDirectory(prefix="mhub-pinned-") as tmp:
        error_file = os.path.join(tmp, "error.txt")
        payload = json.dumps({**request, "threads": threads, "isa": isa, "error_file": error_file})
        quiet = None if progress else subprocess.PIPE  # quiet: kept for the error message
        done = subprocess.run([sys.executable, "-m", "hub_starter.determinism", payload], env=env, stdout=quiet,
                              stderr=quiet, text=True)
        if done.returncode == 0:
            return
        if os.path.isfile(error_file):
            with open(error_file, encoding="utf-8") as fh:
                raise HubError(fh.read().strip())
    said = "its output above says why" if progress else "its last output: " + (done.stderr or "").strip()[-2000:]
    raise HubError(f"the pinned starter-pack build (a child process: {sys.executable} -m hub_starter.determinism) "
                   f"failed with exit {done.returncode}; {said}")


def _child(argv: list[str]) -> int:
    request = json.loads(argv[0])
    error_file = request.pop("error_file")
    request.pop("isa", None)  # already in effect: the parent set the environment
    from hub import Hub
    from hub.errors import HubError

    from .pack import StarterBudget, build_starter_pack

    cache_dir = request.pop("cache_dir", None)
    budget = request.pop("budget")
    try:
        build_starter_pack(**request, budget=StarterBudget.model_validate(budget) if isinstance(budget, dict) else budget,
                           hub=Hub(cache_dir=cache_dir), isolated=False)
    except HubError as exc:
        with open(error_file, "w", encoding="utf-8") as fh:
            fh.write(str(exc))
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(_child(sys.argv[1:]))
