#!/usr/bin/env python3
"""Reduce an x509-limbo suite to the cases Palisade's broker verifier is tested on.

Usage: reduce.py FULL_LIMBO_JSON OUTPUT_JSON

Keeps SERVER cases that a rustls/webpki server verifier configured only with
trust anchors and a server name can express: no CRLs (Palisade revokes
sessions, not certificates), no custom chain depth, key usage or signature
algorithm settings, and exactly one expected peer name. Drops descriptions'
bodies (the first line is kept), private keys, validation times as Unix seconds, and the denial-of-service
cases but one (each is 55-185 kB).
"""

import json
import sys
from datetime import datetime

# Denial-of-service cases are large (55-185 kB each); one 100-intermediate chain is kept.
DOS_KEPT = {"pathological::pathological-chain-distinct-subject-distinct-key"}


def expressible(case: dict) -> bool:
    return (
        case["validation_kind"] == "SERVER"
        and not case.get("crls")
        and case["max_chain_depth"] is None
        and not case["key_usage"]
        and not case["signature_algorithms"]
        and case["extended_key_usage"] in ([], None, ["serverAuth"])
        and not case["expected_peer_names"]
        and case["expected_peer_name"] is not None
    )


def unix(when: str | None) -> int | None:
    return None if when is None else int(datetime.fromisoformat(when).timestamp())


def reduce(case: dict) -> dict:
    return {
        "id": case["id"],
        "features": case["features"] or [],
        "description": (case["description"] or "").strip().splitlines()[0] if case["description"] else "",
        "trusted_certs": case["trusted_certs"],
        "untrusted_intermediates": case["untrusted_intermediates"],
        "peer_certificate": case["peer_certificate"],
        # Seconds since the epoch (webpki's resolution); null means "now".
        "validation_time": unix(case["validation_time"]),
        "expected_result": case["expected_result"],
        "expected_peer_name": case["expected_peer_name"],
    }


def main() -> None:
    full = json.load(open(sys.argv[1]))
    kept = [reduce(c) for c in full["testcases"] if expressible(c)]
    kept = [c for c in kept if "denial-of-service" not in c["features"] or c["id"] in DOS_KEPT]
    # One case per line, so a regeneration diffs case by case.
    lines = ",\n".join(json.dumps(c, separators=(",", ":")) for c in kept)
    with open(sys.argv[2], "w") as out:
        out.write(f'{{"version":{full["version"]},"testcases":[\n{lines}\n]}}\n')
    print(f"{len(kept)} of {len(full['testcases'])} cases kept", file=sys.stderr)


if __name__ == "__main__":
    main()
