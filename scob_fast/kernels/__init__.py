"""Triton kernel bodies, one module per op: scob_fast.kernels.<op> defines `forward` and `backward`.

Each module imports triton, so nothing imports them eagerly: scob_fast/ops/_kernel_op.py loads one on
the first call of its Triton op (a machine without triton can still use every other backend).
"""
