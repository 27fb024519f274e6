"""A pod's application for the sidecar tests: `pod_app.py NAME PORT`.

Every request is answered with JSON: {"app": NAME, "method", "path", "headers": {lowercase
name: value}}. A request with the query `call=URL` first makes a GET to URL (from inside
the pod, so through its sidecar when its traffic is captured) with the `x-call-*` request
headers passed on without the prefix, and adds what came back as "called": {"status",
"body"} (the body parsed as JSON when it is JSON). A failed call gives "called":
{"status": 0, "error": TEXT}.
"""
import http.server
import json
import sys
import urllib.error
import urllib.parse
import urllib.request

NAME = sys.argv[1]
PORT = int(sys.argv[2])


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        self.answer()

    def do_POST(self):
        length = int(self.headers.get("content-length") or 0)
        if length:
            self.rfile.read(length)
        self.answer()

    def answer(self):
        out = {
            "app": NAME,
            "method": self.command,
            "path": self.path,
            "headers": {k.lower(): v for k, v in self.headers.items()},
        }
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
        if "call" in query:
            out["called"] = call(query["call"][0], self.headers)
        body = json.dumps(out).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, fmt, *args):
        sys.stderr.write("%s %s\n" % (NAME, fmt % args))


def call(url, headers):
    passed = {
        k[len("x-call-"):]: v for k, v in headers.items() if k.lower().startswith("x-call-")
    }
    req = urllib.request.Request(url, headers=passed)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            status, raw = resp.status, resp.read()
    except urllib.error.HTTPError as e:
        status, raw = e.code, e.read()
    except Exception as e:  # the caller reports it
        return {"status": 0, "error": str(e)}
    try:
        body = json.loads(raw)
    except ValueError:
        body = raw.decode(errors="replace")
    return {"status": status, "body": body}


http.server.ThreadingHTTPServer.allow_reuse_address = True
server = http.server.ThreadingHTTPServer(("0.0.0.0", PORT), Handler)
print("listening", PORT, flush=True)
server.serve_forever()
