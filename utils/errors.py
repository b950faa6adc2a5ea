"""One exception type for mistakes the user can fix, and the entry-point wrapper that prints it."""
import argparse
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


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """The description as written; each flag's default after its help, unless the help already
    says it or there is none to show (None, off, an empty list)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if action.default in (None, False, [], "", argparse.SUPPRESS) or "default" in text or not action.option_strings:
            return text
        return f"{text} (default: %(default)s)"


class Parser(argparse.ArgumentParser):
    """``argparse`` whose errors are one ``error:`` line (usage stays in ``--help``), exit 2."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, formatter_class=HelpFormatter, **kwargs)

    def error(self, message):
        print(f"error: {message} ({self.prog} --help lists the flags)", file=sys.stderr)
        sys.exit(2)


def at_least(low, kind=int, high=None):
    """An argparse type: a finite number of ``kind`` not below ``low`` (nor above ``high``)."""
    def parse(text):
        try:
            value = kind(text)
        except (ValueError, OverflowError):
            raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, "
                                             f"got {text!r}") from None
        if not value >= low:  # also refuses nan
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {text}")
        if high is not None and value > high:
            raise argparse.ArgumentTypeError(f"must be at most {high}, got {text}")
        if value == float("inf"):
            raise argparse.ArgumentTypeError(f"must be finite, got {text}")
        return value
    return parse


MAX_IMG_SIZE = 2048  # an image side the memory of one batch can hold; larger ones only fail later
MAX_EPOCHS = 100_000  # beyond any schedule; larger counts overflow the step counters and ETAs
MAX_SEED = 2 ** 63 - 1  # torch.manual_seed's limit
MAX_WORKERS = 256  # loader processes: more only exhausts the machine's processes and memory
img_side = at_least(8, high=MAX_IMG_SIZE)


def between(low, high, high_open=False, low_open=False):
    """An argparse type: a float in ``[low, high]`` (an open end with ``high_open``, ``low_open``)."""
    def parse(text):
        value = at_least(low, float)(text)
        if value > high or (high_open and value == high) or (low_open and value == low):
            raise argparse.ArgumentTypeError(f"must be in {'(' if low_open else '['}{low}, {high}"
                                             f"{')' if high_open else ']'}, got {text}")
        return value
    return parse


def non_empty(text):
    if not text.strip():
        raise argparse.ArgumentTypeError("must not be empty")
    return text


def int_list(low, high=None):
    """An argparse type: comma-separated integers, each in [``low``, ``high``], at least one."""
    def parse(text):
        items = [t.strip() for t in text.split(",")]
        if not text.strip() or "" in items:
            raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}")
        return [at_least(low, high=high)(t) for t in items]
    return parse


def float_list(low, high=None):
    """An argparse type: comma-separated numbers, each in [``low``, ``high``], at least one."""
    def parse(text):
        items = [t.strip() for t in text.split(",")]
        if not text.strip() or "" in items:
            raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}")
        return [at_least(low, float, high=high)(t) for t in items]
    return parse


def choice_list(choices):
    """An argparse type: comma-separated names out of ``choices``, at least one."""
    def parse(text):
        items = [t.strip() for t in text.split(",") if t.strip()]
        unknown = [t for t in items if t not in choices]
        if unknown or not items:
            raise argparse.ArgumentTypeError(f"{', '.join(unknown) or 'nothing'}: choose from {', '.join(choices)}")
        return items
    return parse
