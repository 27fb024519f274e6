#!/usr/bin/env python3
"""gRPC peers for tests/proxyless_grpc.rs, on grpcio (the library under test is gRPC's
own xDS client, configured by meshgate's control plane).

  grpc_peer.py serve NAME
      A gRPC server on 127.0.0.1, port chosen by the OS; prints `listening PORT` once it
      serves, and stops when its standard input closes. It serves the unary method
      /meshgate.test.Echo/Who (raw bytes, no protobuf), answering with JSON:
      {"server": NAME, "failed": N}. Request metadata steers it:
        x-delay-ms: MS        answer after MS milliseconds
        x-fail: unavailable   fail with UNAVAILABLE (counted in `failed`)

  grpc_peer.py client TARGET
      One channel to TARGET (xds:///HOST:PORT, with GRPC_XDS_BOOTSTRAP set), kept for
      the process's life. Reads commands from standard input, one per line:
        call N [KEY=VALUE ...]
      makes N calls of Who with that metadata (10 s deadline each) and prints one JSON
      line: {"servers": {NAME: count}, "codes": {STATUS: count}, "last": REPLY,
      "errors": [first few error details], "elapsed_ms": MS for all N}.
"""
import json
import sys
import threading
import time
from concurrent import futures

import grpc

METHOD = "/meshgate.test.Echo/Who"
SERVICE, NAME_OF_METHOD = METHOD.strip("/").split("/")


def serve(name):
    lock = threading.Lock()
    failed = [0]

    def who(request, context):
        meta = dict(context.invocation_metadata())
        if meta.get("x-fail") == "unavailable":
            with lock:
                failed[0] += 1
            context.abort(grpc.StatusCode.UNAVAILABLE, "asked to fail")
        delay = meta.get("x-delay-ms")
        if delay:
            time.sleep(int(delay) / 1000.0)
        with lock:
            reply = {"server": name, "failed": failed[0]}
        return json.dumps(reply).encode()

    handler = grpc.method_handlers_generic_handler(
        SERVICE, {NAME_OF_METHOD: grpc.unary_unary_rpc_method_handler(who)}
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(f"listening {port}", flush=True)
    # Until the test goes away.
    sys.stdin.read()
    server.stop(0)


def client(target):
    channel = grpc.insecure_channel(target)
    who = channel.unary_unary(METHOD)
    for line in sys.stdin:
        words = line.split()
        if not words:
            continue
        if words[0] != "call" or len(words) < 2:
            print(json.dumps({"error": f"unknown command: {line.strip()}"}), flush=True)
            continue
        n = int(words[1])
        metadata = tuple(tuple(w.split("=", 1)) for w in words[2:])
        servers, codes, errors, last = {}, {}, [], None
        started = time.monotonic()
        for _ in range(n):
            try:
                last = json.loads(who(b"", metadata=metadata, timeout=10))
                servers[last["server"]] = servers.get(last["server"], 0) + 1
                codes["OK"] = codes.get("OK", 0) + 1
            except grpc.RpcError as e:
                code = e.code().name
                codes[code] = codes.get(code, 0) + 1
                if len(errors) < 5:
                    errors.append(f"{code}: {e.details()}")
        print(
            json.dumps(
                {
                    "servers": servers,
                    "codes": codes,
                    "last": last,
                    "errors": errors,
                    "elapsed_ms": round((time.monotonic() - started) * 1000),
                }
            ),
            flush=True,
        )
    channel.close()


def main():
    if len(sys.argv) != 3 or sys.argv[1] not in ("serve", "client"):
        sys.exit(__doc__)
    if sys.argv[1] == "serve":
        serve(sys.argv[2])
    else:
        client(sys.argv[2])


if __name__ == "__main__":
    main()
