"""The storage layer: the only code that speaks SQL.

``sqlite`` holds the connection and transaction helpers every SQLite-backed store uses
(registry, TUF versions, quorum requests, notary key map, rate-limit buckets, audit).
"""
