"""The codebook's persistence: versioned SQLite store with atomic publish (``store``), the
loaded view of one version (``live``) and the offline integrity check (``check``)."""
