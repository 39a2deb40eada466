// The company admin's AD Sync page: one company's template, its synchronisation
// and its field mapping, over the /v1 API. No framework: the static parts are in
// index.html, the lists and messages are drawn here.

import { Api, ApiError } from './api.js';
import { checkProviderSettings } from './provider-settings.js';
import { rememberLanguage, savedLanguage, setLanguage, t } from './i18n.js';

const TOKEN_KEY = 'usersync.token';
const REQUIRED_FIELDS = ['alias', 'first_name', 'surname', 'pstn_fixed'];
const FINAL_STATES = ['succeeded', 'partial', 'failed', 'paused'];
const POLL_MS = 700;
const MASK = '********';

const $ = (selector) => document.querySelector(selector);
const $$ = (selector) => [...document.querySelectorAll(selector)];

const state = {
  api: null,
  tenants: [],
  tenantId: null,
  tenant: null, // the saved document (secrets masked), null before it is created
  etag: null,
  status: null,
  runs: [],
  fields: [],
  numbers: null,
  templates: null,
  pbxError: null,
  preview: null,
  previewBusy: false,
  activeRun: null,
  outcome: null,
  saving: false,
  stale: false,
  serverErrors: [],
  extraRows: [],
};

/** `h('p', {class: 'x'}, 'text', child)`: a small element builder. */
function h(tag, attributes = {}, ...children) {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === false || value === null || value === undefined) continue;
    if (name.startsWith('on')) element.addEventListener(name.slice(2), value);
    else if (name === 'text') element.textContent = value;
    else element.setAttribute(name, value === true ? '' : value);
  }
  for (const child of children.flat()) {
    if (child !== null && child !== undefined && child !== false) {
      element.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
  }
  return element;
}

function show(element, visible) {
  element.hidden = !visible;
}

function formatTime(value) {
  if (!value) return '';
  const locale = document.documentElement.lang === 'sv' ? 'sv-SE' : 'en-GB';
  return new Date(value).toLocaleString(locale, { dateStyle: 'medium', timeStyle: 'short' });
}

function stateName(runState) {
  return t(`state_${runState}`);
}

function countsText(counts = {}) {
  const c = { created: 0, updated: 0, deleted: 0, skipped: 0, failed: 0, ...counts };
  return t('run_counts', c);
}

// ---------------------------------------------------------------- language

function applyLanguage() {
  for (const element of $$('[data-i18n]')) element.textContent = t(element.dataset.i18n);
  $('#language').value = document.documentElement.lang;
  document.title = `${t('title')} · usersync`;
  if (state.api && state.tenantId) renderAll();
}

// ---------------------------------------------------------------- start

async function start() {
  setLanguage(savedLanguage());
  applyLanguage();
  $('#language').addEventListener('change', (event) => {
    setLanguage(event.target.value);
    rememberLanguage(event.target.value);
    applyLanguage();
  });
  $('#sign-in-form').addEventListener('submit', (event) => {
    event.preventDefault();
    const token = $('#token-input').value.trim();
    if (token) signIn(token);
  });
  $('#sign-out').addEventListener('click', signOut);
  $('#picker-form').addEventListener('submit', (event) => {
    event.preventDefault();
    const choice = $('#tenant-select').value;
    const id = choice === '' ? $('#new-tenant-id').value.trim() : choice;
    if (id) openTenant(id);
  });
  $('#tenant-select').addEventListener('change', () => show($('#new-tenant-row'), $('#tenant-select').value === ''));
  $('#change-company').addEventListener('click', () => showPicker());
  wireForm();
  // Leaving with unsaved settings asks first (the browser words the question).
  window.addEventListener('beforeunload', (event) => {
    if (state.dirty && state.api) event.preventDefault();
  });

  // A token in the address (#token=…) is taken once and removed from it, so it
  // is not left in the history or a shared link.
  const fragment = new URLSearchParams(location.hash.slice(1));
  const fromUrl = fragment.get('token');
  const wantedTenant = fragment.get('tenant');
  if (fromUrl) {
    sessionStorage.setItem(TOKEN_KEY, fromUrl);
    history.replaceState(null, '', location.pathname + location.search);
  }
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) await signIn(token, wantedTenant);
  else showSignIn();
}

