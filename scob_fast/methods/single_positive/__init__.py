"""The single-positive baselines (AN, AN-LS, WAN, EPR, ROLE, LL-R/Ct/Cp, SPLC, EM, EM+APL) and the
full-label BCE upper bound: their losses (`losses.py`) and their trainer adapter (`method.py`)."""
from .config import BaselineConfig
from .method import (AN, AN_LS, BCE, EM, EM_APL, EPR, LL_CP, LL_CT, LL_R, ROLE, SPLC, WAN,
                     SinglePositiveBaseline)

__all__ = ["BaselineConfig", "SinglePositiveBaseline", "AN", "AN_LS", "BCE", "EM", "EM_APL", "EPR", "LL_CP",
           "LL_CT", "LL_R", "ROLE", "SPLC", "WAN"]
