"""Training methods: one folder each (or one file for a small one); add a method with its folder
plus one line here. Each method class names its typed options in `config_class`."""
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


def config_classes() -> dict[type, list[str]]:
    """Each distinct method config class -> the methods that use it (families share one)."""
    out: dict[type, list[str]] = {}
    for name in sorted(METHODS):
        cls = method_class(name).config_class
        if cls is not None:
            out.setdefault(cls, []).append(name)
    return out