function showSignIn(message) {
  show($('#sign-in'), true);
  show($('#picker'), false);
  show($('#workspace'), false);
  show($('#sign-out'), false);
  const error = $('#sign-in-error');
  error.textContent = message || '';
  show(error, Boolean(message));
  $('#token-input').focus();
}

function signOut() {
  sessionStorage.removeItem(TOKEN_KEY);
  state.api = null;
  state.tenantId = null;
  showSignIn();
}

async function signIn(token, wantedTenant) {
  state.api = new Api(token);
  try {
    state.tenants = await state.api.tenants();
  } catch (err) {
    if (err instanceof ApiError && err.status === 401) {
      sessionStorage.removeItem(TOKEN_KEY);
      return showSignIn(t('token_refused'));
    }
    return pageError(err);
  }
  sessionStorage.setItem(TOKEN_KEY, token);
  show($('#sign-in'), false);
  show($('#sign-out'), true);
  const ids = state.tenants.map((tenant) => tenant.id);
  if (wantedTenant) return openTenant(wantedTenant);
  // A company's token sees its own template only: open it straight away.
  if (ids.length === 1 && !state.tenants[0].operator) return openTenant(ids[0]);
  showPicker();
}

function showPicker() {
  show($('#workspace'), false);
  show($('#picker'), true);
  const select = $('#tenant-select');
  select.replaceChildren(
    ...state.tenants.map((tenant) =>
      h('option', { value: tenant.id }, tenant.name ? `${tenant.name} (${tenant.id})` : tenant.id),
    ),
    h('option', { value: '' }, t('new_company')),
  );
  show($('#new-tenant-row'), select.value === '');
  select.focus();
}

function pageError(err) {
  const element = $('#page-error');
  element.textContent =
    err instanceof ApiError ? `${err.body.error || err.status}: ${err.message}` : t('network_error', { message: err.message });
  show(element, true);
}

// ---------------------------------------------------------------- loading

async function openTenant(id) {
  state.tenantId = id;
  state.preview = null;
  state.outcome = null;
  state.serverErrors = [];
  state.stale = false;
  show($('#picker'), false);
  show($('#page-error'), false);
  show($('#loading'), true);
  show($('#change-company'), state.tenants.length > 1);
  try {
    await loadTenant();
    await Promise.all([loadStatus(), loadPbxLists()]);
  } catch (err) {
    pageError(err);
  }
  show($('#loading'), false);
  show($('#workspace'), true);
  renderAll();
  // A run already going (the nightly one, or one started elsewhere) is followed too.
  const last = state.status?.last_run;
  if (last && !last.finished_at && !FINAL_STATES.includes(last.state)) followRun(last.id);
}

async function loadTenant() {
  try {
    const { json, etag } = await state.api.tenant(state.tenantId);
    state.tenant = json;
    state.etag = etag;
  } catch (err) {
    if (!(err instanceof ApiError && err.status === 404)) throw err;
    state.tenant = null;
    state.etag = null;
  }
  fillForm();
}

async function loadStatus() {
  if (!state.tenant) {
    state.status = null;
    state.runs = [];
    state.fields = [];
    return;
  }
  const [status, runs, fields] = await Promise.all([
    state.api.status(state.tenantId),
    state.api.runs(state.tenantId),
    state.api.fields(state.tenantId).catch(() => []),
  ]);
  state.status = status;
  state.runs = runs;
  state.fields = fields;
}

async function loadPbxLists() {
  if (!state.tenant) return;
  try {
    const [numbers, templates] = await Promise.all([
      state.api.numbers(state.tenantId),
      state.api.templates(state.tenantId),
    ]);
    state.numbers = numbers;
    state.templates = templates;
    state.pbxError = null;
  } catch (err) {
    state.pbxError = err.message;
  }
}

// ---------------------------------------------------------------- the form

function field(name) {
  return $(`[data-field="${name}"]`);
}

