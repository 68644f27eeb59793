"""What the application runs on: settings, the database, the Celery queue,
storage, Redis (rate limits, live events), metrics and logs."""
