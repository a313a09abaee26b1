"""Schemathesis hooks for `make schemathesis` (scripts/schemathesis.sh).

Schemathesis fuzzes every operation of openapi.json against a live
3-node cluster. A few parts of the API are taken out of the schema it
reads, each for a reason a request-response fuzzer cannot get around;
other tests cover them:

* streams never end: the watch (`watch`, `from_revision`, header
  `Last-Event-ID`) and blocking-read (`wait`, `after_revision`)
  parameters and the web view's `/ui/events` (tests/t26_watch.rs,
  tests/t28_ui.rs);
* sessions need one opened first: a random `Raftkv-Session` can only be
  answered 410 session_expired (tests/t23_sessions.rs);
* membership changes and leadership transfers change the cluster under
  test: removing a member stops it for good, a transfer makes writes wait
  or answer 503 no_leader for a moment (tests/t95_membership.rs,
  tests/t85_leader_transfer.rs).
"""
import schemathesis

DROPPED_PARAMS = {"watch", "from_revision", "wait", "after_revision",
                  "last-event-id", "raftkv-session", "raftkv-seq"}
DROPPED_PATHS = ("/ui/events", "/admin/transfer-leader", "/cluster/leader/transfer", "/cluster/members")


@schemathesis.hook
def before_load_schema(ctx, raw_schema):
    paths = raw_schema.get("paths", {})
    for path in list(paths):
        if path.startswith(DROPPED_PATHS):
            del paths[path]
    for item in paths.values():
        for key, op in list(item.items()):
            if key == "parameters" and isinstance(op, list):
                item[key] = [p for p in op if p.get("name", "").lower() not in DROPPED_PARAMS]
            elif isinstance(op, dict) and "parameters" in op:
                op["parameters"] = [p for p in op["parameters"] if p.get("name", "").lower() not in DROPPED_PARAMS]
