"""Errors a person reads: a mistake in the user's input (a config value, a path, an image, a checkpoint, a
SLURM request) is a UserError raised where the value enters; every command prints it as one line naming the
value and what would be valid, and exits with USER_ERROR_STATUS. The traceback is shown only when asked
(HYDRA_FULL_ERROR=1, or LIC_KD_VERBOSE=1). Anything else is a bug and keeps its full traceback."""

from __future__ import annotations

import os
import sys
from typing import Callable

from hydra.errors import MissingConfigException, OverrideParseException
from omegaconf.errors import OmegaConfBaseException

USER_ERROR_STATUS = 2  # as argparse and Hydra's own command-line errors


class UserError(ValueError):
    """Bad input: the message names the value and the fix. (A ValueError, so that callers that validate
    values may catch it as one.)"""


class ConfigError(UserError):
    """A configuration value that cannot work, found before any expensive work starts."""


class CheckpointError(UserError):
    """A checkpoint that is missing or cannot be loaded; the message names it."""


# What lic_kd raises about input, and what Hydra/OmegaConf raise about a command line or a config file.
USER_ERRORS: tuple[type[BaseException], ...] = (
    UserError,
    OmegaConfBaseException,
    OverrideParseException,
    MissingConfigException,
)


def verbose() -> bool:
    return os.environ.get("HYDRA_FULL_ERROR") == "1" or os.environ.get("LIC_KD_VERBOSE") == "1"


def user_error(err: BaseException) -> BaseException | None:
    """The innermost user-input error behind `err` (a sweep's job failure or Hydra's "Error in call to target"
    wraps the sentence that names the value), else None: then `err` is a bug."""
    found, seen = None, err
    while seen is not None:
        if isinstance(seen, USER_ERRORS):
            found = seen
        seen = seen.__cause__
    return found


def one_line(err: BaseException) -> str:
    return " ".join(str(err).split("\n")[:2]).strip()


def exit_on_user_error(err: BaseException) -> None:
    """Print a user error as one line and exit with USER_ERROR_STATUS; return for anything else (a bug)."""
    cause = user_error(err)
    if cause is None:
        return
    sys.stderr.write(f"error: {one_line(cause)}\n(run with HYDRA_FULL_ERROR=1 for the traceback)\n")
    sys.exit(USER_ERROR_STATUS)


def run_cli(main: Callable[[], None]) -> None:
    """Run an entry point; a user-input error becomes one line on stderr and exit status 2, a bug keeps its
    traceback."""
    if verbose():
        main()
        return
    os.environ["HYDRA_FULL_ERROR"] = "1"  # let the exception reach us instead of Hydra's trimmed traceback
    try:
        main()
    except Exception as err:
        exit_on_user_error(err)
        raise
    finally:
        os.environ.pop("HYDRA_FULL_ERROR", None)
