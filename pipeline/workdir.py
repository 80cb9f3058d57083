"""Relative paths in Ray's copy of the working directory.

`ray job submit --working-dir .` uploads the repository (without what .gitignore names: data/,
runs/, .venv/) and runs the job in a copy under Ray's session folder
(`.../runtime_resources/working_dir_files/_ray_pkg_<hash>/`). A relative path there names a
file of that copy: an input under data/ is missing, and an output under runs/ would be written
into the copy and deleted with it. The job cannot know where the submitting checkout is (the
head may be another machine), so it does not guess: it refuses the path in one line."""

from __future__ import annotations

import os

from pipeline.config import UserError

RAY_PACKAGE = f"{os.sep}working_dir_files{os.sep}_ray_pkg_"


def in_ray_copy(cwd: str | None = None) -> bool:
    """Whether this process runs in Ray's copy of a job's working directory."""
    return RAY_PACKAGE in (cwd or os.getcwd())


def _relative(path: str | None) -> bool:
    return bool(path) and "://" not in path and not os.path.isabs(os.path.expanduser(path))


def _refuse(key: str, path: str, why: str) -> None:
    raise UserError(
        f"{key}={path!r} is relative, and this job runs in Ray's copy of the working directory"
        f" ({os.getcwd()}), which `ray job submit` uploads without data/ and runs/; {why};"
        " expected an absolute path or a gs:// / s3:// URL (`make head` prints a submit command"
        " with this checkout's paths)"
    )


def check_input(key: str, path: str | None) -> None:
    """A relative input that is not in Ray's copy: one line (one that is, e.g. configs/, is)."""
    if _relative(path) and in_ray_copy() and not os.path.exists(path):
        _refuse(key, path, "it is not there")


def check_output(key: str, path: str | None) -> None:
    """A relative output in Ray's copy would be deleted with it: one line."""
    if _relative(path) and in_ray_copy():
        _refuse(key, path, "what is written there is deleted with the copy")
