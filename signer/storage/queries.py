"""SQL text both backends build the same way, differing only in their placeholder."""

from __future__ import annotations


def find_keys(
    select: str,
    mark: str,
    role: str = "",
    repository: str = "",
    state: str = "",
    after: tuple[float, str] | None = None,
    limit: int | None = None,
) -> tuple[str, list[object]]:
    """``KeyStore.find`` as (sql, args): filters, keyset paging on (created_at, key_id),
    oldest first. ``mark`` is the driver's placeholder (``?`` or ``%s``)."""
    where: list[str] = []
    args: list[object] = []
    for column, value in (("role", role), ("repository", repository), ("state", state)):
        if value:
            where.append(f"{column} = {mark}")
            args.append(value)
    if after is not None:
        where.append(f"(created_at, key_id) > ({mark}, {mark})")
        args.extend(after)
    sql = select + (" WHERE " + " AND ".join(where) if where else "")
    sql += " ORDER BY created_at, key_id"
    if limit is not None:
        sql += f" LIMIT {mark}"
        args.append(limit)
    return sql, args
