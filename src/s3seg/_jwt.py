"""What a JWT says about itself, unverified: for showing a token's user and expiry (``s3seg whoami``) and
for the user a service writes as (the Supabase store). Only the API and Supabase verify tokens
(``s3seg.server._auth``)."""

from __future__ import annotations

import base64
import json
from typing import Any


def unverified_claims(token: str) -> dict[str, Any]:
    """A JWT's claims, NOT verified; {} when the token is not a JWT."""
    parts = token.split(".")
    if len(parts) != 3:
        return {}
    try:
        claims = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except ValueError:
        return {}
    return claims if isinstance(claims, dict) else {}
