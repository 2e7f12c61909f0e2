"""Parse oslo.messaging messages' `_context_*` keys with Nova's own code.

Reads one JSON message per line on stdin, hands its `_context_*` keys
(without the prefix), as oslo.messaging's serializer does, to
`nova.context.RequestContext.from_dict`, and prints the context it built as
one JSON line, or `{"error": ...}` when Nova refuses it.
"""

import json
import sys

from nova import context

for line in sys.stdin:
    message = json.loads(line)
    values = {
        k[len("_context_"):]: v for k, v in message.items() if k.startswith("_context_")
    }
    try:
        ctx = context.RequestContext.from_dict(values)
        out = {
            "project_id": ctx.project_id,
            "user_id": ctx.user_id,
            "request_id": ctx.request_id,
            "timestamp": ctx.timestamp.isoformat(),
            "read_deleted": ctx.read_deleted,
            "is_admin": ctx.is_admin,
        }
    except Exception as e:  # noqa: BLE001 - reported to the test
        out = {"error": f"{type(e).__name__}: {e}"}
    print(json.dumps(out), flush=True)
