// The /v1 calls the page makes. Every call carries the token; an answer that
// is not 2xx becomes an ApiError with the status and the server's JSON body.

export class ApiError extends Error {
  constructor(status, body) {
    super(body?.message || `HTTP ${status}`);
    this.status = status;
    this.body = body || {};
  }
}

export class Api {
  constructor(token) {
    this.token = token;
  }

  async call(method, path, { body, headers = {} } = {}) {
    const response = await fetch(path, {
      method,
      headers: {
        Accept: 'application/json',
        Authorization: `Bearer ${this.token}`,
        ...(body === undefined ? {} : { 'Content-Type': 'application/json' }),
        ...headers,
      },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const text = await response.text();
    let json = null;
    try {
      json = text ? JSON.parse(text) : null;
    } catch {
      json = { message: text };
    }
    if (!response.ok) throw new ApiError(response.status, json);
    return { status: response.status, json, etag: response.headers.get('ETag') };
  }

  tenants() {
    return this.call('GET', '/v1/tenants').then((r) => items(r.json));
  }

  tenantPath(id, rest = '') {
    return `/v1/tenants/${encodeURIComponent(id)}${rest}`;
  }

  tenant(id) {
    return this.call('GET', this.tenantPath(id));
  }

  saveTenant(id, document, etag) {
    return this.call('PUT', this.tenantPath(id), {
      body: document,
      headers: etag ? { 'If-Match': etag } : {},
    });
  }

  status(id) {
    // `usersync status ID --json` prints a list of one line.
    return this.call('GET', this.tenantPath(id, '/status')).then((r) => (Array.isArray(r.json) ? r.json[0] : r.json));
  }

  resync(id, full) {
    return this.call('POST', this.tenantPath(id, '/resync'), { body: { full } }).then((r) => r.json);
  }

  runs(id) {
    return this.call('GET', this.tenantPath(id, '/runs')).then((r) => items(r.json));
  }

  run(id, runId) {
    return this.call('GET', this.tenantPath(id, `/runs/${encodeURIComponent(runId)}`)).then((r) => r.json);
  }

  fields(id) {
    return this.call('GET', this.tenantPath(id, '/fields')).then((r) => items(r.json));
  }

  numbers(id) {
    return this.call('GET', this.tenantPath(id, '/pbx/numbers')).then((r) => items(r.json));
  }

  templates(id) {
    return this.call('GET', this.tenantPath(id, '/pbx/templates')).then((r) => items(r.json));
  }

  // `draft` is the tenant document as the form holds it, saved or not.
  startPreview(id, draft) {
    return this.call('POST', this.tenantPath(id, '/preview'), { body: { tenant: draft } }).then((r) => r.json);
  }

  /** A preview: `state` running, succeeded or failed; once succeeded a page of its lines. */
  preview(id, runId, query = '') {
    return this.call('GET', this.tenantPath(id, `/preview/${encodeURIComponent(runId)}${query}`)).then((r) => r.json);
  }
}

/** A list answer, whether bare or as {"items": [...]}. */
function items(json) {
  if (Array.isArray(json)) return json;
  if (json && Array.isArray(json.items)) return json.items;
  if (json && Array.isArray(json.tenants)) return json.tenants;
  if (json && Array.isArray(json.runs)) return json.runs;
  if (json && Array.isArray(json.fields)) return json.fields;
  return [];
}
