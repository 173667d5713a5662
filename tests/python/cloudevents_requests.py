"""CloudEvents HTTP requests built by the official Python SDK (cloudevents), for the sidecar.

Prints one JSON array of requests, each {"name", "headers", "body"} (body as text), that the
Rust test sends to the sidecar's send and append routes: binary mode (ce-* headers), structured
mode (application/cloudevents+json) and a structured batch (application/cloudevents-batch+json).
Every event has the id given as the first argument plus a suffix, so one run's events are new.

usage: python cloudevents_requests.py ID_PREFIX
"""

import json
import sys

from cloudevents.conversion import to_binary, to_dict, to_structured
from cloudevents.http import CloudEvent


def event(prefix, n, **extra):
    attributes = {
        "type": "order.placed",
        "source": "/shop/web",
        "id": f"{prefix}-{n}",
        "subject": f"order-{n}",
        "time": "2026-11-25T12:00:00Z",
        "correlationid": f"corr-{n}",
        "tenant": "acme",
    }
    attributes.update(extra)
    return CloudEvent(attributes, {"orderId": str(n), "lines": [1, 2.5, None, True]})


def request(name, headers, body):
    if isinstance(body, bytes):
        body = body.decode("utf-8")
    return {"name": name, "headers": {k.lower(): v for k, v in headers.items()}, "body": body}


def main(prefix):
    out = []
    headers, body = to_binary(event(prefix, 1, causationid="cause-1"))
    out.append(request("binary", headers, body))
    headers, body = to_structured(event(prefix, 2, datacontenttype="application/json"))
    out.append(request("structured", headers, body))
    batch = [to_dict(event(prefix, 3)), to_dict(event(prefix, 4))]
    out.append(request("batch", {"content-type": "application/cloudevents-batch+json"}, json.dumps(batch)))
    print(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1])
