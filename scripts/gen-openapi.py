#!/usr/bin/env python3
# Writes openapi.json (the OpenAPI 3.1 document of API.md): python3 scripts/gen-openapi.py > openapi.json
import json
err = {"$ref": "#/components/schemas/Error"}
def resp(desc, schema=None, content="application/json"):
    r = {"description": desc}
    if schema is not None:
        r["content"] = {content: {"schema": schema}}
    return r
def errors(*codes):
    d = {}
    names = {"400": "Bad input (see `code`)", "401": "No token, or a wrong one", "403": "The token's role is too low",
             "404": "Not found", "405": "Method not allowed", "408": "The body did not arrive in time",
             "409": "Refused by the cluster's state", "410": "Gone", "412": "A condition did not hold; nothing changed",
             "413": "Too large", "503": "Not done and never will be: retry (no leader, overloaded, leader changed)",
             "504": "Outcome unknown: the write may still take effect"}
    for c in codes:
        d[c] = resp(names[c], err)
    return d
key_param = {"name": "key", "in": "path", "required": True, "description": "UTF-8, 1 to 1024 bytes; may contain `/`",
             "schema": {"type": "string", "minLength": 1}}
consistency = {"name": "consistency", "in": "query", "required": False,
               "schema": {"type": "string", "enum": ["linearizable", "lease", "stale"], "default": "linearizable"}}
session_headers = [
    {"name": "Raftkv-Session", "in": "header", "required": False, "description": "A session id from POST /sessions (with Raftkv-Seq)",
     "schema": {"type": "integer", "minimum": 1}},
    {"name": "Raftkv-Seq", "in": "header", "required": False, "description": "The write's sequence number in the session (with Raftkv-Session)",
     "schema": {"type": "integer", "minimum": 1}},
]
item = {"type": "object", "required": ["key", "value", "revision"],
        "properties": {"key": {"type": "string"}, "value": {"type": "string"}, "revision": {"type": "integer", "minimum": 1},
                       "stale": {"type": "boolean"}}}
write_ok = {"type": "object", "required": ["key", "revision"],
            "properties": {"key": {"type": "string"}, "revision": {"type": "integer"}}}
delete_ok = {"type": "object", "required": ["key", "deleted", "revision"],
             "properties": {"key": {"type": "string"}, "deleted": {"type": "boolean"}, "revision": {"type": "integer"}}}
op = {"oneOf": [
    {"type": "object", "required": ["put"], "additionalProperties": False, "properties": {"put": {
        "type": "object", "required": ["key", "value"], "additionalProperties": False,
        "properties": {"key": {"type": "string", "minLength": 1}, "value": {"type": "string"}}}}},
    {"type": "object", "required": ["delete"], "additionalProperties": False, "properties": {"delete": {
        "type": "object", "required": ["key"], "additionalProperties": False, "properties": {"key": {"type": "string", "minLength": 1}}}}},
    {"type": "object", "required": ["get"], "additionalProperties": False, "properties": {"get": {
        "type": "object", "required": ["key"], "additionalProperties": False, "properties": {"key": {"type": "string", "minLength": 1}}}}},
]}
compare = {"type": "object", "required": ["key"], "additionalProperties": False, "minProperties": 2, "maxProperties": 2,
           "properties": {"key": {"type": "string", "minLength": 1}, "value": {"type": "string"},
                          "revision": {"type": "integer", "minimum": 0}, "exists": {"type": "boolean"}}}
