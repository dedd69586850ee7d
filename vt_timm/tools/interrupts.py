"""Stop requests from outside a training run: SIGTERM (a scheduler pre-empting the job) and SIGINT (Ctrl-C)."""
import contextlib
import signal
from typing import Callable, Iterator, List, Optional

__all__ = ['STOP_SIGNALS', 'IgnoringStopSignals', 'stop_signals']

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


@contextlib.contextmanager
def stop_signals(force_on_repeat: bool = True) -> Iterator[List[int]]:
    """Record SIGTERM and SIGINT in the yielded list instead of dying, so the loop can stop at the end of the
    current update and write a checkpoint. With ``force_on_repeat`` a SIGINT while a stop is pending (Ctrl-C
    twice) exits at once with 128 + SIGINT; a repeated SIGTERM is recorded once. Under torchrun pass False:
    the launcher forwards every signal its process group gets (so each worker sees Ctrl-C twice) and
    SIGKILLs workers that have not exited 30 s later. The previous handlers come back on exit."""
    received: List[int] = []

    def handler(signum: int, frame) -> None:
        if force_on_repeat and received and signum == signal.SIGINT:
            raise SystemExit(128 + signum)
        if signum not in received:
            received.append(signum)

    previous = {signum: signal.signal(signum, handler) for signum in STOP_SIGNALS}
    try:
        yield received
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)


class IgnoringStopSignals:
    """A DataLoader ``worker_init_fn`` that makes the worker ignore SIGTERM and SIGINT, then runs ``init``:
    a scheduler signals the whole process group, and the training process, not its loader workers, decides
    when to stop (it ends them as it exits)."""

    def __init__(self, init: Optional[Callable[[int], None]] = None):
        self.init = init

    def __call__(self, worker_id: int) -> None:
        for signum in STOP_SIGNALS:
            signal.signal(signum, signal.SIG_IGN)
        if self.init is not None:
            self.init(worker_id)