function fillForm() {
  const tenant = state.tenant || {};
  const creating = !state.tenant;
  field('id').value = tenant.id || state.tenantId;
  field('name').value = tenant.name || '';
  field('pbx_company_id').value = tenant.pbx_company_id || (creating ? state.tenantId : '');
  field('type').value = 'ad_sync';
  const mode = tenant.mode || 'user_sync';
  for (const radio of $$('input[name="mode"]')) radio.checked = radio.value === mode;
  field('welcome_mail').checked = Boolean(tenant.welcome_mail);
  field('welcome_mail_copy_to').value = tenant.welcome_mail_copy_to || '';
  field('delete_after_days').value = tenant.delete_after_days ?? 7;
  field('error_notification_email').value = tenant.error_notification_email || '';
  field('error_notification_level').value = tenant.error_notification_level || 'error';
  const settings = tenant.provider_settings;
  field('provider_settings').value =
    typeof settings === 'string' ? settings : settings ? JSON.stringify(settings) : '';
  show($('#f-provider-masked'), field('provider_settings').value.includes(MASK));
  const mapping = tenant.field_mapping || {};
  state.mapping = Object.fromEntries(REQUIRED_FIELDS.map((key) => [key, mapping[key] || '']));
  state.extraRows = Object.entries(tenant.user_field_mapping || {}).map(([target, source]) => ({ target, source }));
  state.callerId = tenant.default_caller_id || '';
  state.template = tenant.default_template || '';
  state.dirty = false;
}

/** The tenant document as the form holds it: the saved one with the form's values on top. */
function formDocument() {
  const doc = structuredClone(state.tenant || {});
  doc.id = state.tenantId;
  doc.type = 'ad_sync';
  const setText = (key, value) => {
    if (value === '') delete doc[key];
    else doc[key] = value;
  };
  // Texts are sent as typed: leading or trailing spaces are the server's to refuse by name.
  setText('name', field('name').value);
  setText('pbx_company_id', field('pbx_company_id').value);
  doc.mode = $('input[name="mode"]:checked')?.value || 'user_sync';
  doc.welcome_mail = field('welcome_mail').checked;
  setText('welcome_mail_copy_to', field('welcome_mail_copy_to').value);
  const days = field('delete_after_days').value;
  if (days === '') delete doc.delete_after_days;
  else doc.delete_after_days = Number(days);
  setText('error_notification_email', field('error_notification_email').value);
  doc.error_notification_level = field('error_notification_level').value;
  // The pasted string goes as it is, exactly as the portal's box holds it.
  doc.provider_settings = field('provider_settings').value;
  setText('default_caller_id', state.callerId);
  setText('default_template', state.template);
  doc.field_mapping = Object.fromEntries(REQUIRED_FIELDS.filter((key) => state.mapping[key]).map((key) => [key, state.mapping[key]]));
  const extra = state.extraRows.filter((row) => row.target && row.source);
  if (extra.length) doc.user_field_mapping = Object.fromEntries(extra.map((row) => [row.target, row.source]));
  else delete doc.user_field_mapping;
  return doc;
}

function wireForm() {
  const form = $('#tenant-form');
  form.addEventListener('input', () => markDirty());
  form.addEventListener('change', () => markDirty());
  form.addEventListener('submit', (event) => {
    event.preventDefault();
    save();
  });
  $('#resync').addEventListener('click', () => resync(false));
  $('#full-resync').addEventListener('click', () => resync(true));
  $('#preview').addEventListener('click', runPreview);
  $('#add-field').addEventListener('click', () => {
    state.extraRows.push({ target: 'email', source: '' });
    markDirty();
    renderExtraMapping();
    $$('#extra-mapping .mapping-row').at(-1)?.querySelector('select')?.focus();
  });
  $('#f-caller-id').addEventListener('change', (event) => (state.callerId = event.target.value));
  $('#f-template').addEventListener('change', (event) => (state.template = event.target.value));
}

function markDirty() {
  state.dirty = true;
  for (const element of $$('.save-state')) element.textContent = t('unsaved');
  renderProviderCheck();
}