watch_params = [
    {"name": "watch", "in": "query", "required": False,
     "description": "true: answer with a text/event-stream of changes (API.md, Watch) instead of the state",
     "schema": {"type": "string", "enum": ["true", "false"]}},
    {"name": "from_revision", "in": "query", "required": False, "description": "With watch=true: the first revision to stream (default: the next change)",
     "schema": {"type": "integer", "minimum": 1}},
    {"name": "Last-Event-ID", "in": "header", "required": False, "description": "With watch=true: resume after this revision (wins over from_revision)",
     "schema": {"type": "integer", "minimum": 0}},
    {"name": "after_revision", "in": "query", "required": False,
     "description": "Blocking read: answer when a watched key changes after this revision, or when `wait` is over",
     "schema": {"type": "integer", "minimum": 0}},
    {"name": "wait", "in": "query", "required": False, "description": "Blocking read: longest wait, e.g. 500ms, 30s, 2m (at most 10m; needs after_revision)",
     "schema": {"type": "string", "pattern": "^[0-9]+(ms|s|m)$"}},
]
revision_header = {"Raftkv-Revision": {"description": "Blocking reads: the revision up to which the node looked (the next after_revision)",
                                       "schema": {"type": "integer"}}}
event_stream = {"type": "string", "description": "Server-Sent Events: put, delete, progress, cancelled (API.md, Watch)"}
def with_stream(r):
    r["content"]["text/event-stream"] = {"schema": event_stream}
    r["headers"] = revision_header
    return r
