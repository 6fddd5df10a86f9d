"""Triton kernel bodies (imported as scob_fast.kernels; triton is imported lazily by each op)."""
