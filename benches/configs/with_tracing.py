#!/usr/bin/env python3
"""Turns on Zipkin tracing in every HTTP connection manager of an Envoy-format config
(meshgate's JSON or Envoy's YAML), for the tracing benchmark: what Istio's MeshConfig
`extensionProviders: [{zipkin: ...}]` with a `randomSamplingPercentage` becomes. Every
request gets an `x-request-id` (as in an Istio gateway); PERCENT of them are sampled and
their spans are reported to a collector cluster `zipkin` on 127.0.0.1:PORT.

    with_tracing.py PERCENT PORT FILE   (rewritten in place; YAML in, YAML out; JSON in, JSON out)

PERCENT=0 keeps tracing configured with nothing sampled; PERCENT=off only generates the
request id (the baseline to compare with).
"""
import json
import sys

import yaml


def tracing(percent):
    return {
        "client_sampling": {"value": 100},
        "random_sampling": {"value": percent},
        "overall_sampling": {"value": 100},
        "provider": {
            "name": "envoy.tracers.zipkin",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.config.trace.v3.ZipkinConfig",
                "collector_cluster": "zipkin",
                "collector_endpoint": "/api/v2/spans",
                "collector_endpoint_version": "HTTP_JSON",
                "trace_id_128bit": True,
                "shared_span_context": False,
            },
        },
    }


def collector(port):
    return {
        "name": "zipkin",
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": "zipkin",
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {
                "socket_address": {"address": "127.0.0.1", "port_value": port}}}}]}],
        },
    }


def patch(node, percent, seen):
    if isinstance(node, dict):
        t = node.get("@type", "")
        if t.endswith(".HttpConnectionManager") and id(node) not in seen:
            seen.add(id(node))
            node["generate_request_id"] = True
            if percent is not None:
                node["tracing"] = tracing(percent)
        for v in node.values():
            patch(v, percent, seen)
    elif isinstance(node, list):
        for v in node:
            patch(v, percent, seen)


def main():
    percent = None if sys.argv[1] == "off" else float(sys.argv[1])
    port = int(sys.argv[2])
    path = sys.argv[3]
    text = open(path).read()
    is_json = path.endswith(".json")
    doc = json.loads(text) if is_json else yaml.safe_load(text)
    patch(doc, percent, set())
    if percent is not None:
        resources = doc.get("static_resources", doc)
        resources["clusters"].append(collector(port))
    with open(path, "w") as f:
        if is_json:
            json.dump(doc, f, indent=1)
        else:
            yaml.safe_dump(doc, f, sort_keys=False)


if __name__ == "__main__":
    main()
