"""`python -m scob_fast.info`: versions, the extension's build, and which backend of each op can run here."""
from __future__ import annotations

import importlib
import platform


def _version(module_name: str) -> str:
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # a broken optional install should be reported, not crash the report
        return f"not importable ({type(exc).__name__}: {exc})"
    return getattr(module, "__version__", "installed")


def collect() -> dict:
    import torch

    from scob_fast import _ext
    from scob_fast.ops import registry

    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
        "triton": _version("triton"),
        "nvidia.dali": _version("nvidia.dali"),
        "extension": _ext.build_info(),
        "ops": {},
    }
    for op_name, dispatcher in registry.dispatchers().items():
        info["ops"][op_name] = {name: (reason or "available") for name, reason in dispatcher.availability().items()}
    return info


def main() -> None:
    info = collect()
    for key, value in info.items():
        if key == "ops":
            continue
        print(f"{key:16s} {value}")
    for op_name, backends in info["ops"].items():
        print(f"op {op_name}:")
        for name, state in backends.items():
            print(f"    {name:10s} {state}")


if __name__ == "__main__":
    main()
