"""Files replaced whole or not at all."""
import os
import shutil
import tempfile

from .errors import UserError


def write_atomic(path, write, binary=False):
    """``write(f)`` into a temporary file beside ``path``, fsync, then rename it over ``path``: a
    kill at any moment or a full disk leaves the old file or the new one, never a cut one. A link
    is followed (the file it names is replaced, the link stays)."""
    path = os.path.realpath(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=os.path.splitext(path)[1], dir=os.path.dirname(path))
    except OSError as exc:  # no folder there, or one that cannot be written
        raise UserError(f"cannot write {path}: {exc.strerror or exc}") from None
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


def write_folder(path, write):
    """``write(tmp)`` fills a new folder beside ``path``, which then takes ``path``'s place whole:
    no file of an earlier evaluation stays beside the new ones, and a failure leaves the old folder
    as it was. Only a folder that is empty or holds an earlier result (``results.json``) is replaced."""
    path = os.path.realpath(path)
    if os.path.exists(path):
        if not os.path.isdir(path):
            raise UserError(f"--out {path} is a file, not a folder")
        if os.listdir(path) and not os.path.exists(os.path.join(path, "results.json")):
            raise UserError(f"--out {path} holds other files (no results.json of an earlier evaluation); "
                            "it is replaced whole, so name a new or an evaluation folder")
    parent = os.path.dirname(path)
    try:
        os.makedirs(parent, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=".tmp-", dir=parent)
    except OSError as exc:
        raise UserError(f"cannot write into {parent}: {exc.strerror or exc}") from None
    old = None
    try:
        os.chmod(tmp, 0o755)
        result = write(tmp)
        if os.path.exists(path):
            old = tempfile.mkdtemp(prefix=".old-", dir=parent)
            os.replace(path, os.path.join(old, "x"))
        os.replace(tmp, path)
    except BaseException:
        if old and not os.path.exists(path):  # the old folder goes back where it was
            os.replace(os.path.join(old, "x"), path)
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        if old:
            shutil.rmtree(old, ignore_errors=True)
    return result


def replace_all(files):
    """Write every ``{path: bytes}`` of ``files`` to a temporary beside it, then rename them all
    into place, only once every one is written: a full disk, a folder that cannot be written or a
    kill before the renames leave every old file as it was. An existing file keeps its mode (a
    new one gets 0644); a link is followed."""
    staged = []
    try:
        for path, data in files.items():
            path = os.path.realpath(path)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            mode = os.stat(path).st_mode & 0o7777 if os.path.exists(path) else 0o644
            fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=os.path.splitext(path)[1], dir=os.path.dirname(path))
            staged.append((tmp, path))
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, mode)
    except BaseException as exc:
        for tmp, _ in staged:
            if os.path.exists(tmp):
                os.remove(tmp)
        if isinstance(exc, OSError):
            where = exc.filename or (staged[-1][1] if staged else "")
            raise UserError(f"cannot write {where}: {exc.strerror or exc}; nothing was replaced") from None
        raise
    for tmp, path in staged:
        os.replace(tmp, path)
