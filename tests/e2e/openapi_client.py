"""Calls every route of a running `tandem serve` through a client that openapi-python-client
generated from the server's /openapi.json; each answer must have a status the document
declares for it and parse into the model the document gives for that status.

    openapi_client.py PACKAGE_DIR BASE_URL KEY

Prints `ok METHOD PATH STATUS` per call; exits non-zero at the first mismatch.
"""

import importlib
import pathlib
import sys
import time

package_dir, base, key = pathlib.Path(sys.argv[1]), sys.argv[2], sys.argv[3]
sys.path.insert(0, str(package_dir.parent))
name = package_dir.name


def module(path):
    return importlib.import_module(f"{name}.{path}")


clients = module("client")
models = module("models")
authed = clients.AuthenticatedClient(base_url=base, token=key, raise_on_unexpected_status=True)
anonymous = clients.Client(base_url=base, raise_on_unexpected_status=True)

post_events = module("api.events.post_events")
get_profile = module("api.users.get_profile")
get_recommendations = module("api.users.get_recommendations")
delete_user = module("api.users.delete_user")
get_popular = module("api.items.get_popular")
get_similar = module("api.items.get_similar")
healthz = module("api.operations.healthz")
readyz = module("api.operations.readyz")


def check(call, response, statuses, model=None):
    """The answer's status is one of `statuses`; with a model, the body parsed into it."""
    status = int(response.status_code)
    assert status in statuses, f"{call}: {status} {response.content[:400]!r}"
    if model is not None:
        assert isinstance(response.parsed, model), (
            f"{call}: {status} parsed as {type(response.parsed).__name__}, "
            f"not {model.__name__}: {response.content[:400]!r}"
        )
    print(f"ok {call} {status}", flush=True)
    return response.parsed


now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
kinds = ["view", "click", "add_to_cart", "purchase"]
events = []
for i in range(12):
    event = {
        "event_id": f"client-{i}",
        "user_id": "client-user",
        "kind": kinds[i % 4],
        "item_id": f"sku-{i % 3}",
        "category": "shoes",
        "ts": now,
    }
    if event["kind"] == "purchase":
        event.update(price=19.5, quantity=2)
    events.append(models.EventDoc.from_dict(event))

check("GET /healthz", healthz.sync_detailed(client=anonymous), {200})
# No snapshot is published in this test: not ready, and the answer says why.
check("GET /readyz", readyz.sync_detailed(client=anonymous), {200, 503})

got = check(
    "POST /v1/events",
    post_events.sync_detailed(client=authed, body=events),
    {202},
    models.IngestResponse,
)
assert (got.accepted, got.rejected) == (12, 0), got
one = models.EventDoc.from_dict(
    {"event_id": "client-one", "user_id": "client-user", "kind": "view", "item_id": "sku-9", "ts": now}
)
got = post_events.sync_detailed(client=authed, body=one)
assert got.status_code == 202 and got.parsed.accepted == 1, got.content
bad = models.EventDoc.from_dict(
    {"event_id": "client-bad", "user_id": "client-user", "kind": "purchase", "item_id": "sku-1",
     "price": 1e300, "quantity": 1, "ts": now}
)
got = post_events.sync_detailed(client=authed, body=[bad])
assert got.status_code == 400, got.content
assert isinstance(got.parsed, models.InvalidEventsBody), got.content
assert got.parsed.errors[0].field == "price", got.content
got = post_events.sync_detailed(client=anonymous, body=[one])
assert got.status_code == 401 and isinstance(got.parsed, models.ErrorBody), got.content

# The speed layer applies the events within a second or so; wait for them (the test's own
# deadline bounds the wait, nothing is timed).
deadline = time.monotonic() + 120
while True:
    response = get_profile.sync_detailed("client-user", client=authed)
    if response.status_code == 200 and response.parsed.profile.events == 13:
        break
    assert time.monotonic() < deadline, f"the profile never showed 13 events: {response.content!r}"
    time.sleep(0.05)
profile = check("GET /v1/users/{id}/profile", response, {200}, models.ProfileResponse)
assert profile.profile.units == 6, profile
assert profile.profile.affinity[0].category == "shoes", profile

recs = check(
    "GET /v1/users/{id}/recommendations",
    get_recommendations.sync_detailed("client-user", client=authed, n=5, exclude="sku-0"),
    {200},
    models.RecsResponse,
)
assert all(r.item != "sku-0" for r in recs.items), recs

check(
    "GET /v1/items/popular",
    get_popular.sync_detailed(client=authed, n=5, category="shoes"),
    {200},
    models.ItemsResponse,
)
check(
    "GET /v1/items/{id}/similar",
    get_similar.sync_detailed("sku-0", client=authed, n=5),
    {200, 404},
)
got = get_similar.sync_detailed("sku{0", client=authed)
assert got.status_code == 400 and isinstance(got.parsed, models.ErrorBody), got.content

erased = check(
    "DELETE /v1/users/{id}",
    delete_user.sync_detailed("client-user", client=authed),
    {200},
    models.EraseResponse,
)
assert erased.user_id == "client-user", erased
got = get_profile.sync_detailed("client-user", client=authed)
assert got.status_code == 404 and isinstance(got.parsed, models.ErrorBody), got.content
print("every route answered as documented")
