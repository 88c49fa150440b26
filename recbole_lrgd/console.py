"""What a run shows on the console: RecBole's data summary, one line on the LLM, the progress bars and the
metrics. The full config and the model's structure go to the log file alone (``FILE_ONLY``), and the
third-party warnings a user cannot act on are silenced by module, at the entry points (``quiet_libraries``),
never on import.
"""
from __future__ import annotations

import logging
import warnings

FILE_ONLY = {"file_only": True}  # ``logger.info(..., extra=FILE_ONLY)``: the log file, not the console

# (category, module regex): warnings raised inside RecBole's own code about its use of pandas, which a user
# of the plugin can do nothing about
LIBRARY_WARNINGS = ((FutureWarning, r"recbole\."),)


class _NotOnConsole(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(record, "file_only", False)


_NOT_ON_CONSOLE = _NotOnConsole()


def keep_file_only_records_off_the_console() -> None:
    """The root logger's console handlers (RecBole's ``init_logger`` sets one beside the log file's) drop
    records logged with ``FILE_ONLY``."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
            if _NOT_ON_CONSOLE not in handler.filters:
                handler.addFilter(_NOT_ON_CONSOLE)


def quiet_libraries() -> None:
    """Silence ``LIBRARY_WARNINGS`` for this process: called by the command lines, not on import."""
    for category, module in LIBRARY_WARNINGS:
        warnings.filterwarnings("ignore", category=category, module=module)
