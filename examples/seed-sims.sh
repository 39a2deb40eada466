#!/bin/sh
# Seeds the simulators with the sample tenant of examples/tenant.json:
# 1,000 directory users, 300 of them in the group "Telephony", and the PBX
# company "acme" with its template and main number.
set -eu
GRAPH_SIM_URL=${GRAPH_SIM_URL:-http://127.0.0.1:8081}
PBX_SIM_URL=${PBX_SIM_URL:-http://127.0.0.1:8082}

curl -fsS --retry 30 --retry-connrefused --retry-delay 1 -X POST "$GRAPH_SIM_URL/_sim/tenants" -H 'content-type: application/json' -d '{
  "tenant_id": "8d3c1f2a-6b4e-4c8d-9e2f-1a3b5c7d9e0f",
  "client_id": "2b6f4e1c-9a7d-4b3e-8c5f-0d1e2f3a4b5c",
  "client_secret": "demo-client-secret",
  "seed": 1, "users": 1000,
  "groups": [{"name": "Telephony", "members": 300}]}' >/dev/null
curl -fsS --retry 30 --retry-connrefused --retry-delay 1 -X PUT "$PBX_SIM_URL/_sim/companies/acme" -H 'content-type: application/json' -d '{
  "templates": [{"id": "standard", "name": "Standard"}],
  "numbers": [{"number": "46812345600", "kind": "main"}]}' >/dev/null
echo "simulators seeded"