doc = {
  "openapi": "3.1.0",
  "info": {"title": "raftkv", "version": "0.1.0",
           "description": "A strongly consistent key-value store replicated with Raft. Any node serves every endpoint; followers forward to the leader. API.md is the prose contract; this document matches it."},
  "paths": {
    "/kv/{key}": {
      "parameters": [key_param],
      "get": {"summary": "Read a key, watch it (watch=true), or wait for it to change (after_revision)", "parameters": [consistency] + watch_params,
              "responses": {"200": with_stream(resp("The key; with watch=true, the stream of its changes", item)),
                            **errors("400", "401", "403", "404", "410", "503", "504")}},
      "put": {"summary": "Write a key, optionally only if a condition holds", "parameters": session_headers,
              "requestBody": {"required": True, "content": {"application/json": {"schema": {
                  "type": "object", "required": ["value"], "additionalProperties": False,
                  "dependentSchemas": {"if_value": {"properties": {"if_revision": False}}},
                  "properties": {"value": {"type": "string"}, "if_value": {"type": "string"},
                                 "if_revision": {"type": "integer", "minimum": 0}, "lease": {"type": "integer", "minimum": 1}}}}}},
              "responses": {"200": resp("Committed on a majority and applied", write_ok),
                            **errors("400", "401", "403", "404", "408", "409", "410", "412", "413", "503", "504")}},
      "delete": {"summary": "Delete a key", "parameters": [
                  {"name": "if_revision", "in": "query", "required": False, "schema": {"type": "integer", "minimum": 0}}] + session_headers,
                 "responses": {"200": resp("Committed and applied (deleted: false if the key did not exist)", delete_ok),
                               **errors("400", "401", "403", "409", "410", "412", "503", "504")}},
    },
    "/kv": {
      "get": {"summary": "List keys in order, optionally under a prefix",
              "parameters": [{"name": "prefix", "in": "query", "required": False, "schema": {"type": "string"}},
                             {"name": "limit", "in": "query", "required": False, "schema": {"type": "integer", "minimum": 1}},
                             consistency] + watch_params,
              "responses": {"200": with_stream(resp("Matching keys; with watch=true, the stream of their changes", {"type": "object", "required": ["items", "revision"], "properties": {
                  "items": {"type": "array", "items": item}, "revision": {"type": "integer"}, "stale": {"type": "boolean"}}})),
                  **errors("400", "401", "403", "410", "503", "504")}},
    },
    "/txn": {
      "post": {"summary": "Compare several keys, then put/delete/get several keys, atomically", "parameters": session_headers,
               "requestBody": {"required": True, "content": {"application/json": {"schema": {
                   "type": "object", "additionalProperties": False,
                   "properties": {"compare": {"type": "array", "items": compare},
                                  "success": {"type": "array", "items": op}, "failure": {"type": "array", "items": op}}}}}},
               "responses": {"200": resp("The branch that ran, and one result per operation", {
                   "type": "object", "required": ["succeeded", "revision", "results"],
                   "properties": {"succeeded": {"type": "boolean"}, "revision": {"type": "integer"},
                                  "results": {"type": "array", "items": {"type": "object"}}}}),
                   **errors("400", "401", "403", "408", "409", "410", "413", "503", "504")}},
    },
    "/sessions": {
      "post": {"summary": "Open a client session (exactly-once writes)",
               "requestBody": {"required": False, "content": {"application/json": {"schema": {"type": "object", "maxProperties": 0}}}},
               "responses": {"200": resp("The session", {"type": "object", "required": ["session", "ttl_ms"], "properties": {
                   "session": {"type": "integer"}, "ttl_ms": {"type": "integer"}}}),
                   **errors("400", "401", "403", "503", "504")}},
    },
    "/health": {"get": {"summary": "The process serves HTTP", "security": [],
                        "responses": {"200": resp("Up", {"type": "object", "required": ["status", "id"], "properties": {
                            "status": {"const": "ok"}, "id": {"type": "integer"}}})}}},
    "/ready": {"get": {"summary": "A leader is known and everything known committed is applied", "security": [],
                       "responses": {"200": resp("Ready", {"type": "object"}), **errors("503")}}},
    "/status": {"get": {"summary": "Role, term, indexes, peers, log and snapshots of this node",
                        "responses": {"200": resp("Status", {"type": "object", "required": ["id", "role", "term", "commit_index", "applied_index", "requests", "events"],
                                                             "properties": {
                                                                 "requests": {"type": "object", "required": ["reads", "writes"]},
                                                                 "events": {"type": "array", "items": {"type": "object", "required": ["at_ms", "node", "term", "kind", "text"], "properties": {
                                                                     "kind": {"enum": ["election", "leader", "term", "membership", "snapshot"]}, "text": {"type": "string"}}}}}}),
                                      **errors("401", "403")}}},
    "/ui": {"get": {"summary": "The web view (an HTML page built into the binary)", "security": [],
                    "responses": {"200": resp("The page", {"type": "string"}, "text/html")}}},
    "/ui/events": {"get": {"summary": "The whole cluster as the web view draws it, every 250 ms (Server-Sent Events, event: cluster)",
                           "responses": {"200": resp("An endless stream", {"type": "string"}, "text/event-stream"), **errors("400", "401", "403")}}},
    "/metrics": {"get": {"summary": "Prometheus metrics",
                         "responses": {"200": resp("Text exposition format", {"type": "string"}, "text/plain"), **errors("401", "403")}}},
    "/admin/log": {
      "get": {"summary": "The per-actor log filter", "responses": {"200": resp("Filter", {"type": "object", "required": ["filter"]}), **errors("401", "403")}},
      "put": {"summary": "Change the per-actor log filter (RUST_LOG syntax)",
              "requestBody": {"required": True, "content": {"application/json": {"schema": {
                  "type": "object", "required": ["filter"], "additionalProperties": False, "properties": {"filter": {"type": "string", "minLength": 1}}}}}},
              "responses": {"200": resp("Changed", {"type": "object"}), **errors("400", "401", "403")}},
    },
    "/admin/snapshot": {"post": {"summary": "Take a snapshot now and compact the log",
                                 "responses": {"200": resp("The snapshot", {"type": "object", "required": ["index", "term"]}),
                                               **errors("401", "403", "409")}}},
  },
  "components": {
    "schemas": {"Error": {"type": "object", "required": ["error", "code"],
                          "properties": {"error": {"type": "string"}, "code": {"type": "string"}}}},
    "securitySchemes": {"token": {"type": "http", "scheme": "bearer", "description": "Only with --tokens-file on the nodes"}},
  },
}
transfer = {"post": {"summary": "Hand leadership to a voter (TimeoutNow)",
                     "requestBody": {"required": False, "content": {"application/json": {"schema": {
                         "type": "object", "additionalProperties": False, "properties": {"to": {"type": ["integer", "null"], "minimum": 1}}}}}},
                     "responses": {"200": resp("Another node leads", {"type": "object", "required": ["leader", "previous_leader", "term"]}),
                                   **errors("400", "401", "403", "409", "503")}}}