/** The live Provider Settings check, beside the box; Save stays disabled until it passes. */
function renderProviderCheck() {
  const box = field('provider_settings');
  const problems = checkProviderSettings(box.value);
  const serverProblems = state.serverErrors.filter((e) => e.field.startsWith('provider_settings'));
  const list = $('#provider-check');
  // An empty box is not wrong yet, only unfinished: a hint, not a warning.
  const empty = problems.length === 1 && problems[0].code === 'empty';
  if (empty && !serverProblems.length) {
    list.replaceChildren(h('p', { class: 'message info' }, h('code', {}, 'provider_settings'), ' ', problemText(problems[0])));
  } else if (problems.length) {
    list.replaceChildren(
      h('p', { class: 'message warning', role: 'alert' }, ...problems.map((problem) => h('span', { class: 'problem' }, h('code', {}, problem.field), ' ', problemText(problem)))),
    );
  } else if (serverProblems.length) {
    list.replaceChildren(
      h('p', { class: 'message error' }, ...serverProblems.map((e) => h('span', { class: 'problem' }, h('code', {}, e.field), ' ', e.message))),
    );
  } else if (box.value) {
    list.replaceChildren(h('p', { class: 'message ok' }, t('provider_ok')));
  } else {
    list.replaceChildren();
  }
  box.setAttribute('aria-invalid', (problems.length && !empty) || serverProblems.length ? 'true' : 'false');
  const blocked = problems.length > 0;
  for (const button of $$('#tenant-form button[type="submit"]')) {
    button.disabled = blocked || state.saving;
    button.title = blocked ? t('save_blocked') : '';
  }
}

function problemText(problem) {
  const params = { ...problem.params };
  if (params.detail && typeof params.detail === 'object') {
    params.detail = t(params.detail.end ? 'ps_json_end' : 'ps_json_at', params.detail);
  }
  return t(`ps_${problem.code}`, params);
}

async function save() {
  if (checkProviderSettings(field('provider_settings').value).length) return;
  state.saving = true;
  state.stale = false;
  state.serverErrors = [];
  renderSaveState(t('saving'));
  renderProviderCheck();
  try {
    const { json } = await state.api.saveTenant(state.tenantId, formDocument(), state.etag);
    const created = !state.tenant;
    state.saving = false;
    // The answer says what the write did; the saved template (masked) is read back.
    await loadTenant();
    state.saveNote = json?.note || '';
    if (created) {
      state.tenants = await state.api.tenants().catch(() => state.tenants);
      await Promise.all([loadStatus(), loadPbxLists()]);
    }
    renderAll();
    renderSaveState(state.saveNote ? `${t('saved')} ${state.saveNote}` : t('saved'));
  } catch (err) {
    state.saving = false;
    if (err instanceof ApiError && err.status === 422) {
      state.serverErrors = Array.isArray(err.body.errors) ? err.body.errors : [];
      renderServerErrors();
      renderSaveState(t('save_refused'));
      focusFirstError();
    } else if (err instanceof ApiError && err.status === 412) {
      state.stale = true;
      renderServerErrors();
      renderSaveState('');
      $('#reload-stale')?.focus();
    } else {
      renderSaveState(t('save_failed', { message: err.message }));
    }
    renderProviderCheck();
  }
}

function renderSaveState(text) {
  for (const element of $$('.save-state')) element.textContent = text;
}

/** Each 422 problem beside its field; those with no field on the page in one list. */
function renderServerErrors() {
  for (const element of $$('[data-error-for]')) {
    element.hidden = true;
    element.textContent = '';
  }
  for (const element of $$('[aria-invalid="true"]')) element.removeAttribute('aria-invalid');
  const general = [];
  for (const error of state.serverErrors) {
    const target = errorSlot(error.field);
    if (target === 'provider') continue; // drawn by renderProviderCheck
    if (target) {
      target.hidden = false;
      target.append(h('span', { class: 'problem' }, error.message));
      target.parentElement.querySelector('input, select, textarea')?.setAttribute('aria-invalid', 'true');
    } else {
      general.push(error);
    }
  }
  const box = $('#general-errors');
  const parts = [];
  if (state.stale) {
    parts.push(
      h('p', {}, t('stale')),
      h('button', { type: 'button', class: 'button secondary', id: 'reload-stale', onclick: reloadAfterStale }, t('reload')),
    );
  }
  if (general.length) {
    parts.push(h('p', {}, t('general_errors')), h('ul', {}, general.map((e) => h('li', {}, h('code', {}, e.field), ' ', e.message))));
  }
  box.replaceChildren(...parts);
  show(box, parts.length > 0);
}

