"""One exception type for mistakes the user can fix, and the entry-point wrapper that prints it."""
import functools
import sys


class UserError(Exception):
    """Bad input (a path, a flag, a file): printed as one line, exit status 2."""


def _one_line(exc):
    msg = str(exc).strip()
    # Errors raised in DataLoader workers come back wrapped with the worker's traceback;
    # its last line holds our message.
    if "Original Traceback" in msg:
        msg = msg.splitlines()[-1].split(": ", 1)[-1]
    return msg.splitlines()[0] if msg else type(exc).__name__


def cli(main):
    """Decorate an entry point: UserError becomes `error: ...` on stderr and exit code 2."""
    @functools.wraps(main)
    def wrapper(argv=None):
        try:
            return main(argv)
        except UserError as exc:
            print(f"error: {_one_line(exc)}", file=sys.stderr)
            sys.exit(2)
    return wrapper
