"""Independent check of the Causeway wire format with nats-py and msgpack.

Reads every message of the given streams through JetStream (an ordered view, no Causeway code),
checks the headers (Nats-Msg-Id = id, Cw-Type = type) and decodes each payload as a MessagePack
map, then prints one JSON object per line: {"stream","sequence","subject","headers","envelope"}.

usage: python decode_envelopes.py NATS_URL STREAM [STREAM...]
"""

import asyncio
import json
import sys

import msgpack
import nats


async def main(url, streams):
    nc = await nats.connect(url)
    js = nc.jetstream()
    for stream in streams:
        info = await js.stream_info(stream)
        for seq in range(info.state.first_seq, info.state.last_seq + 1):
            msg = await js.get_msg(stream, seq)
            env = msgpack.unpackb(msg.data, raw=False)
            if not isinstance(env, dict):
                raise SystemExit(f"{stream}#{seq}: the payload is not a MessagePack map")
            headers = dict(msg.headers or {})
            if headers.get("Nats-Msg-Id") != env.get("id"):
                raise SystemExit(f"{stream}#{seq}: Nats-Msg-Id {headers.get('Nats-Msg-Id')!r} != id {env.get('id')!r}")
            if headers.get("Cw-Type") != env.get("type"):
                raise SystemExit(f"{stream}#{seq}: Cw-Type {headers.get('Cw-Type')!r} != type {env.get('type')!r}")
            print(json.dumps({"stream": stream, "sequence": seq, "subject": msg.subject, "headers": headers, "envelope": env}))
    await nc.close()


if __name__ == "__main__":
    if len(sys.argv) < 3:
        raise SystemExit(__doc__)
    asyncio.run(main(sys.argv[1], sys.argv[2:]))
