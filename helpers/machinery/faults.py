"""Why something failed, in one line: for messages that must never fail themselves.

An exception's text may be empty (`str(exc).splitlines()[0]` then raises IndexError), run over many
lines, or name a machine path (an OSError's filename). `reason` gives the type and the first line
that says something, and for an OSError only its description, so that the file is named by the
caller, through config.shown_path.
"""

from __future__ import annotations


def reason(exc: BaseException) -> str:
    """`Type: first non-empty line of the message`, or `Type` alone; never raises."""
    name = type(exc).__name__
    try:
        text = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        first = next((line.strip() for line in str(text).splitlines() if line.strip()), "")
    except Exception:  # a __str__ that fails: the type still says something
        first = ""
    return f"{name}: {first}" if first else name
