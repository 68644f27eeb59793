"""gunicorn's own lines (its access log, its errors) as the app writes its
logs: with ``BFF_LOG_FORMAT=json``, one JSON object per line (``logger_class``
in gunicorn.conf.py), so a log shipper reads one format from the web."""

from __future__ import annotations

import os
from typing import Any

from gunicorn import glogging

from app.platform.logs import JsonFormatter, stamp


class Logger(glogging.Logger):
    def setup(self, cfg: Any) -> None:
        super().setup(cfg)
        if os.environ.get("BFF_LOG_FORMAT", "text").lower() != "json":
            return
        for log in (self.error_log, self.access_log):
            for handler in log.handlers:
                handler.setFormatter(JsonFormatter())
                handler.addFilter(stamp)
