"""Every op's dispatcher, for `python -m scob_fast.info` and tests (imports the op modules lazily)."""
from __future__ import annotations

import importlib

OP_MODULES = {
    "masked_attention": "scob_fast.ops.masked_attention",
    "label_contrastive": "scob_fast.ops.label_contrastive",
}


def dispatchers() -> dict:
    found = {}
    for op_name, module_name in OP_MODULES.items():
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name:
                raise
            continue
        found[op_name] = module.DISPATCHER
    return found