function errorSlot(name) {
  if (!name) return null;
  if (name.startsWith('provider_settings')) return 'provider';
  const direct = $(`[data-error-for="${CSS.escape(name)}"]`);
  if (direct) return direct;
  if (name.startsWith('user_field_mapping')) return $('[data-error-for="user_field_mapping"]');
  return null;
}

function focusFirstError() {
  const invalid = $('#tenant-form [aria-invalid="true"]');
  (invalid || $('#general-errors'))?.focus?.();
}

async function reloadAfterStale() {
  state.stale = false;
  state.serverErrors = [];
  await loadTenant();
  await loadStatus();
  renderAll();
  renderSaveState('');
  field('name').focus();
}

// ---------------------------------------------------------------- runs

async function resync(full) {
  state.outcome = null;
  show($('#run-outcome'), false);
  setRunButtons(true);
  try {
    const { run_id: runId } = await state.api.resync(state.tenantId, full);
    state.activeRun = { id: runId, state: 'queued', counts: {} };
    renderRun();
    followRun(runId);
  } catch (err) {
    setRunButtons(false);
    state.outcome = { ok: false, text: err.message };
    renderRun();
  }
}

function setRunButtons(busy) {
  $('#resync').disabled = busy || !state.tenant;
  $('#full-resync').disabled = busy || !state.tenant;
  $('#resync').setAttribute('aria-busy', busy ? 'true' : 'false');
}

/** Polls the run's live counts until it ends, then reloads the status. */
async function followRun(runId) {
  setRunButtons(true);
  state.activeRun = state.activeRun?.id === runId ? state.activeRun : { id: runId, state: 'queued', counts: {} };
  renderRun();
  for (;;) {
    try {
      const run = await state.api.run(state.tenantId, runId);
      state.activeRun = run;
      renderRun();
      if (FINAL_STATES.includes(run.state) || run.finished_at) break;
    } catch (err) {
      if (!(err instanceof ApiError && err.status === 404)) {
        state.outcome = { ok: false, text: err.message };
        break;
      }
    }
    await new Promise((resolve) => setTimeout(resolve, POLL_MS));
  }
  const run = state.activeRun;
  state.activeRun = null;
  if (run) {
    const ok = run.state === 'succeeded';
    state.outcome = {
      ok,
      text: t(ok ? 'run_done_ok' : 'run_done_bad', { state: stateName(run.state), counts: countsText(run.counts) }),
    };
  }
  await loadStatus().catch(pageError);
  setRunButtons(false);
  renderAll();
}

function renderRun() {
  const run = state.activeRun;
  show($('#run-progress'), Boolean(run));
  if (run) {
    const bar = $('#run-bar');
    const c = run.counts || {};
    const progress = run.progress || {};
    const done = progress.applied ?? (c.created || 0) + (c.updated || 0) + (c.deleted || 0) + (c.failed || 0);
    const pending = run.changes_pending || 0;
    if (run.state === 'applying' && done + pending > 0) {
      bar.max = done + pending;
      bar.value = done;
    } else {
      bar.removeAttribute('value');
    }
    bar.setAttribute('aria-label', t('run_state', { state: stateName(run.state) }));
    $('#run-text').replaceChildren(
      h('strong', {}, t('run_state', { state: stateName(run.state) })),
      ' · ',
      run.state === 'queued' ? t('run_queued') : countsText(c),
      progress.pages ? ` · ${t('run_pages', { pages: progress.pages })}` : '',
      pending ? ` · ${t('run_pending', { pending })}` : '',
    );
  }
  const outcome = $('#run-outcome');
  show(outcome, Boolean(state.outcome));
  if (state.outcome) {
    outcome.textContent = state.outcome.text;
    outcome.className = `message ${state.outcome.ok ? 'ok' : 'error'}`;
  }
}

