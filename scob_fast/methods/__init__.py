"""Training methods, one file each; add a method with its file plus one line here."""
from __future__ import annotations

import importlib

METHODS = {
    "scob": "scob_fast.methods.scob:Scob",
    "bce": "scob_fast.methods.single_positive:BCE",
    "an": "scob_fast.methods.single_positive:AN",
    "an-ls": "scob_fast.methods.single_positive:AN_LS",
    "wan": "scob_fast.methods.single_positive:WAN",
    "epr": "scob_fast.methods.single_positive:EPR",
    "role": "scob_fast.methods.single_positive:ROLE",
    "ll-r": "scob_fast.methods.single_positive:LL_R",
    "ll-ct": "scob_fast.methods.single_positive:LL_CT",
    "ll-cp": "scob_fast.methods.single_positive:LL_CP",
    "splc": "scob_fast.methods.single_positive:SPLC",
    "em": "scob_fast.methods.single_positive:EM",
    "em-apl": "scob_fast.methods.single_positive:EM_APL",
    "sst": "scob_fast.methods.sst:SST",
    "sadcl": "scob_fast.methods.sadcl:SADCL",
}


def method_class(name: str):
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; choose from {sorted(METHODS)}")
    module_name, class_name = METHODS[name].split(":")
    return getattr(importlib.import_module(module_name), class_name)
