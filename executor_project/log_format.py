"""JSON log lines (LOG_FORMAT=json): one object per line, for a log pipeline (Loki, Elasticsearch, CloudWatch).

Each line has `time` (UTC, ISO 8601 with milliseconds), `level`, `logger` and `message`, then every field the call
passed in `extra=` (executions/state_log.py passes execution_id, package, project, cid, ...), then `exception` with
the traceback if there is one. Values that are not JSON types are written as their str(). Standard library only:
gunicorn's, Celery's and Django's own loggers go through the same handler and come out the same way.
"""

import json
import logging
from datetime import UTC, datetime

# What every LogRecord has; anything else on a record came from `extra=`.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        line.update((key, value) for key, value in vars(record).items() if key not in _STANDARD)
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exception"] = record.exc_text
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return json.dumps(line, default=str, ensure_ascii=False)


def apply_to(logger: logging.Logger, log_format: str) -> None:
    """Give `logger`'s handlers the JSON formatter when `log_format` is json. Celery's worker and beat replace the
    root logger's handlers with their own at start-up (worker_hijack_root_logger), so LOGGING's formatter would not
    reach their lines: executor_project/celery.py calls this from Celery's after_setup_logger signals."""
    if log_format != "json":
        return
    for handler in logger.handlers:
        handler.setFormatter(JsonFormatter())
