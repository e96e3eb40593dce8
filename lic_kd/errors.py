"""Errors a person reads: a mistake in the user's input (a config value, a path, an image, a checkpoint, a
SLURM request) prints as one line naming the value and what would be valid, and the process exits non-zero;
the traceback is shown only when asked (HYDRA_FULL_ERROR=1, or LIC_KD_VERBOSE=1). Anything else is a bug
and keeps its full traceback."""

from __future__ import annotations

import os
import sys
from typing import Callable

from hydra.errors import HydraException, MissingConfigException, OverrideParseException
from omegaconf.errors import OmegaConfBaseException

# What lic_kd raises about input (DataError, CheckpointError, LadderError, SlurmRequestError, and the
# ValueErrors of config checks) and what Hydra/OmegaConf raise about a command line or a config.
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, FileNotFoundError, OmegaConfBaseException, OverrideParseException,
                                                MissingConfigException, HydraException)


def verbose() -> bool:
    return os.environ.get("HYDRA_FULL_ERROR") == "1" or os.environ.get("LIC_KD_VERBOSE") == "1"


def user_error(err: BaseException) -> BaseException | None:
    """The innermost user-input error behind `err` (a sweep's job failure or Hydra's "Error in call to target"
    wraps the sentence that names the value), else None."""
    found, seen = None, err
    while seen is not None:
        if isinstance(seen, USER_ERRORS) and not type(seen).__name__ == "HydraJobException":
            found = seen
        seen = seen.__cause__
    return found


def run_cli(main: Callable[[], None]) -> None:
    """Run a Hydra entry point; a user-input error becomes one line on stderr and exit status 1."""
    if verbose():
        main()
        return
    os.environ["HYDRA_FULL_ERROR"] = "1"  # let the exception reach us instead of Hydra's trimmed traceback
    try:
        main()
    except Exception as err:
        cause = user_error(err)
        if cause is None:
            raise
        message = " ".join(str(cause).split("\n")[:2]).strip()
        sys.stderr.write(f"error: {message}\n(run with HYDRA_FULL_ERROR=1 for the traceback)\n")
        sys.exit(1)
    finally:
        os.environ.pop("HYDRA_FULL_ERROR", None)
