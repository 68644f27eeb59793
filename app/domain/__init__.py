"""The domain: tables (``models``), the one place that rules status
transitions (``states``), generations as clients see them, and quotas."""
