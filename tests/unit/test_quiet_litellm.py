"""litellm's own logging is off unless asked for: after `setup_litellm()` no per-call
INFO line reaches the process's handlers, a real warning still does (once), and
LITELLM_LOG is honoured. In a fresh process each: the configuration is process-wide."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.support import REPO

# Logging as a Celery worker at --loglevel INFO sets it up: one root handler, level INFO.
_PROBE = """
import logging, sys
logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(name)s %(message)s")
from workers.llm.calls import setup_litellm
litellm = setup_litellm()
from litellm._logging import verbose_logger
verbose_logger.info("per-call line model=%s", "openai/fake")
verbose_logger.warning("a real warning")
print("CALLBACKS", litellm.callbacks, litellm.success_callback, litellm._async_success_callback)
"""


def _probe(**env: str) -> str:
    clean = {k: v for k, v in os.environ.items() if k != "LITELLM_LOG"}
    done = subprocess.run([sys.executable, "-c", _PROBE], cwd=REPO, env={**clean, **env},
                          capture_output=True, text=True, timeout=120, check=True)
    return done.stdout + done.stderr


def test_no_per_call_lines_and_warnings_once():
    out = _probe()
    assert "per-call line" not in out
    assert out.count("a real warning") == 1, out
    assert "CALLBACKS [] [] []" in out


def test_litellm_log_is_honoured():
    out = _probe(LITELLM_LOG="INFO")
    assert out.count("per-call line model=openai/fake") == 1, out
    assert out.count("a real warning") == 1, out