function renderStatus() {
  const status = state.status;
  const success = $('#last-success');
  if (status?.last_success_at) {
    success.className = 'status-line success';
    success.textContent = t('last_success', { time: formatTime(status.last_success_at) });
  } else {
    success.className = 'status-line muted';
    success.textContent = state.tenant ? t('never_synced') : '';
  }
  const last = status?.last_run;
  const failed = last && last.state === 'failed' && last.error;
  show($('#last-error'), Boolean(failed));
  if (failed) {
    $('#last-error-text').textContent = t('last_error', { error: last.error });
    const advice = errorAdvice(last);
    $('#last-error-advice').textContent = advice;
    show($('#last-error-advice'), Boolean(advice));
  }
}

/** What to do about a failure the admin can fix. */
function errorAdvice(run) {
  const code = run.error_code || '';
  const text = run.error || '';
  if (code === 'entra.7000222' || /AADSTS7000222|secret expired/i.test(text)) return t('secret_expired');
  if (/^entra\.(7000215|700016|90002)$/.test(code) || code === 'entra.unauthorized') return t('unauthorized_graph');
  return '';
}

// ---------------------------------------------------------------- choices and mapping

function renderPbxChoices() {
  const numbers = state.numbers || [];
  const templates = state.templates || [];
  const caller = $('#f-caller-id');
  const callerOptions = numbers.map((n) => {
    const number = typeof n === 'string' ? n : n.number;
    const kind = n.kind ? ` (${t(`kind_${n.kind}`)})` : '';
    return h('option', { value: number }, `${number}${kind}`);
  });
  // A saved value the PBX no longer lists stays visible rather than silently changing.
  if (state.callerId && !numbers.some((n) => (n.number ?? n) === state.callerId)) {
    callerOptions.push(h('option', { value: state.callerId }, state.callerId));
  }
  caller.replaceChildren(h('option', { value: '' }, t('none_chosen')), ...callerOptions);
  caller.value = state.callerId;
  const template = $('#f-template');
  const templateOptions = templates.map((item) => h('option', { value: item.id }, item.name || item.id));
  const known = templates.find((item) => item.id === state.template || item.name === state.template);
  if (known) state.template = known.id;
  else if (state.template) templateOptions.push(h('option', { value: state.template }, state.template));
  template.replaceChildren(h('option', { value: '' }, t('none_chosen')), ...templateOptions);
  template.value = state.template;
  const error = $('#pbx-error');
  show(error, Boolean(state.pbxError));
  if (state.pbxError) error.textContent = t('pbx_unavailable', { message: state.pbxError });
}

function fieldOptions(selected) {
  const options = state.fields.map((f) =>
    h('option', { value: f.field }, t('field_users', { field: f.field, users: f.users ?? '?' })),
  );
  if (selected && !state.fields.some((f) => f.field === selected)) options.push(h('option', { value: selected }, selected));
  return [h('option', { value: '' }, t('not_mapped')), ...options];
}

function exampleFor(source) {
  const known = state.fields.find((f) => f.field === source);
  if (!known || known.example === undefined || known.example === null) return '';
  const value = typeof known.example === 'string' ? known.example : JSON.stringify(known.example);
  return t('example', { value: value.length > 60 ? `${value.slice(0, 57)}…` : value });
}

function renderRequiredMapping() {
  const grid = $('#required-mapping');
  grid.replaceChildren(
    ...REQUIRED_FIELDS.map((key) => {
      const id = `map-${key}`;
      const example = h('span', { class: 'example', id: `${id}-example` }, exampleFor(state.mapping[key]));
      const select = h('select', {
        id,
        'data-field': `field_mapping.${key}`,
        required: true,
        'aria-describedby': `${id}-example field-mapping-hint`,
        onchange: (event) => {
          state.mapping[key] = event.target.value;
          example.textContent = exampleFor(event.target.value);
        },
      }, fieldOptions(state.mapping[key]));
      select.value = state.mapping[key];
      return h('div', { class: 'mapping-row' },
        h('label', { for: id }, t(key), ' ', h('span', { class: 'required' }, `(${t('required')})`)),
        select,
        example,
        h('p', { class: 'field-error', 'data-error-for': `field_mapping.${key}`, hidden: true }),
      );
    }),
  );
}

