"""Let go of what a caught exception's frames hold.

An exception keeps its traceback, the traceback the frames the exception passed
through, and each frame its variables and (as ``f_back``) the frame that called it,
up to the thread's first. Libraries keep exceptions in their frames' variables while
they decide what to do (botocore passes one to its retry handlers, urllib3 to its
retry counter): exception and frame then hold each other, a reference cycle that only
Python's cycle collector frees, and it seldom looks at objects that have lived a
while. Through ``f_back`` such a cycle holds every caller's frame too: the sink's,
with the request and its body. In an outage every failed request left one behind.

``release_frames`` clears the variables of every frame the exception and the ones it
was raised from (``__cause__``, ``__context__``) passed through that has finished,
and of their finished callers. A frame still running (the handler's own and its
callers) cannot be cleared and is left as it is, and so is a generator's (clearing
it would close a generator that may only be suspended), with the callers above it.
Tracebacks still print: they need a frame's code and line, not its variables.

``attempt`` is the other half, for code that catches an exception to handle it later:
it returns the exception as a value from a frame that no longer holds it.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from types import FrameType
from typing import Any, TypeVar

_T = TypeVar("_T")

#: Code flags of functions whose frames outlive a call (generators, coroutines).
_SUSPENDABLE = inspect.CO_GENERATOR | inspect.CO_COROUTINE | inspect.CO_ASYNC_GENERATOR


def release_frames(err: BaseException) -> None:
    """Clear the variables of the finished frames ``err``'s tracebacks reach."""
    seen: set[int] = set()
    pending: list[BaseException] = [err]
    while pending:
        exception = pending.pop()
        if id(exception) in seen:
            continue
        seen.add(id(exception))
        traceback = exception.__traceback__
        while traceback is not None:
            frame: FrameType | None = traceback.tb_frame
            while frame is not None and not frame.f_code.co_flags & _SUSPENDABLE:
                try:
                    frame.clear()
                except RuntimeError:  # still running, and so is every caller above it
                    break
                frame = frame.f_back
            traceback = traceback.tb_next
        pending += [cause for cause in (exception.__cause__, exception.__context__) if cause]


def attempt(call: Callable[..., _T], *args: Any) -> tuple[_T | None, Exception | None]:
    """``call(*args)``'s result, or the exception it raised, as values.

    An exception caught and kept in a variable of the frame that caught it makes a
    reference cycle (its traceback holds that frame), which keeps the exception, the
    request and its body alive until Python's cycle collector comes by; it seldom looks
    at objects that have lived a while, and in an outage every retry left one behind.
    This frame lets go of the exception as it returns it, and the caller's frame is not
    in its traceback."""
    try:
        return call(*args), None
    except Exception as err:
        return None, err
