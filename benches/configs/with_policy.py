#!/usr/bin/env python3
"""Adds an authorization policy and a rate limit to every HTTP connection manager of an
Envoy-format config (meshgate's JSON or Envoy's YAML), for the policy benchmark: the
same two filters Istio's AuthorizationPolicy and meshgate's RateLimitPolicy become,
sized so that every benchmark request is allowed and none is limited, so what is
measured is the cost of deciding.

    with_policy.py FILE   (rewritten in place; YAML in, YAML out; JSON in, JSON out)
"""
import json
import sys

import yaml

RBAC = {
    "name": "envoy.filters.http.rbac",
    "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC",
        "rules": {
            "action": "ALLOW",
            "policies": {
                "ns[bench]-policy[clients]-rule[0]": {
                    "permissions": [{"and_rules": {"rules": [
                        {"or_rules": {"rules": [
                            {"header": {"name": ":method", "string_match": {"exact": "GET"}}},
                            {"header": {"name": ":method", "string_match": {"exact": "HEAD"}}},
                        ]}},
                        {"or_rules": {"rules": [
                            {"url_path": {"path": {"prefix": "/"}}},
                        ]}},
                    ]}}],
                    "principals": [{"and_ids": {"ids": [
                        {"or_ids": {"ids": [
                            {"remote_ip": {"address_prefix": "127.0.0.0", "prefix_len": 8}},
                        ]}},
                    ]}}],
                }
            },
        },
    },
}

LOCAL_RATELIMIT = {
    "name": "envoy.filters.http.local_ratelimit",
    "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit",
        "stat_prefix": "http_local_rate_limiter",
        "token_bucket": {
            "max_tokens": 100000000,
            "tokens_per_fill": 100000000,
            "fill_interval": "1s",
        },
        "filter_enabled": {
            "runtime_key": "local_rate_limit_enabled",
            "default_value": {"numerator": 100, "denominator": "HUNDRED"},
        },
        "filter_enforced": {
            "runtime_key": "local_rate_limit_enforced",
            "default_value": {"numerator": 100, "denominator": "HUNDRED"},
        },
    },
}


def patch(node):
    if isinstance(node, dict):
        if "http_filters" in node and isinstance(node["http_filters"], list):
            node["http_filters"][0:0] = [LOCAL_RATELIMIT, RBAC]
        for v in node.values():
            patch(v)
    elif isinstance(node, list):
        for v in node:
            patch(v)


def main():
    path = sys.argv[1]
    text = open(path).read()
    is_json = path.endswith(".json")
    doc = json.loads(text) if is_json else yaml.safe_load(text)
    patch(doc)
    with open(path, "w") as f:
        if is_json:
            json.dump(doc, f, indent=1)
        else:
            yaml.safe_dump(doc, f, sort_keys=False)


if __name__ == "__main__":
    main()
