"""How much of Ray's and MLflow's own logging a command shows.

Their INFO lines describe their machinery (a local Ray started, a dataset executed, the
MLflow tables created, the system-metrics sampler started), not the user's job: setpipe
prints its own progress. Commands show their warnings and errors; ``--quiet`` shows
errors only, and the Ray workers' output is not forwarded at all, so what is left is
setpipe's own summary. Call ``library_logging`` before Ray is initialised and before
MLflow is imported: both read their settings then.
"""

from __future__ import annotations

import logging
import os
import sys

from setpipe._compat import RAY_LOG_TO_DRIVER

MLFLOW_LOGGING_LEVEL = "MLFLOW_LOGGING_LEVEL"
"""MLflow's documented switch for its loggers' level (mlflow.environment_variables)."""


def library_logging(*, quiet: bool) -> None:
    """Ray's and MLflow's console logging at WARNING, or at ERROR under ``quiet``."""
    level = logging.ERROR if quiet else logging.WARNING
    os.environ[MLFLOW_LOGGING_LEVEL] = logging.getLevelName(level)
    if "mlflow" in sys.modules:  # imported already (in-process callers): set it directly
        logging.getLogger("mlflow").setLevel(level)
    if quiet and "ray" not in sys.modules:
        # Read once, when Ray is imported; ray.init's log_to_driver defaults to it.
        os.environ[RAY_LOG_TO_DRIVER] = "0"
    # Ray's console handler exists from its import on, Ray Data's (which does not
    # propagate to "ray") from its own.
    import ray.data  # noqa: F401

    for name in ("ray", "ray.data"):
        for handler in logging.getLogger(name).handlers:
            # The console handlers only: Ray Data's log file keeps everything.
            if type(handler) is not logging.FileHandler and isinstance(
                handler, logging.StreamHandler
            ):
                handler.setLevel(max(handler.level, level))
    if quiet:  # Python warnings too: logged through "py.warnings", shown from ERROR up
        logging.captureWarnings(True)
        logging.getLogger("py.warnings").setLevel(logging.ERROR)
