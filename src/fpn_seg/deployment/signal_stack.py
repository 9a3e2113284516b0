"""[`kept_signal_stack`]: compile OpenVINO models without letting them leave the thread a dangling signal stack.

OpenVINO's CPU plugin (2025-2026 releases, Linux) gives every compiled model an alternate signal stack of its own: the
compiled model installs it on the compiling thread (`sigaltstack`) and, when it is destroyed, puts back the stack that
was there before and unmaps its own. That is only right when compiled models are destroyed in the reverse order of
their creation. When two live together and the first is freed first (runtime auto's probe holds several; so may any
user's code), the second one's destruction puts back the first one's stack, already unmapped. The next signal with a
Python handler (SIGINT from Ctrl-C, SIGCHLD once torch's DataLoader has installed its handler) is delivered on that
stack, and the kernel kills the process with SIGSEGV (`si_code` SI_KERNEL) instead of running the handler.

Python installs its handlers with SA_ONSTACK, on the stack faulthandler sets up (large enough for the CPU's signal
frame: AT_MINSIGSTKSZ, AMX included). So around each compile we put back the thread's stack as it was: the compiled
model then only ever restores that stack, whatever the order of destruction, and unmaps its own, never in use.
"""

import contextlib
import ctypes
import ctypes.util
import sys
from collections.abc import Iterator


class _SignalStack(ctypes.Structure):
    """POSIX `stack_t` (Linux layout)."""

    _fields_ = [("ss_sp", ctypes.c_void_p), ("ss_flags", ctypes.c_int), ("ss_size", ctypes.c_size_t)]


def _libc():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        return libc if hasattr(libc, "sigaltstack") else None
    except OSError:
        return None


_LIBC = _libc()


def _read_signal_stack() -> _SignalStack | None:
    """The calling thread's `stack_t`; None where it cannot be read (not Linux, no libc)."""
    stack = _SignalStack()
    return stack if _LIBC is not None and _LIBC.sigaltstack(None, ctypes.byref(stack)) == 0 else None


def current_signal_stack() -> tuple[int, int, int] | None:
    """The calling thread's alternate signal stack as (address, flags, size); None where it cannot be read."""
    stack = _read_signal_stack()
    return None if stack is None else (stack.ss_sp or 0, stack.ss_flags, stack.ss_size)


@contextlib.contextmanager
def kept_signal_stack() -> Iterator[None]:
    """Run the block, then give the calling thread back the alternate signal stack it had before (if it changed)."""
    before = _read_signal_stack()
    try:
        yield
    finally:
        if before is not None and current_signal_stack() != (before.ss_sp or 0, before.ss_flags, before.ss_size):
            before.ss_flags &= 0x2  # SS_DISABLE is the one flag sigaltstack takes (SS_ONSTACK is only reported)
            _LIBC.sigaltstack(ctypes.byref(before), None)


__all__ = ["current_signal_stack", "kept_signal_stack"]
