"""Public ops. Each module holds the op, its autograd, its dispatch and its pure-PyTorch reference."""
from scob_fast.ops._dispatch import BackendUnavailable, last_backend

__all__ = ["BackendUnavailable", "last_backend"]
