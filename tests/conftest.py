import os

# Triton's interpreter must be chosen before any @triton.jit decorator runs; tests only ever run
# Triton through the interpreter (there is no GPU here).
os.environ.setdefault("TRITON_INTERPRET", "1")