function renderExtraMapping() {
  const list = $('#extra-mapping');
  list.replaceChildren(
    ...state.extraRows.map((row, index) => {
      const id = `extra-${index}`;
      const isAttribute = row.target.startsWith('attributes.');
      const attributeName = h('input', {
        id: `${id}-name`,
        value: isAttribute ? row.target.slice('attributes.'.length) : '',
        hidden: !isAttribute,
        'aria-label': t('attribute_name'),
        oninput: (event) => (row.target = `attributes.${event.target.value}`),
      });
      const kind = h('select', {
        id: `${id}-target`,
        'aria-label': t('target'),
        onchange: (event) => {
          row.target = event.target.value === 'email' ? 'email' : `attributes.${attributeName.value}`;
          attributeName.hidden = event.target.value === 'email';
          if (!attributeName.hidden) attributeName.focus();
        },
      }, h('option', { value: 'email' }, t('email')), h('option', { value: 'attribute' }, t('attribute')));
      kind.value = isAttribute ? 'attribute' : 'email';
      const example = h('span', { class: 'example' }, exampleFor(row.source));
      const source = h('select', {
        id: `${id}-source`,
        'aria-label': t('source'),
        onchange: (event) => {
          row.source = event.target.value;
          example.textContent = exampleFor(row.source);
        },
      }, fieldOptions(row.source));
      source.value = row.source;
      return h('div', { class: 'mapping-row extra' },
        kind, attributeName, source, example,
        h('button', {
          type: 'button',
          class: 'button link',
          onclick: () => {
            state.extraRows.splice(index, 1);
            markDirty();
            renderExtraMapping();
            $('#add-field').focus();
          },
        }, t('remove')),
      );
    }),
  );
}

function renderMapping() {
  const card = $('#mapping-card');
  show(card, Boolean(state.tenant));
  // The mapping is offered once a sync has read the directory (the portal's rule):
  // before that there are no fields to choose from.
  const synced = Boolean(state.status?.last_success_at) || state.fields.length > 0;
  show($('#mapping-locked'), !synced);
  show($('#mapping-fields'), synced);
  $('#preview').disabled = !synced || state.previewBusy;
  if (synced) {
    renderRequiredMapping();
    renderExtraMapping();
  }
  renderPbxChoices();
}

// ---------------------------------------------------------------- preview

async function runPreview() {
  state.previewBusy = true;
  state.preview = { pending: true };
  renderPreview();
  $('#preview').disabled = true;
  try {
    const started = await state.api.startPreview(state.tenantId, formDocument());
    const previewId = started.run_id || started.id;
    for (;;) {
      const report = await state.api.preview(state.tenantId, previewId, '?limit=1000');
      if (report.state === 'succeeded') {
        const skipped = await state.api.preview(state.tenantId, previewId, '?decision=skip&limit=1000');
        state.preview = { ...report, users: lines(report.users), skipped: lines(skipped.users) };
        break;
      }
      if (report.state === 'failed') {
        state.preview = { error: report.error?.message || report.error?.code || t('state_failed') };
        break;
      }
      state.preview = { pending: true, read: report.users_read || 0 };
      renderPreview();
      await new Promise((resolve) => setTimeout(resolve, POLL_MS));
    }
  } catch (err) {
    if (err instanceof ApiError && err.status === 422) {
      state.serverErrors = err.body.errors || [];
      renderServerErrors();
      renderProviderCheck();
    }
    state.preview = { error: err.message };
  }
  state.previewBusy = false;
  $('#preview').disabled = false;
  renderPreview();
  renderSkipped();
}

/** A preview's lines, whether a bare list or a page of them. */
function lines(users) {
  if (Array.isArray(users)) return users;
  return users?.items || [];
}

