"""Files replaced whole or not at all."""
import os
import tempfile

from .errors import UserError


def write_atomic(path, write, binary=False):
    """``write(f)`` into a temporary file beside ``path``, fsync, then rename it over ``path``: a
    kill at any moment or a full disk leaves the old file or the new one, never a cut one. A link
    is followed (the file it names is replaced, the link stays)."""
    path = os.path.realpath(path)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=os.path.splitext(path)[1], dir=os.path.dirname(path))
    try:
        with os.fdopen(fd, "wb" if binary else "w") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp's 0600 would hide results from the group
        os.replace(tmp, path)
    except BaseException as exc:
        if os.path.exists(tmp):
            os.remove(tmp)
        if isinstance(exc, OSError):
            raise UserError(f"cannot write {path}: {exc.strerror or exc}; the previous file is kept") from None
        raise
