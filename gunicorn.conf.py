"""gunicorn settings for the API (Procfile ``web`` and ``make dev``).

gthread workers: each open SSE stream or slow client holds a thread, not a
process. Override with GUNICORN_WORKERS / GUNICORN_THREADS.
"""

import os

bind = f"0.0.0.0:{os.environ.get('PORT', '3001')}"
workers = int(os.environ.get("GUNICORN_WORKERS", "2"))
worker_class = "gthread"
threads = int(os.environ.get("GUNICORN_THREADS", "16"))
timeout = 60
graceful_timeout = 20
accesslog = "-"