function renderPreview() {
  const box = $('#preview-result');
  const preview = state.preview;
  if (!preview) return box.replaceChildren();
  if (preview.pending) return box.replaceChildren(h('p', { class: 'message' }, h('span', { class: 'spinner', 'aria-hidden': 'true' }), t('previewing'), preview.read ? ` (${t('users_read', { count: preview.read })})` : ''));
  if (preview.error) return box.replaceChildren(h('p', { class: 'message error' }, preview.error));
  const summary = { create: 0, update: 0, delete: 0, skip: 0, ...(preview.summary || {}) };
  const lines = preview.users.filter((line) => line.decision !== 'none');
  box.replaceChildren(
    h('h3', {}, t('preview_title')),
    h('p', { class: 'summary' }, t('preview_summary', summary)),
    ...(preview.warnings || []).map((warning) => h('p', { class: 'message warning' }, warning)),
    lines.length
      ? h('table', { class: 'table' },
        h('thead', {}, h('tr', {}, h('th', { scope: 'col' }, t('user')), h('th', { scope: 'col' }, t('action')), h('th', { scope: 'col' }, t('details')))),
        h('tbody', {}, lines.map((line) => h('tr', {},
          h('td', {}, line.user),
          h('td', {}, h('span', { class: `badge ${line.decision}` }, t(`decision_${line.decision}`))),
          h('td', {}, previewDetails(line)),
        ))))
      : h('p', {}, t('preview_none')),
  );
}

function previewDetails(line) {
  const parts = [];
  if (line.changes?.length) {
    parts.push(h('ul', { class: 'changes' }, line.changes.map((c) =>
      h('li', {}, h('code', {}, c.field), ': ', c.before ?? '—', ' → ', c.after ?? '—'))));
  }
  if (line.delete_at) parts.push(h('p', {}, t('delete_on', { date: formatTime(line.delete_at) })));
  if (line.reasons?.length) parts.push(h('ul', { class: 'reasons' }, line.reasons.map((r) => h('li', {}, r))));
  return parts;
}

// ---------------------------------------------------------------- lists

function renderSkipped() {
  const box = $('#skipped');
  // The preview names each skipped user with the reasons; the last run counts them.
  const fromPreview = state.preview?.skipped ?? state.preview?.users?.filter((line) => line.decision === 'skip');
  const lastRunSkipped = state.status?.last_run?.counts?.skipped || 0;
  if (!fromPreview) {
    return box.replaceChildren(h('p', { class: 'muted' }, lastRunSkipped ? t('skipped_unknown') : t('skipped_empty')));
  }
  if (!fromPreview.length) return box.replaceChildren(h('p', { class: 'muted' }, t('skipped_empty')));
  box.replaceChildren(
    h('table', { class: 'table' },
      h('thead', {}, h('tr', {}, h('th', { scope: 'col' }, t('user')), h('th', { scope: 'col' }, t('reason')))),
      h('tbody', {}, fromPreview.map((line) => h('tr', {}, h('td', {}, line.user), h('td', {}, (line.reasons || []).join('; ')))))),
  );
}

function renderHistory() {
  const box = $('#history');
  if (!state.runs.length) return box.replaceChildren(h('p', { class: 'muted' }, t('history_empty')));
  box.replaceChildren(
    h('table', { class: 'table' },
      h('thead', {}, h('tr', {},
        h('th', { scope: 'col' }, t('started')),
        h('th', { scope: 'col' }, t('trigger')),
        h('th', { scope: 'col' }, t('outcome')),
        h('th', { scope: 'col' }, t('counts')))),
      h('tbody', {}, state.runs.slice(0, 20).map((run) => h('tr', {},
        h('td', {}, run.started_at ? formatTime(run.started_at) : '—'),
        h('td', {}, t(`trigger_${run.trigger}`)),
        h('td', {}, h('span', { class: `badge ${run.state}` }, stateName(run.state)), run.error ? h('div', { class: 'run-error' }, run.error) : null),
        h('td', {}, countsText(run.counts))))),
    ),
  );
}

function renderAll() {
  const tenant = state.tenant;
  $('#company-heading').textContent = tenant ? `${tenant.name} (${tenant.id})` : `${t('create_title')}: ${state.tenantId}`;
  show($('#no-template'), !tenant);
  show($('#id-row'), !tenant);
  field('pbx_company_id').readOnly = Boolean(tenant);
  setRunButtons(Boolean(state.activeRun));
  renderStatus();
  renderRun();
  renderMapping();
  renderServerErrors();
  renderProviderCheck();
  renderPreview();
  renderSkipped();
  renderHistory();
}

start();
