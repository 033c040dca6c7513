"""``inspect``: the JSON and tables of ``docker trust inspect``, from verified metadata.

The JSON has docker's shape exactly (``Name``, ``SignedTags`` with hex ``Digest`` and
``Signers``, ``Signers`` with key IDs, ``AdministrativeKeys`` "Root" and "Repository"), so
scripts written against docker keep working.
"""

from __future__ import annotations

from typing import Any

from signer_client.trust.repo import RELEASES, ROOT, TARGETS, Collection, TrustRepository


def _signers(collection: Collection) -> list[dict[str, Any]]:
    keys = collection.targets.delegations.keys
    out = []
    for role in collection.targets.delegations.roles:
        if role.name == RELEASES or role.name.count("/") != 1:
            continue
        ids = [keys[k].canonical_id if k in keys else k for k in role.keyids]
        out.append({"Name": role.name.removeprefix("targets/"), "Keys": [{"ID": i} for i in ids]})
    return sorted(out, key=lambda s: s["Name"], reverse=True)


def _admin(collection: Collection) -> list[dict[str, Any]]:
    names = {ROOT: "Root", TARGETS: "Repository"}
    out = [
        {
            "Name": names[role],
            "Keys": [{"ID": k} for k in sorted(collection.root.roles[role].keyids)],
        }
        for role in (ROOT, TARGETS)
    ]
    return sorted(out, key=lambda s: s["Name"], reverse=True)


def inspect_json(
    name: str, tag: str, repo: TrustRepository, collection: Collection
) -> dict[str, Any]:
    tags = [t for t in repo.signed_tags(collection) if not tag or t.tag == tag]
    return {
        "Name": name,
        "SignedTags": [
            {"SignedTag": t.tag, "Digest": t.digest, "Signers": list(t.signers)} for t in tags
        ],
        "Signers": _signers(collection),
        "AdministrativeKeys": _admin(collection),
    }


def inspect_pretty(name: str, tag: str, repo: TrustRepository, collection: Collection) -> str:
    info = inspect_json(name, tag, repo, collection)
    lines = []
    if info["SignedTags"]:
        lines.append(f"Signatures for {name}\n")
        rows = [("SIGNED TAG", "DIGEST", "SIGNERS")] + [
            (t["SignedTag"], t["Digest"], ", ".join(t["Signers"])) for t in info["SignedTags"]
        ]
        lines.extend(_table(rows))
    else:
        lines.append(f"No signatures for {name}")
    if info["Signers"]:
        lines.append(f"\nList of signers and their keys for {name}\n")
        rows = [("SIGNER", "KEYS")] + [
            (s["Name"], ", ".join(k["ID"][:12] for k in s["Keys"])) for s in info["Signers"]
        ]
        lines.extend(_table(rows))
    lines.append(f"\nAdministrative keys for {name}\n")
    for admin in info["AdministrativeKeys"]:
        label = "Repository Key" if admin["Name"] == "Repository" else "Root Key"
        lines.append(f"  {label}:\t" + ", ".join(k["ID"] for k in admin["Keys"]))
    return "\n".join(lines)


def _table(rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return [
        "   ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]
