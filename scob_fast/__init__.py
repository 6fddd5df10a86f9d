"""scob_fast: multi-label recognition from incomplete labels (Scob, SST, SADCL and baselines)."""
from __future__ import annotations

import importlib.util as _ilu
import sys as _sys
from pathlib import Path as _Path

__version__ = "0.1.0"


def _mount_source_kernels() -> None:
    # In a source checkout (`python setup.py develop`) the Triton bodies sit in <repo>/kernels, not
    # inside the package; an installed wheel has them at scob_fast/kernels. Make both import as
    # scob_fast.kernels without ever importing triton here.
    here = _Path(__file__).resolve().parent
    if (here / "kernels").is_dir() or "scob_fast.kernels" in _sys.modules:
        return
    source = here.parent / "kernels" / "__init__.py"
    if not source.is_file():
        return
    spec = _ilu.spec_from_file_location("scob_fast.kernels", source,
                                        submodule_search_locations=[str(source.parent)])
    module = _ilu.module_from_spec(spec)
    _sys.modules["scob_fast.kernels"] = module
    spec.loader.exec_module(module)


_mount_source_kernels()
