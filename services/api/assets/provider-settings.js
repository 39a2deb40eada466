// The live check of the pasted Provider Settings string: the same refusals as
// the server's tenant file check (shared/core), so the admin sees them while
// typing. The server stays the judge: its 422 is shown too.

const KEYS = ['tenant_id', 'client_id', 'client_secret', 'user_filter'];
const TEXT_KEYS = ['tenant_id', 'client_id', 'client_secret'];

/** Problems as {field, code, params}; an empty list means the string is right. */
export function checkProviderSettings(pasted) {
  const problems = [];
  const add = (field, code, params = {}) => problems.push({ field, code, params });
  if (pasted.trim() === '') {
    add('provider_settings', 'empty');
    return problems;
  }
  if (pasted !== pasted.trim()) add('provider_settings', 'spaces');
  let value;
  try {
    value = JSON.parse(pasted);
  } catch (err) {
    add('provider_settings', 'json', { detail: jsonErrorPlace(pasted, err) });
    return problems;
  }
  if (!isObject(value)) {
    add('provider_settings', 'not_object');
    return problems;
  }
  unknownKeys(value, KEYS, 'provider_settings', add);
  for (const key of TEXT_KEYS) {
    checkText(value[key], `provider_settings.${key}`, key in value, add);
  }
  if (!('user_filter' in value) || value.user_filter === null) {
    add('provider_settings.user_filter', 'missing');
  } else if (!isObject(value.user_filter)) {
    add('provider_settings.user_filter', 'not_object');
  } else {
    const filter = value.user_filter;
    unknownKeys(filter, ['memberOf'], 'provider_settings.user_filter', add);
    const path = 'provider_settings.user_filter.memberOf';
    if (!('memberOf' in filter) || filter.memberOf === null) {
      add(path, 'missing');
    } else if (!Array.isArray(filter.memberOf)) {
      add(path, 'not_list');
    } else if (!(filter.memberOf.length === 1 && filter.memberOf[0] === '')) {
      filter.memberOf.forEach((group, index) => checkText(group, `${path}[${index}]`, true, add));
    }
  }
  return problems;
}

function checkText(value, field, present, add) {
  if (!present || value === null) return add(field, 'missing');
  if (typeof value !== 'string') return add(field, 'not_text');
  if (value.trim() === '') return add(field, 'empty');
  if (value !== value.trim()) return add(field, 'spaces');
  // eslint-disable-next-line no-control-regex
  if (/[\u0000-\u001f\u007f-\u009f]/.test(value)) add(field, 'control');
}

function unknownKeys(object, known, parent, add) {
  for (const key of Object.keys(object)) {
    if (!known.includes(key)) {
      const near = nearest(key, known);
      add(`${parent}.${key}`, near ? 'unknown_near' : 'unknown', { key, near, known: known.join(', ') });
    }
  }
}

/** The known key spelled almost alike (case or up to two edits), if any. */
export function nearest(key, known) {
  let best = null;
  let bestDistance = 3;
  for (const candidate of known) {
    const distance = candidate.toLowerCase() === key.toLowerCase() ? 0 : editDistance(key, candidate);
    if (distance < bestDistance) {
      best = candidate;
      bestDistance = distance;
    }
  }
  return best;
}

function editDistance(a, b) {
  const row = Array.from({ length: b.length + 1 }, (_, i) => i);
  for (let i = 1; i <= a.length; i++) {
    let previous = row[0];
    row[0] = i;
    for (let j = 1; j <= b.length; j++) {
      const kept = row[j];
      row[j] = Math.min(row[j] + 1, row[j - 1] + 1, previous + (a[i - 1] === b[j - 1] ? 0 : 1));
      previous = kept;
    }
  }
  return row[b.length];
}

// Browsers word JSON errors differently; the line and column are what helps.
function jsonErrorPlace(text, err) {
  const match = /position (\d+)/.exec(String(err.message));
  if (!match) return String(err.message);
  const offset = Number(match[1]);
  const before = text.slice(0, offset);
  const line = before.split('\n').length;
  const column = offset - before.lastIndexOf('\n');
  const near = text.slice(offset, offset + 12);
  return near ? { line, column, near } : { line, column, end: true };
}

function isObject(value) {
  return value !== null && typeof value === 'object' && !Array.isArray(value);
}
