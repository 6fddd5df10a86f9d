import os

# Triton's interpreter must be chosen before any @triton.jit decorator runs; tests only ever run
# Triton through the interpreter (there is no GPU here).
os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    """A module's own SCOB_FAST_CACHE_DIR (the generated demo set is cached there), restored after."""
    path = tmp_path_factory.mktemp("cache")
    old = os.environ.get("SCOB_FAST_CACHE_DIR")
    os.environ["SCOB_FAST_CACHE_DIR"] = str(path)
    yield path
    if old is None:
        os.environ.pop("SCOB_FAST_CACHE_DIR")
    else:
        os.environ["SCOB_FAST_CACHE_DIR"] = old