doc["paths"]["/admin/transfer-leader"] = transfer
doc["paths"]["/cluster/leader/transfer"] = transfer
change = {"type": "object", "required": ["change", "index", "members"]}
doc["paths"]["/cluster/members"] = {
  "get": {"summary": "The configuration in force on this node", "responses": {"200": resp("Members", {"type": "object", "required": ["members"]}), **errors("401", "403")}},
  "post": {"summary": "Add a learner", "requestBody": {"required": True, "content": {"application/json": {"schema": {
      "type": "object", "required": ["id", "address"], "additionalProperties": False,
      "properties": {"id": {"type": "integer", "minimum": 1}, "address": {"type": "string"}, "learner": {"const": True}}}}}},
      "responses": {"201": resp("Committed", change), **errors("400", "401", "403", "409", "503", "504")}},
}
idp = {"name": "id", "in": "path", "required": True, "schema": {"type": "integer", "minimum": 1}}
doc["paths"]["/cluster/members/{id}"] = {"parameters": [idp], "delete": {"summary": "Remove a member", "responses": {"200": resp("Committed", change), **errors("400", "401", "403", "404", "409", "503", "504")}}}
doc["paths"]["/cluster/members/{id}/promote"] = {"parameters": [idp], "post": {"summary": "Promote a caught-up learner", "responses": {"200": resp("Committed", change), **errors("400", "401", "403", "404", "409", "503", "504")}}}
lease_id = {"name": "id", "in": "path", "required": True, "schema": {"type": "integer", "minimum": 1}}
lease_ok = {"type": "object", "required": ["id", "ttl_seconds"],
            "properties": {"id": {"type": "integer"}, "ttl_seconds": {"type": "integer"}}}
doc["paths"]["/leases"] = {"post": {"summary": "Grant a lease", "requestBody": {"required": True, "content": {"application/json": {"schema": {
    "type": "object", "required": ["ttl_seconds"], "additionalProperties": False,
    "properties": {"ttl_seconds": {"type": "integer", "minimum": 1, "maximum": 604800}}}}}},
    "responses": {"200": resp("Granted", lease_ok), **errors("400", "401", "403", "408", "413", "503", "504")}}}
doc["paths"]["/leases/{id}"] = {"parameters": [lease_id],
    "get": {"summary": "A lease: TTL, time left, keys", "responses": {"200": resp("The lease", {"type": "object", "required": ["id", "ttl_seconds", "remaining_ms", "keys"]}),
                                                                   **errors("400", "401", "403", "404", "503", "504")}},
    "delete": {"summary": "Revoke a lease and delete its keys", "responses": {"200": resp("Revoked", {"type": "object", "required": ["id", "revoked", "deleted_keys", "revision"]}),
                                                                             **errors("400", "401", "403", "404", "503", "504")}}}
doc["paths"]["/leases/{id}/keepalive"] = {"parameters": [lease_id], "post": {"summary": "Renew a lease for its whole TTL",
    "responses": {"200": resp("Renewed", lease_ok), **errors("400", "401", "403", "404", "503", "504")}}}
doc["paths"]["/openapi.json"] = {"get": {"summary": "This document", "security": [],
                                         "responses": {"200": resp("OpenAPI 3.1", {"type": "object"})}}}
doc["security"] = [{}, {"token": []}]
# Every integer the server reads is an unsigned 64-bit one: say so, so that
# a number past it is known to be refused (400), not expected to work.
U64_MAX = 2**64 - 1


def bound_integers(node):
    if isinstance(node, dict):
        t = node.get("type")
        if (t == "integer" or (isinstance(t, list) and "integer" in t)) and "maximum" not in node:
            node["maximum"] = U64_MAX
        for v in node.values():
            bound_integers(v)
    elif isinstance(node, list):
        for v in node:
            bound_integers(v)


bound_integers(doc["paths"])
print(json.dumps(doc, indent=2))
