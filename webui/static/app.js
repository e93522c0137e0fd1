// The vdc web console: plain ES2020, no build step, served by dcmgr next to /api/v1.
//
// Safety rule: values from the API only ever reach the page as text, through el() below
// (textContent, text nodes, attribute values), never as markup. The crate's tests check
// that no markup sink is used anywhere in this file.
//
// Every visible string comes from I18N (i18n.js) through t() with a literal key, so that
// the tests can check each key exists in both languages.
'use strict';

/* global I18N */

const API_BASE = '/api/v1';
const LS_TOKEN = 'vdc.console.token';
// '1' when the token is a console session (signed in with a password): signing out revokes
// it, and the account can be switched.
const LS_SESSION = 'vdc.console.session';
const LS_LANG = 'vdc.console.lang';
const REFRESH_MS = 3000;
const PAGE_LIMIT = 1000;
const MAX_PAGES = 20;
const JOBS_SHOWN = 200;

// States in which work is under way: a view showing any of them refreshes itself.
const TRANSITIONAL = new Set([
  'scheduling', 'pending', 'starting', 'stopping', 'halting', 'shuttingdown',
  'creating', 'attaching', 'detaching', 'deleting',
]);
const TONE = {
  running: 'ok', available: 'ok', attached: 'ok', succeeded: 'ok', online: 'ok', active: 'ok',
  failed: 'bad', offline: 'bad',
};
const HYPERVISORS = ['kvm', 'qemu', 'lxc'];
const IMAGE_FORMATS = ['raw', 'qcow2', 'tar', 'dir', 'kernel'];
const ARCHES = ['x86_64', 'aarch64'];
const PROTOCOLS = ['tcp', 'udp', 'icmp', 'any'];
const DASH = '—';
const MIB = 1048576;

const app = {
  lang: 'en',
  token: '',
  session: false, // the token is a console session (see LS_SESSION)
  switching: false, // an account switch is under way (see sessionRefused)
  refused: [], // the last calls refused 401 (see sessionRefused)
  who: null, // GET /whoami: { user, account, role, accounts }
  actIn: '', // the account an admin acts in (X-Vdc-Account); '' for the token's own
  home: '', // the token's own account
  allAccounts: null, // an admin's: every account, for the select
  view: null, // id of the view on screen
  ctl: null, // its controller: { frame (see viewFrame), refresh(fresh) → any item busy? }
  gen: 0, // bumped on every view change and sign-out, so late answers are dropped
  seq: 0, // bumped on every refresh, so only the newest one renders
  timer: 0,
  refreshWhenVisible: false,
};

// ------------------------------------------------------------------ small helpers

const $ = (sel) => document.querySelector(sel);

function storageGet(key) {
  try {
    return window.localStorage.getItem(key);
  } catch (_) {
    return null; // storage disabled: the console still works for this page load
  }
}

function storageSet(key, value) {
  try {
    if (value == null) window.localStorage.removeItem(key);
    else window.localStorage.setItem(key, value);
  } catch (_) {
    /* storage disabled */
  }
}

let uidCounter = 0;
function uid(prefix) {
  uidCounter += 1;
  return `${prefix}-${uidCounter}`;
}

/**
 * Builds an element. `props`: `class`, `text`, `on<event>` handlers, `dataset`, booleans
 * and `value` as properties, anything else as an attribute. Children: nodes, strings
 * (inserted as text), arrays, or null/false (skipped).
 */
function el(tag, props, ...children) {
  const e = document.createElement(tag);
  let value;
  for (const [k, v] of Object.entries(props || {})) {
    if (v == null) continue;
    if (k === 'class') e.className = v;
    else if (k === 'text') e.textContent = v;
    else if (k === 'value') value = v;
    else if (k === 'dataset') Object.assign(e.dataset, v);
    else if (k.startsWith('on') && typeof v === 'function') e.addEventListener(k.slice(2), v);
    else if (typeof v === 'boolean' && k in e) e[k] = v;
    else if (v !== false) e.setAttribute(k, v === true ? '' : String(v));
  }
  appendAll(e, children);
  // After the children, so that a <select> has its options when its value is set.
  if (value !== undefined) e.value = value;
  return e;
}

function appendAll(parent, children) {
  for (const c of children.flat(Infinity)) {
    if (c == null || c === false) continue;
    parent.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
}

// ------------------------------------------------------------------ i18n

function t(key, params) {
  const dict = I18N[app.lang] || I18N.en;
  let s = dict[key];
  if (s === undefined) s = I18N.en[key];
  if (s === undefined) return key;
  if (params) {
    s = s.replace(/\{(\w+)\}/g, (m, name) => (name in params ? String(params[name]) : m));
  }
  return s;
}

// State names come from the API; unknown ones (a newer server) show as they are.
function stateLabel(state) {
  const dict = I18N[app.lang] || I18N.en;
  return dict[`state_${state}`] || state;
}

function initialLang() {
  const saved = storageGet(LS_LANG);
  if (saved && I18N[saved]) return saved;
  return String(navigator.language || 'en').toLowerCase().startsWith('ja') ? 'ja' : 'en';
}

function applyStaticText() {
  document.documentElement.lang = app.lang;
  for (const e of document.querySelectorAll('[data-i18n]')) e.textContent = t(e.dataset.i18n);
  for (const e of document.querySelectorAll('[data-i18n-placeholder]')) e.placeholder = t(e.dataset.i18nPlaceholder);
  for (const e of document.querySelectorAll('[data-i18n-aria-label]')) e.setAttribute('aria-label', t(e.dataset.i18nAriaLabel));
  for (const e of document.querySelectorAll('[data-i18n-title]')) e.title = t(e.dataset.i18nTitle);
  $('#lang-select').value = app.lang;
}

function setLang(lang) {
  if (!I18N[lang] || lang === app.lang) return;
  app.lang = lang;
  storageSet(LS_LANG, lang);
  applyStaticText();
  showServerVersion();
  if (app.token && app.view) showView(app.view);
  else document.title = t('app_title');
}

// ------------------------------------------------------------------ formatting

function fmtTime(iso) {
  if (!iso) return DASH;
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return String(iso);
  const text = new Intl.DateTimeFormat(app.lang === 'ja' ? 'ja-JP' : 'en', {
    dateStyle: 'medium',
    timeStyle: 'medium',
  }).format(d);
  return el('time', { datetime: iso, title: iso }, text);
}

function fmtMib(n) {
  if (n == null) return DASH;
  if (n < 1024) return t('size_mib', { n: n.toLocaleString() });
  const gib = n / 1024;
  return t('size_gib', { n: gib.toLocaleString(undefined, { maximumFractionDigits: 1 }) });
}

function fmtBytes(n) {
  if (n == null) return DASH;
  if (n < 1048576) return t('size_kib', { n: (n / 1024).toLocaleString(undefined, { maximumFractionDigits: 1 }) });
  return fmtMib(Math.round(n / 104857.6) / 10);
}

function fmtUsage(used, total, fmt) {
  const pct = total > 0 ? Math.round((used / total) * 100) : 0;
  return t('usage', { used: fmt(used), total: fmt(total), pct });
}

function code(text) {
  return text ? el('code', {}, text) : DASH;
}

function orDash(v) {
  return v == null || v === '' ? DASH : String(v);
}

function badge(state, busy) {
  const tone = busy || TRANSITIONAL.has(state) ? 'busy' : TONE[state] || 'off';
  return el('span', { class: `badge badge-${tone}`, title: state }, stateLabel(state));
}

function errorText(err) {
  if (err instanceof ApiError) {
    // The API speaks English: other languages say what its code means first.
    const meaning = (API_ERRORS[app.lang] || {})[err.code];
    const text = t('error_with_code', { message: err.message, code: err.code });
    return meaning ? `${meaning} ${text}` : text;
  }
  return String((err && err.message) || err);
}

// ------------------------------------------------------------------ API

class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

// `token`: the token of this call instead of the console's (null: none, for signing in).
async function api(method, path, body, token) {
  const headers = { Accept: 'application/json' };
  const used = token === undefined ? app.token : token;
  if (token !== null) headers.Authorization = `Bearer ${used}`;
  if (token === undefined && app.actIn) headers['X-Vdc-Account'] = app.actIn;
  const opts = { method, headers, cache: 'no-store' };
  if (body !== undefined) {
    headers['Content-Type'] = 'application/json';
    opts.body = JSON.stringify(body);
  }
  let res;
  try {
    res = await fetch(API_BASE + path, opts);
  } catch (e) {
    throw new ApiError(0, 'network', t('error_network'));
  }
  const text = await res.text();
  let data = null;
  if (text) {
    try {
      data = JSON.parse(text);
    } catch (_) {
      data = null;
    }
  }
  if (!res.ok) throw refusal(res.status, res.statusText, data, used, token);
  return data;
}

// The error of an answer with status `status` (not 2xx) and JSON body `data`.
function refusal(status, statusText, data, used, token) {
  const detail = data && data.error ? data.error : {};
  // A revoked, expired or mistyped token: back to the sign-in form (not while signing in).
  if (status === 401 && token === undefined) sessionRefused(used);
  return new ApiError(status, detail.code || `http_${status}`, detail.message || statusText || t('error_unknown'));
}

// Sends a file as the body of a call (streamed by the browser, not read into memory),
// with XMLHttpRequest, whose upload reports its progress where fetch does not:
// `progress(sent, total)`. Resolves with the JSON answer.
function sendFile(method, path, file, progress) {
  return new Promise((resolve, reject) => {
    const used = app.token;
    const xhr = new XMLHttpRequest();
    xhr.open(method, API_BASE + path);
    xhr.setRequestHeader('Accept', 'application/json');
    xhr.setRequestHeader('Content-Type', 'application/octet-stream');
    xhr.setRequestHeader('Authorization', `Bearer ${used}`);
    if (app.actIn) xhr.setRequestHeader('X-Vdc-Account', app.actIn);
    xhr.upload.addEventListener('progress', (ev) => progress(ev.loaded, ev.lengthComputable ? ev.total : file.size));
    xhr.addEventListener('error', () => reject(new ApiError(0, 'network', t('error_network'))));
    xhr.addEventListener('load', () => {
      let data = null;
      try {
        data = xhr.responseText ? JSON.parse(xhr.responseText) : null;
      } catch (_) {
        data = null;
      }
      if (xhr.status >= 200 && xhr.status < 300) resolve(data);
      else reject(refusal(xhr.status, xhr.statusText, data, used));
    });
    xhr.send(file);
  });
}

// A progress bar with its figures ("12 MiB of 40 MiB"), hidden until first set.
function progressBar(label) {
  const bar = el('progress', { max: '1', value: '0', 'aria-label': label });
  const figures = el('span', { class: 'hint' });
  const node = el('div', { class: 'progress', hidden: true }, bar, ' ', figures);
  return {
    node,
    set(done, total) {
      node.hidden = false;
      if (total) {
        bar.max = total;
        bar.value = done;
        figures.textContent = t('bytes_of', { done: fmtBytes(done), total: fmtBytes(total) });
      } else {
        bar.removeAttribute('value');
        figures.textContent = fmtBytes(done);
      }
    },
  };
}

// A call was refused 401 with `used`: signed out, unless the console has moved on. An
// account switch revokes the session it was asked with, so a call sent with that session
// just before (a refresh, the event stream) is refused while the switch is under way or
// after it: that is no reason to sign out.
function sessionRefused(used) {
  // Kept (the last few) for the browser test to show when it fails.
  app.refused = [...app.refused.slice(-9), { current: app.token === used, switching: app.switching, from: new Error().stack }];
  if (app.token && app.token === used && !app.switching) signOut(t('session_expired'));
}

// Every page of a list, following next_cursor (bounded, in case of a huge cloud).
async function listAll(path) {
  const items = [];
  let cursor = null;
  for (let i = 0; i < MAX_PAGES; i += 1) {
    let q = `${path}${path.includes('?') ? '&' : '?'}limit=${PAGE_LIMIT}`;
    if (cursor) q += `&cursor=${encodeURIComponent(cursor)}`;
    const page = await api('GET', q);
    items.push(...(page.items || []));
    cursor = page.next_cursor;
    if (!cursor) break;
  }
  return items;
}

const enc = encodeURIComponent;

// ------------------------------------------------------------------ notices and dialogs

function notify(kind, text) {
  const box = el('div', { class: `notice notice-${kind}`, role: kind === 'error' ? 'alert' : 'status' });
  const close = el('button', { type: 'button', class: 'icon', 'aria-label': t('dismiss'), title: t('dismiss'), onclick: () => box.remove() }, '×');
  box.append(el('p', {}, text), close);
  $('#notices').append(box);
  if (kind !== 'error') setTimeout(() => box.remove(), 6000);
}

function dialog(title, content, buttons, opts) {
  const headId = uid('dlg');
  const dlg = el('dialog', { class: `dialog ${(opts && opts.wide) ? 'dialog-wide' : ''}`, 'aria-labelledby': headId });
  const form = el('form', { method: 'dialog', class: 'form' }, el('h2', { id: headId }, title), content, el('div', { class: 'actions' }, buttons));
  dlg.append(form);
  document.body.append(dlg);
  dlg.addEventListener('close', () => dlg.remove());
  dlg.showModal();
  return { dlg, form };
}

// A dialog holding a form: its submit button runs `action` (an error shows in the form),
// then the dialog closes and the view refreshes.
function formDialog(title, content, submitLabel, action) {
  const { dlg, form } = dialog(title, content, [
    el('button', { type: 'submit', class: 'primary' }, submitLabel),
    el('button', { type: 'button', class: 'ghost', onclick: () => dlg.close() }, t('cancel')),
  ]);
  form.method = 'post'; // submit is handled here, not by the dialog
  asyncForm(form, async () => {
    await action();
    dlg.close();
    refreshView();
  });
  return dlg;
}

// Resolves true when the user confirms; Escape or Cancel resolve false.
function confirmDialog(title, message, okLabel) {
  return new Promise((resolve) => {
    const { dlg } = dialog(title, el('p', {}, message), [
      el('button', { type: 'submit', value: 'cancel', class: 'ghost', autofocus: true }, t('cancel')),
      el('button', { type: 'submit', value: 'ok', class: 'danger' }, okLabel),
    ]);
    dlg.addEventListener('close', () => resolve(dlg.returnValue === 'ok'));
  });
}

// ------------------------------------------------------------------ forms

function field(label, control, hint) {
  if (!control.id) control.id = uid('f');
  let hintNode = null;
  if (hint) {
    hintNode = el('p', { class: 'hint', id: uid('h') }, hint);
    control.setAttribute('aria-describedby', hintNode.id);
  }
  return el('div', { class: 'field' }, el('label', { for: control.id }, label), control, hintNode);
}

function input(props) {
  return el('input', { type: 'text', autocomplete: 'off', spellcheck: 'false', ...props });
}

function select(options, props) {
  return el('select', props || {}, options.map((o) => el('option', { value: o.value }, o.label)));
}

function checkbox(label, props) {
  const box = el('input', { type: 'checkbox', ...props });
  return { box, node: el('label', { class: 'check' }, box, ' ', label) };
}

function radio(name, value, label, checked) {
  const r = el('input', { type: 'radio', name, value, checked: !!checked });
  return { r, node: el('label', { class: 'check' }, r, ' ', label) };
}

function val(control) {
  const v = control.value.trim();
  return v === '' ? undefined : v;
}

function num(control) {
  const v = control.value.trim();
  return v === '' ? undefined : Number(v);
}

// Drops undefined members, so that optional fields are left out of the request.
function compact(obj) {
  const out = {};
  for (const [k, v] of Object.entries(obj)) if (v !== undefined) out[k] = v;
  return out;
}

/**
 * A form whose submit runs `action` once at a time; its error (message and code) shows
 * inside the form. `action` returns false to keep the form as it is.
 */
function asyncForm(form, action) {
  const errorBox = el('p', { class: 'form-error', role: 'alert', hidden: true });
  form.append(errorBox);
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    if (form.dataset.busy) return;
    errorBox.hidden = true;
    form.dataset.busy = '1';
    const buttons = form.querySelectorAll('button[type=submit]');
    buttons.forEach((b) => { b.disabled = true; });
    try {
      await action();
    } catch (e) {
      errorBox.textContent = errorText(e);
      errorBox.hidden = false;
    } finally {
      delete form.dataset.busy;
      buttons.forEach((b) => { b.disabled = false; });
    }
  });
  return form;
}

// A collapsible panel holding a create form, built when opened so its choices are fresh.
function createPanel(frame, label, build) {
  const slot = el('div', { class: 'panel-slot' });
  const button = el('button', { type: 'button', class: 'primary', 'aria-expanded': 'false' }, label);
  const close = () => {
    slot.replaceChildren();
    button.setAttribute('aria-expanded', 'false');
  };
  button.addEventListener('click', async () => {
    if (button.getAttribute('aria-expanded') === 'true') {
      close();
      return;
    }
    button.setAttribute('aria-expanded', 'true');
    const panel = el('section', { class: 'panel', 'aria-label': label }, el('p', { class: 'loading' }, t('loading')));
    slot.replaceChildren(panel);
    try {
      const content = await build(close);
      if (!slot.contains(panel)) return;
      panel.replaceChildren(el('h2', {}, label), content);
      const first = panel.querySelector('input, select, textarea');
      if (first) first.focus();
    } catch (e) {
      panel.replaceChildren(el('p', { class: 'form-error', role: 'alert' }, errorText(e)));
    }
  });
  frame.tools.prepend(button);
  frame.root.insertBefore(slot, frame.status);
  return { close };
}

function formActions(submitLabel, onCancel) {
  return el('div', { class: 'actions' },
    el('button', { type: 'submit', class: 'primary' }, submitLabel),
    onCancel ? el('button', { type: 'button', class: 'ghost', onclick: onCancel }, t('cancel')) : null);
}

// ------------------------------------------------------------------ view frame

/**
 * The common skeleton of a view: heading, intro, toolbar (refresh, auto-refresh note),
 * a status line for load errors, and `body` for the view's content.
 */
function viewFrame(root, title, intro) {
  const tools = el('div', { class: 'toolbar' });
  const autoNote = el('span', { class: 'auto-note', hidden: true }, t('auto_refreshing'));
  tools.append(el('button', { type: 'button', class: 'ghost', onclick: () => refreshView() }, t('refresh')), autoNote);
  const status = el('div', { class: 'status-slot' });
  const body = el('div', { class: 'view-body' });
  const head = el('div', { class: 'view-head' }, el('h1', { tabindex: '-1' }, title), tools);
  root.append(head, el('p', { class: 'intro' }, intro), status, body);
  return {
    root,
    tools,
    status,
    body,
    setAuto(on) {
      autoNote.hidden = !on;
    },
    showError(err) {
      status.replaceChildren(el('p', { class: 'form-error', role: 'alert' }, errorText(err)));
    },
    clearError() {
      status.replaceChildren();
    },
  };
}

/** Replaces `slot`'s content, keeping keyboard focus on the same control (by data-fk). */
function swap(slot, ...nodes) {
  const active = document.activeElement;
  const key = active && slot.contains(active) && active.dataset ? active.dataset.fk : undefined;
  slot.replaceChildren(...nodes.filter((n) => n != null));
  if (key) {
    const again = Array.from(slot.querySelectorAll('[data-fk]')).find((e) => e.dataset.fk === key);
    if (again && !again.disabled) again.focus();
  }
}

/**
 * A table. `columns`: [{ label, cell(row) → node or text, class? }]. On narrow screens the
 * CSS lays each row out as a card, labelling cells with data-label.
 */
function table(columns, rows, caption) {
  return el('div', { class: 'table-wrap' },
    el('table', {},
      caption ? el('caption', { class: 'visually-hidden' }, caption) : null,
      el('thead', {}, el('tr', {}, columns.map((c) => el('th', { scope: 'col', class: c.class }, c.label)))),
      el('tbody', {}, rows.map((r) => el('tr', {},
        // One wrapper per cell keeps its content together in the narrow, card layout.
        columns.map((c) => el('td', { class: c.class, 'data-label': c.label }, el('div', {}, c.cell(r)))))))));
}

function empty(text) {
  return el('p', { class: 'empty' }, text);
}

function actionButton(label, fk, onclick, opts) {
  return el('button', {
    type: 'button',
    class: `small ${(opts && opts.danger) ? 'danger-outline' : ''}`,
    disabled: !!(opts && opts.disabled),
    dataset: { fk },
    onclick,
  }, label);
}

function actionsCell(...buttons) {
  return el('div', { class: 'row-actions' }, buttons);
}

async function deleteWith(title, message, path, doneText) {
  if (!(await confirmDialog(title, message, t('delete')))) return;
  try {
    await api('DELETE', path);
    notify('ok', doneText);
  } catch (e) {
    notify('error', errorText(e));
  }
  refreshView();
}

function displayName(item) {
  return item.name ? `${item.name} (${item.id})` : item.id;
}

// ------------------------------------------------------------------ instances

const INSTANCE_ACTIONS = () => [
  { id: 'start', label: t('action_start'), when: ['stopped', 'halted', 'failed'] },
  { id: 'stop', label: t('action_stop'), when: ['scheduling', 'pending', 'starting', 'running', 'halting', 'halted', 'failed'] },
  { id: 'halt', label: t('action_halt'), when: ['scheduling', 'pending', 'starting', 'running', 'failed'] },
  { id: 'poweron', label: t('action_poweron'), when: ['halted', 'failed'] },
  { id: 'reboot', label: t('action_reboot'), when: ['running'] },
];

function mountInstances(root) {
  const frame = viewFrame(root, t('nav_instances'), t('instances_intro'));
  createPanel(frame, t('instance_create'), (close) => instanceForm(close));
  const showAll = checkbox(t('show_terminated'), { onchange: () => refreshView() });
  // An admin also sees every account's, each with its account; acting on another
  // account's instance is done in that account (the account select).
  const everyAccount = app.who && app.who.admin ? checkbox(t('every_account'), { id: 'every-account', onchange: () => refreshView() }) : null;
  const list = el('div');
  const consoleSlot = el('div');
  frame.body.append(el('div', { class: 'filters' }, showAll.node, everyAccount ? everyAccount.node : null), list, consoleSlot);

  async function act(inst, action) {
    try {
      const r = await api('POST', `/instances/${enc(inst.id)}/${action.id}`);
      notify('ok', t('action_requested', { action: action.label, name: displayName(inst), job: r.job.id }));
    } catch (e) {
      notify('error', errorText(e));
    }
    refreshView();
  }

  // A new image from the instance's root disk: stopped, or running (crash-consistent).
  function capture(inst) {
    const name = input({ required: true, maxlength: '64', value: `${inst.name || inst.id}-image`, id: 'capture-name' });
    const os = input({ maxlength: '64', placeholder: 'debian-12' });
    formDialog(t('capture_title', { name: displayName(inst) }), el('div', {},
      el('p', { class: 'hint' }, t('capture_help')),
      field(t('field_image_name'), name),
      field(t('field_os'), os, t('hint_optional'))), t('action_capture'), async () => {
      const r = await api('POST', `/instances/${enc(inst.id)}/capture`, compact({ image_name: val(name), os: val(os) }));
      notify('ok', t('capture_requested', { name: displayName(inst), image: displayName(r.resource), job: r.job.id }));
    });
  }

  async function terminate(inst) {
    const ok = await confirmDialog(t('confirm_terminate_title'), t('confirm_terminate', { name: displayName(inst) }), t('action_terminate'));
    if (ok) act(inst, { id: 'terminate', label: t('action_terminate') });
  }

  return {
    frame,
    async refresh(fresh) {
      const every = !!(everyAccount && everyAccount.box.checked);
      const path = every ? '/instances?all_accounts=true' : '/instances';
      // The list keeps terminated instances for an hour; older ones are asked for by state.
      const [recent, older] = await Promise.all([
        listAll(path),
        showAll.box.checked ? listAll(`${path}${every ? '&' : '?'}state=terminated`) : [],
      ]);
      if (!fresh()) return false;
      const seen = new Set(recent.map((i) => i.id));
      const all = [...recent, ...older.filter((i) => !seen.has(i.id))].sort((a, b) => (a.id < b.id ? -1 : 1));
      const items = showAll.box.checked ? all : all.filter((i) => i.state !== 'terminated');
      const actions = INSTANCE_ACTIONS();
      const here = app.who ? app.who.account.id : '';
      const accountName = new Map((app.allAccounts || []).map((a) => [a.id, a.name]));
      const columns = [
        { label: t('col_id'), cell: (i) => code(i.id) },
        ...(every ? [{ label: t('col_account'), cell: (i) => accountName.get(i.account_id) || code(i.account_id) }] : []),
        { label: t('col_name'), cell: (i) => orDash(i.name) },
        {
          label: t('col_state'),
          cell: (i) => [badge(i.state), i.failure_reason ? el('div', { class: 'reason' }, i.failure_reason) : null],
        },
        { label: t('col_hypervisor'), cell: (i) => i.hypervisor },
        { label: t('col_cpus'), cell: (i) => String(i.cpus), class: 'num' },
        { label: t('col_memory'), cell: (i) => fmtMib(i.memory_mib), class: 'num' },
        { label: t('col_host'), cell: (i) => code(i.host_node_id) },
        { label: t('col_server_group'), cell: (i) => code(i.server_group_id) },
        {
          label: t('col_ips'),
          cell: (i) => (i.interfaces.length
            ? el('ul', { class: 'plain' }, i.interfaces.map((n) => el('li', { title: n.network_id }, n.ip)))
            : DASH),
        },
        {
          label: t('col_actions'),
          cell: (i) => (i.account_id !== here ? DASH : actionsCell(
            actions.map((a) => actionButton(a.label, `${a.id}:${i.id}`, () => act(i, a), { disabled: !a.when.includes(i.state) })),
            actionButton(t('action_terminate'), `terminate:${i.id}`, () => terminate(i), {
              danger: true,
              disabled: i.state === 'terminated' || i.state === 'shuttingdown',
            }),
            actionButton(t('action_capture'), `capture:${i.id}`, () => capture(i), { disabled: !['stopped', 'running'].includes(i.state) }),
            actionButton(t('console_log'), `console:${i.id}`, () => openConsole(consoleSlot, i)),
          )),
        },
      ];
      const hidden = all.length - items.length;
      swap(list,
        items.length ? table(columns, items, t('nav_instances')) : empty(t('instances_empty')),
        hidden ? el('p', { class: 'hint' }, t('terminated_hidden', { n: hidden })) : null);
      return items.some((i) => TRANSITIONAL.has(i.state));
    },
  };
}

async function instanceForm(close) {
  const [images, networks, groups, keypairs, serverGroups] = await Promise.all([
    listAll('/images'), listAll('/networks'), listAll('/security_groups'), listAll('/keypairs'), listAll('/server_groups'),
  ]);
  // The API's own limits (names of 64 characters, 1–128 vCPUs, 32 MiB–4 TiB), and only
  // images that can boot.
  const name = input({ name: 'name', maxlength: '64' });
  const bootable = images.filter((i) => i.state === 'available');
  const image = select(bootable.map((i) => ({ value: i.id, label: `${displayName(i)} — ${i.hypervisors.join(', ')}` })), { required: true });
  const hypervisor = select([{ value: '', label: t('hypervisor_default') }, ...HYPERVISORS.map((h) => ({ value: h, label: h }))]);
  const cpus = input({ type: 'number', min: '1', max: '128', step: '1', value: '1', required: true });
  const memory = input({ type: 'number', min: '32', max: '4194304', step: '1', value: '256', required: true });
  const rootDisk = input({ type: 'number', min: '1', step: '1', id: 'root-disk' });
  const keypair = select([{ value: '', label: t('none') }, ...keypairs.map((k) => ({ value: k.id, label: displayName(k) }))]);
  const serverGroup = select([{ value: '', label: t('none') },
    ...serverGroups.map((g) => ({ value: g.id, label: `${displayName(g)} — ${policyLabel(g.policy)}` }))], { id: 'launch-server-group' });
  const userData = el('textarea', { rows: '6', class: 'mono', spellcheck: 'false', placeholder: '#cloud-config' });

  // One row per interface: a network and the security groups of that interface.
  const rows = [];
  const ifList = el('div', { class: 'if-list' });
  const addIf = el('button', { type: 'button', class: 'ghost small' }, t('add_interface'));
  function addRow() {
    const net = select(networks.map((n) => ({ value: n.id, label: `${displayName(n)} — ${n.cidr}` })), { required: true });
    const checks = groups.map((g) => ({ id: g.id, ...checkbox(displayName(g)) }));
    const legend = el('legend', {});
    const row = el('fieldset', { class: 'if-row' }, legend,
      field(t('field_network'), net),
      el('div', { class: 'field' },
        el('span', { class: 'label' }, t('field_security_groups')),
        checks.length ? el('div', { class: 'checks' }, checks.map((c) => c.node)) : el('p', { class: 'hint' }, t('no_security_groups'))));
    const entry = { net, checks, row, legend };
    const remove = el('button', { type: 'button', class: 'ghost small', onclick: () => {
      rows.splice(rows.indexOf(entry), 1);
      row.remove();
      renumber();
      addIf.focus();
    } }, t('remove'));
    row.append(remove);
    rows.push(entry);
    ifList.append(row);
    renumber();
  }
  function renumber() {
    rows.forEach((r, i) => { r.legend.textContent = t('interface_n', { n: i + 1 }); });
  }
  addIf.addEventListener('click', addRow);
  if (networks.length) addRow();
  else addIf.disabled = true;

  const form = el('form', { class: 'form' },
    images.length ? null : el('p', { class: 'form-error' }, t('need_image')),
    el('div', { class: 'grid' },
      field(t('field_name'), name, t('hint_optional')),
      field(t('field_image'), image),
      field(t('field_hypervisor'), hypervisor),
      field(t('field_cpus'), cpus),
      field(t('field_memory_mib'), memory),
      field(t('field_root_disk_mib'), rootDisk, t('hint_root_disk')),
      field(t('field_keypair'), keypair),
      field(t('col_server_group'), serverGroup, t('hint_launch_server_group'))),
    el('fieldset', { class: 'group' }, el('legend', {}, t('field_interfaces')),
      networks.length ? null : el('p', { class: 'hint' }, t('no_networks_hint')),
      ifList, addIf),
    field(t('field_user_data'), userData, t('hint_user_data')),
    formActions(t('launch'), close));

  return asyncForm(form, async () => {
    const body = compact({
      name: val(name),
      image_id: image.value,
      hypervisor: hypervisor.value || undefined,
      cpus: num(cpus),
      memory_mib: num(memory),
      root_disk_size: num(rootDisk) === undefined ? undefined : num(rootDisk) * MIB,
      interfaces: rows.map((r) => ({ network_id: r.net.value, security_groups: r.checks.filter((c) => c.box.checked).map((c) => c.id) })),
      ssh_key_id: keypair.value || undefined,
      user_data: userData.value === '' ? undefined : userData.value,
      server_group: serverGroup.value || undefined,
    });
    const r = await api('POST', '/instances', body);
    notify('ok', t('instance_created', { name: displayName(r.resource), job: r.job.id }));
    close();
    refreshView();
  });
}

function openConsole(slot, inst) {
  const out = el('pre', { class: 'console', tabindex: '0', 'aria-label': t('console_log') });
  const status = el('div');
  const headId = uid('con');
  async function load() {
    status.replaceChildren(el('p', { class: 'loading' }, t('loading')));
    try {
      const r = await api('GET', `/instances/${enc(inst.id)}/console`);
      out.textContent = r.output || t('console_empty');
      status.replaceChildren();
      out.scrollTop = out.scrollHeight;
    } catch (e) {
      status.replaceChildren(el('p', { class: 'form-error', role: 'alert' }, errorText(e)));
    }
  }
  const panel = el('section', { class: 'panel console-panel', 'aria-labelledby': headId },
    el('div', { class: 'view-head' },
      el('h2', { id: headId }, t('console_title', { name: displayName(inst) })),
      el('div', { class: 'toolbar' },
        el('button', { type: 'button', class: 'ghost', onclick: load }, t('refresh')),
        el('button', { type: 'button', class: 'ghost', onclick: () => slot.replaceChildren() }, t('close')))),
    status, out);
  slot.replaceChildren(panel);
  panel.scrollIntoView({ block: 'nearest' });
  load();
}

// ------------------------------------------------------------------ networks

function mountNetworks(root) {
  const frame = viewFrame(root, t('nav_networks'), t('networks_intro'));
  createPanel(frame, t('network_create'), async (close) => {
    const name = input({ required: true, maxlength: '64' });
    const cidr = input({ required: true, placeholder: '10.0.0.0/24' });
    const gateway = input({ placeholder: '10.0.0.1' });
    const dhcpStart = input({});
    const dhcpEnd = input({});
    const form = el('form', { class: 'form' },
      el('div', { class: 'grid' },
        field(t('field_name'), name),
        field(t('field_cidr'), cidr, t('hint_cidr')),
        field(t('field_gateway'), gateway, t('hint_gateway')),
        field(t('field_dhcp_start'), dhcpStart, t('hint_optional')),
        field(t('field_dhcp_end'), dhcpEnd, t('hint_optional'))),
      formActions(t('create'), close));
    return asyncForm(form, async () => {
      const n = await api('POST', '/networks', compact({
        name: val(name), cidr: val(cidr), gateway: val(gateway), dhcp_start: val(dhcpStart), dhcp_end: val(dhcpEnd),
      }));
      notify('ok', t('created', { name: displayName(n) }));
      close();
      refreshView();
    });
  });
  const list = el('div');
  frame.body.append(list);
  return {
    frame,
    async refresh(fresh) {
      const items = await listAll('/networks');
      if (!fresh()) return false;
      const columns = [
        { label: t('col_id'), cell: (n) => code(n.id) },
        { label: t('col_name'), cell: (n) => n.name },
        { label: t('col_cidr'), cell: (n) => n.cidr },
        { label: t('col_gateway'), cell: (n) => n.gateway },
        { label: t('col_dhcp_range'), cell: (n) => t('range', { from: n.dhcp_start, to: n.dhcp_end }) },
        { label: t('col_vni'), cell: (n) => String(n.vni), class: 'num' },
        { label: t('col_created'), cell: (n) => fmtTime(n.created_at) },
        {
          label: t('col_actions'),
          cell: (n) => actionsCell(actionButton(t('delete'), `del:${n.id}`, () => deleteWith(
            t('confirm_delete_title'), t('confirm_delete', { name: displayName(n) }),
            `/networks/${enc(n.id)}`, t('deleted', { name: displayName(n) })), { danger: true })),
        },
      ];
      swap(list, items.length ? table(columns, items, t('nav_networks')) : empty(t('networks_empty')));
      return false;
    },
  };
}

// ------------------------------------------------------------------ server groups

function policyLabel(policy) {
  if (policy === 'affinity') return t('policy_affinity');
  if (policy === 'anti-affinity') return t('policy_anti_affinity');
  if (policy === 'soft-affinity') return t('policy_soft_affinity');
  return t('policy_soft_anti_affinity');
}

const POLICIES = ['anti-affinity', 'affinity', 'soft-anti-affinity', 'soft-affinity'];

function mountServerGroups(root) {
  const frame = viewFrame(root, t('nav_server_groups'), t('server_groups_intro'));
  createPanel(frame, t('server_group_create'), async (close) => {
    const name = input({ required: true, maxlength: '64', id: 'server-group-name' });
    const policy = select(POLICIES.map((p) => ({ value: p, label: policyLabel(p) })), { id: 'server-group-policy' });
    const form = el('form', { class: 'form' },
      el('div', { class: 'grid' }, field(t('field_name'), name), field(t('field_policy'), policy, t('hint_policy'))),
      formActions(t('create'), close));
    return asyncForm(form, async () => {
      const g = await api('POST', '/server_groups', { name: val(name), policy: policy.value });
      notify('ok', t('created', { name: displayName(g) }));
      close();
      refreshView();
    });
  });
  const list = el('div');
  frame.body.append(list);
  return {
    frame,
    async refresh(fresh) {
      const [items, instances] = await Promise.all([listAll('/server_groups'), listAll('/instances')]);
      if (!fresh()) return false;
      const byId = new Map(instances.map((i) => [i.id, i]));
      const columns = [
        { label: t('col_id'), cell: (g) => code(g.id) },
        { label: t('col_name'), cell: (g) => g.name },
        { label: t('col_policy'), cell: (g) => policyLabel(g.policy) },
        {
          label: t('col_members'),
          cell: (g) => (g.members.length ? el('ul', { class: 'plain' }, g.members.map((m) => el('li', {},
            byId.has(m) ? displayName(byId.get(m)) : code(m)))) : DASH),
        },
        { label: t('col_created'), cell: (g) => fmtTime(g.created_at) },
        {
          label: t('col_actions'),
          cell: (g) => actionsCell(actionButton(t('delete'), `del:${g.id}`, () => deleteWith(
            t('confirm_delete_title'), t('confirm_delete', { name: displayName(g) }),
            `/server_groups/${enc(g.id)}`, t('deleted', { name: displayName(g) })), { danger: true, disabled: g.members.length > 0 })),
        },
      ];
      swap(list, items.length ? table(columns, items, t('nav_server_groups')) : empty(t('server_groups_empty')));
      return false;
    },
  };
}

// ------------------------------------------------------------------ floating IPs

// The interfaces of the account's live instances that have no floating IP (one each),
// for an association: "name — 10.0.0.5".
async function interfaceChoices() {
  const live = (await listAll('/instances')).filter((i) => !['terminated', 'shuttingdown'].includes(i.state));
  return live.flatMap((i) => i.interfaces.filter((v) => !v.floating_ip).map((v) => ({
    value: `${i.id}|${v.id}`,
    label: `${displayName(i)} — ${v.ip}`,
  })));
}

async function associateDialog(fip) {
  let choices;
  try {
    choices = await interfaceChoices();
  } catch (e) {
    notify('error', errorText(e));
    return;
  }
  if (!choices.length) {
    notify('error', t('no_interfaces_to_associate'));
    return;
  }
  const target = select(choices, { required: true, id: 'fip-target' });
  formDialog(t('fip_associate_title', { ip: fip.ip }), field(t('field_interface'), target, t('hint_fip_interface')),
    t('action_associate'), async () => {
      const [instance, iface] = target.value.split('|');
      const f = await api('POST', `/floating-ips/${enc(fip.id)}/associate`, { instance_id: instance, interface_id: iface });
      notify('ok', t('fip_associated', { ip: f.ip }));
    });
}

async function fipRequest(path, doneText) {
  try {
    await api('POST', path);
    notify('ok', doneText);
  } catch (e) {
    notify('error', errorText(e));
  }
  refreshView();
}

function mountFloatingIps(root) {
  const frame = viewFrame(root, t('nav_floating_ips'), t('floating_ips_intro'));
  createPanel(frame, t('fip_allocate'), async (close) => {
    const ip = input({ placeholder: '192.168.213.3', id: 'fip-ip' });
    const form = el('form', { class: 'form' },
      el('div', { class: 'grid' }, field(t('field_address'), ip, t('hint_fip_address'))),
      formActions(t('fip_allocate'), close));
    return asyncForm(form, async () => {
      const f = await api('POST', '/floating-ips', compact({ ip: val(ip) }));
      notify('ok', t('fip_allocated', { ip: f.ip }));
      close();
      refreshView();
    });
  });
  const list = el('div');
  frame.body.append(list);
  return {
    frame,
    async refresh(fresh) {
      const [items, instances] = await Promise.all([listAll('/floating-ips'), listAll('/instances')]);
      if (!fresh()) return false;
      const byId = new Map(instances.map((i) => [i.id, i]));
      const ipOf = (f) => {
        const i = byId.get(f.instance_id);
        const v = i && i.interfaces.find((x) => x.id === f.interface_id);
        return v ? v.ip : null;
      };
      const columns = [
        { label: t('col_id'), cell: (f) => code(f.id) },
        { label: t('col_address'), cell: (f) => code(f.ip) },
        { label: t('col_instance'), cell: (f) => (f.instance_id ? (byId.has(f.instance_id) ? displayName(byId.get(f.instance_id)) : code(f.instance_id)) : DASH) },
        { label: t('col_interface_address'), cell: (f) => orDash(ipOf(f)) },
        { label: t('col_created'), cell: (f) => fmtTime(f.created_at) },
        {
          label: t('col_actions'),
          cell: (f) => actionsCell(
            f.instance_id
              ? actionButton(t('action_disassociate'), `disassociate:${f.id}`,
                () => fipRequest(`/floating-ips/${enc(f.id)}/disassociate`, t('fip_disassociated', { ip: f.ip })))
              : actionButton(t('action_associate'), `associate:${f.id}`, () => associateDialog(f)),
            actionButton(t('fip_release'), `del:${f.id}`, () => deleteWith(
              t('confirm_release_title'), t('confirm_release', { ip: f.ip }),
              `/floating-ips/${enc(f.id)}`, t('fip_released', { ip: f.ip })), { danger: true, disabled: !!f.instance_id })),
        },
      ];
      swap(list, items.length ? table(columns, items, t('nav_floating_ips')) : empty(t('floating_ips_empty')));
      return false;
    },
  };
}

// ------------------------------------------------------------------ security groups

function portsText(r) {
  if (r.port_min == null && r.port_max == null) return r.protocol === 'icmp' ? t('all_types') : t('all_ports');
  if (r.port_max == null || r.port_min === r.port_max) return String(r.port_min == null ? r.port_max : r.port_min);
  return t('range', { from: r.port_min == null ? 0 : r.port_min, to: r.port_max });
}

function mountSecurityGroups(root) {
  const frame = viewFrame(root, t('nav_security_groups'), t('security_groups_intro'));
  createPanel(frame, t('security_group_create'), async (close) => {
    const name = input({ required: true, maxlength: '64' });
    const description = input({ maxlength: '255' });
    const form = el('form', { class: 'form' },
      el('div', { class: 'grid' }, field(t('field_name'), name), field(t('field_description'), description, t('hint_optional'))),
      el('p', { class: 'hint' }, t('hint_rules_after')),
      formActions(t('create'), close));
    return asyncForm(form, async () => {
      const g = await api('POST', '/security_groups', { name: val(name), description: description.value.trim() });
      notify('ok', t('created', { name: displayName(g) }));
      close();
      refreshView();
    });
  });
  const list = el('div', { class: 'cards' });
  frame.body.append(list);

  function ruleForm(group, groups) {
    const direction = select([{ value: 'ingress', label: t('dir_ingress') }, { value: 'egress', label: t('dir_egress') }]);
    const protocol = select(PROTOCOLS.map((p) => ({ value: p, label: p })), { value: 'tcp' });
    const portMin = input({ type: 'number', min: '0', max: '65535' });
    const portMax = input({ type: 'number', min: '0', max: '65535' });
    const name = uid('peer');
    const byCidr = radio(name, 'cidr', t('peer_cidr'), true);
    const byGroup = radio(name, 'group', t('peer_group'), false);
    const cidr = input({ placeholder: '0.0.0.0/0', value: '0.0.0.0/0' });
    const peerGroup = select(groups.map((g) => ({ value: g.id, label: displayName(g) })), { value: group.id });
    const cidrField = field(t('field_cidr'), cidr);
    const groupField = field(t('field_peer_group'), peerGroup);
    const sync = () => {
      cidrField.hidden = !byCidr.r.checked;
      groupField.hidden = byCidr.r.checked;
    };
    byCidr.r.addEventListener('change', sync);
    byGroup.r.addEventListener('change', sync);
    sync();
    const form = el('form', { class: 'form' },
      el('div', { class: 'grid' },
        field(t('field_direction'), direction),
        field(t('field_protocol'), protocol),
        field(t('field_port_min'), portMin, t('hint_ports')),
        field(t('field_port_max'), portMax, t('hint_port_max'))),
      el('fieldset', { class: 'group' }, el('legend', {}, t('field_peer')),
        el('div', { class: 'checks inline' }, byCidr.node, byGroup.node), cidrField, groupField),
      formActions(t('add_rule')));
    return asyncForm(form, async () => {
      const min = num(portMin);
      const max = num(portMax);
      const spec = compact({
        direction: direction.value,
        protocol: protocol.value,
        port_min: min,
        port_max: max === undefined ? min : max,
        cidr: byCidr.r.checked ? val(cidr) : undefined,
        group: byCidr.r.checked ? undefined : peerGroup.value,
      });
      await api('POST', `/security_groups/${enc(group.id)}/rules`, spec);
      notify('ok', t('rule_added', { name: displayName(group) }));
      refreshView();
    });
  }

  async function deleteRule(group, rule) {
    const ok = await confirmDialog(t('confirm_delete_title'), t('confirm_delete_rule', { name: displayName(group) }), t('delete'));
    if (!ok) return;
    try {
      await api('DELETE', `/security_groups/${enc(group.id)}/rules/${enc(rule.id)}`);
      notify('ok', t('rule_deleted'));
    } catch (e) {
      notify('error', errorText(e));
    }
    refreshView();
  }

  return {
    frame,
    async refresh(fresh) {
      const groups = await listAll('/security_groups');
      if (!fresh()) return false;
      const names = new Map(groups.map((g) => [g.id, g.name]));
      const peer = (r) => (r.cidr ? r.cidr : [t('peer_group_short'), ' ', code(r.group), names.get(r.group) ? ` (${names.get(r.group)})` : '']);
      const ruleColumns = (g) => [
        { label: t('col_direction'), cell: (r) => (r.direction === 'egress' ? t('dir_egress') : t('dir_ingress')) },
        { label: t('col_protocol'), cell: (r) => r.protocol },
        { label: t('col_ports'), cell: portsText },
        { label: t('col_peer'), cell: peer },
        { label: t('col_actions'), cell: (r) => actionsCell(actionButton(t('delete'), `delrule:${r.id}`, () => deleteRule(g, r), { danger: true })) },
      ];
      const cards = groups.map((g) => {
        const headId = uid('sg');
        return el('article', { class: 'card', 'aria-labelledby': headId },
          el('div', { class: 'card-head' },
            el('h2', { id: headId }, g.name, ' ', code(g.id)),
            actionsCell(actionButton(t('delete'), `del:${g.id}`, () => deleteWith(
              t('confirm_delete_title'), t('confirm_delete', { name: displayName(g) }),
              `/security_groups/${enc(g.id)}`, t('deleted', { name: displayName(g) })), { danger: true }))),
          g.description ? el('p', { class: 'intro' }, g.description) : null,
          g.rules.length ? table(ruleColumns(g), g.rules, t('rules_of', { name: g.name })) : empty(t('rules_empty')),
          el('details', { class: 'add-rule' }, el('summary', {}, t('add_rule')), ruleForm(g, groups)));
      });
      swap(list, ...(groups.length ? cards : [empty(t('security_groups_empty'))]));
      return false;
    },
  };
}

// ------------------------------------------------------------------ key pairs

function safeFileName(name) {
  const s = String(name).replace(/[^A-Za-z0-9._-]+/g, '_').replace(/^[._]+/, '');
  return s || 'vdc-key';
}

function showPrivateKey(keypair, privateKey) {
  const text = el('textarea', { class: 'mono', rows: '10', readonly: true, spellcheck: 'false', 'aria-label': t('private_key') });
  text.value = privateKey;
  const fileName = `${safeFileName(keypair.name)}.pem`;
  const download = el('button', { type: 'button', class: 'primary', onclick: () => {
    const url = URL.createObjectURL(new Blob([privateKey.endsWith('\n') ? privateKey : `${privateKey}\n`], { type: 'application/x-pem-file' }));
    const a = el('a', { href: url, download: fileName });
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10000);
  } }, t('download_key', { file: fileName }));
  const copy = el('button', { type: 'button', class: 'ghost', onclick: async () => {
    try {
      await navigator.clipboard.writeText(privateKey);
      notify('ok', t('copied'));
    } catch (_) {
      text.select(); // no clipboard access (e.g. plain http): let the user copy it
    }
  } }, t('copy'));
  const { dlg } = dialog(t('private_key_title', { name: keypair.name }), [
    el('p', { class: 'warning', role: 'note' }, t('private_key_warning')),
    el('p', { class: 'hint' }, t('private_key_usage', { file: fileName })),
    text,
    el('div', { class: 'actions' }, download, copy),
  ], [el('button', { type: 'submit', value: 'done', class: 'ghost' }, t('private_key_saved'))], { wide: true });
  // Escape must not throw the key away unseen: only the explicit button closes.
  dlg.addEventListener('cancel', (e) => e.preventDefault());
  // Do not keep the key in the page once the dialog is gone.
  dlg.addEventListener('close', () => { text.value = ''; });
}

function mountKeyPairs(root) {
  const frame = viewFrame(root, t('nav_keypairs'), t('keypairs_intro'));
  createPanel(frame, t('keypair_create'), async (close) => {
    const name = input({ required: true, maxlength: '64' });
    const mode = uid('mode');
    const gen = radio(mode, 'generate', t('keypair_generate'), true);
    const imp = radio(mode, 'import', t('keypair_import'), false);
    const pub = el('textarea', { rows: '4', class: 'mono', spellcheck: 'false', placeholder: 'ssh-ed25519 AAAA… user@host' });
    const pubField = field(t('field_public_key'), pub, t('hint_public_key'));
    const sync = () => {
      pubField.hidden = !imp.r.checked;
      pub.required = imp.r.checked;
    };
    gen.r.addEventListener('change', sync);
    imp.r.addEventListener('change', sync);
    sync();
    const form = el('form', { class: 'form' },
      field(t('field_name'), name),
      el('fieldset', { class: 'group' }, el('legend', {}, t('field_key_source')), el('div', { class: 'checks' }, gen.node, imp.node), pubField),
      formActions(t('create'), close));
    return asyncForm(form, async () => {
      const body = { name: val(name) };
      if (imp.r.checked) body.public_key = pub.value.trim();
      const r = await api('POST', '/keypairs', body);
      notify('ok', t('created', { name: displayName(r.keypair) }));
      close();
      refreshView();
      if (r.private_key) showPrivateKey(r.keypair, r.private_key);
    });
  });
  const list = el('div');
  frame.body.append(list);
  return {
    frame,
    async refresh(fresh) {
      const items = await listAll('/keypairs');
      if (!fresh()) return false;
      const columns = [
        { label: t('col_id'), cell: (k) => code(k.id) },
        { label: t('col_name'), cell: (k) => k.name },
        { label: t('col_fingerprint'), cell: (k) => code(k.fingerprint) },
        { label: t('col_created'), cell: (k) => fmtTime(k.created_at) },
        {
          label: t('col_actions'),
          cell: (k) => actionsCell(actionButton(t('delete'), `del:${k.id}`, () => deleteWith(
            t('confirm_delete_title'), t('confirm_delete', { name: displayName(k) }),
            `/keypairs/${enc(k.id)}`, t('deleted', { name: displayName(k) })), { danger: true })),
        },
      ];
      swap(list, items.length ? table(columns, items, t('nav_keypairs')) : empty(t('keypairs_empty')));
      return false;
    },
  };
}

// ------------------------------------------------------------------ images

// Formats a tenant brings its own data in (dir and kernel images are an operator's).
const UPLOAD_FORMATS = ['qcow2', 'raw', 'tar'];

// Register an image: its data uploaded from this browser, or fetched by dcmgr from a URL;
// its properties (login user, boot mode, minimum disk and memory, OS).
async function imageForm(close) {
  const admin = !!(app.who && app.who.admin);
  const name = input({ required: true, maxlength: '64', id: 'image-name' });
  const fromUpload = radio('image-from', 'upload', t('image_from_upload'), true);
  const fromUrl = radio('image-from', 'url', t('image_from_url'));
  const file = el('input', { type: 'file', id: 'image-file' });
  const url = input({ type: 'url', id: 'image-url', placeholder: 'https://…/disk.qcow2' });
  const format = select((admin ? IMAGE_FORMATS : UPLOAD_FORMATS).map((f) => ({ value: f, label: f })), { value: 'qcow2' });
  const arch = select(ARCHES.map((a) => ({ value: a, label: a })));
  const hvs = HYPERVISORS.map((h) => ({ h, ...checkbox(h, { checked: h !== 'lxc' }) }));
  const checksum = input({ placeholder: 'sha256:…', pattern: 'sha256:[0-9a-fA-F]{64}' });
  const defaultUser = input({ placeholder: 'debian', pattern: '[a-z_][a-z0-9_\\-]{0,31}', maxlength: '32' });
  const bootMode = select([{ value: 'bios', label: 'BIOS' }, { value: 'uefi', label: 'UEFI' }]);
  const minDisk = input({ type: 'number', min: '1', step: '1' });
  const minMemory = input({ type: 'number', min: '1', step: '1' });
  const os = input({ placeholder: 'debian-12', maxlength: '64' });
  // An operator's kernel images (their source a file:// path in the directories dcmgr allows).
  const initrd = input({});
  const cmdline = input({ placeholder: 'console=ttyS0' });
  const pub = checkbox(t('field_public'));
  const progress = progressBar(t('upload_progress'));
  const fileField = field(t('field_file'), file, t('hint_image_file'));
  const urlField = field(t('field_url'), url, t('hint_image_url'));
  const showSource = () => {
    fileField.hidden = !fromUpload.r.checked;
    urlField.hidden = fromUpload.r.checked;
    url.required = !fromUpload.r.checked;
  };
  fromUpload.r.addEventListener('change', showSource);
  fromUrl.r.addEventListener('change', showSource);
  showSource();
  // A tar image is a container's root file system.
  format.addEventListener('change', () => hvs.forEach((x) => { x.box.checked = (format.value === 'tar') === (x.h === 'lxc'); }));
  const form = el('form', { class: 'form' },
    el('div', { class: 'grid' },
      field(t('field_name'), name),
      field(t('field_format'), format, t('hint_image_format')),
      field(t('field_arch'), arch)),
    el('fieldset', { class: 'group' }, el('legend', {}, t('field_image_data')),
      el('div', { class: 'checks inline' }, fromUpload.node, fromUrl.node), fileField, urlField),
    el('fieldset', { class: 'group' }, el('legend', {}, t('field_hypervisors')), el('div', { class: 'checks inline' }, hvs.map((x) => x.node))),
    el('div', { class: 'grid' },
      field(t('field_default_user'), defaultUser, t('hint_default_user')),
      field(t('field_boot_mode'), bootMode),
      field(t('field_os'), os),
      field(t('field_min_disk_mib'), minDisk, t('hint_optional')),
      field(t('field_min_memory_mib'), minMemory, t('hint_optional')),
      field(t('field_checksum'), checksum, t('hint_checksum'))),
    admin ? el('div', { class: 'grid' },
      field(t('field_initrd'), initrd, t('hint_kernel_only')),
      field(t('field_kernel_cmdline'), cmdline, t('hint_kernel_only'))) : null,
    admin ? el('div', { class: 'field' }, pub.node, el('p', { class: 'hint' }, t('hint_public'))) : null,
    progress.node,
    formActions(t('register'), close));
  const mib = (control) => (num(control) === undefined ? undefined : num(control) * MIB);
  return asyncForm(form, async () => {
    const upload = fromUpload.r.checked;
    const data = file.files && file.files[0];
    if (upload && !data) throw new Error(t('need_file'));
    const hypervisors = hvs.filter((x) => x.box.checked).map((x) => x.h);
    if (!hypervisors.length) throw new Error(t('need_hypervisor'));
    let img = await api('POST', '/images', compact({
      name: val(name),
      format: format.value,
      arch: arch.value,
      hypervisors,
      source: upload ? undefined : val(url),
      checksum: val(checksum),
      default_user: val(defaultUser),
      boot_mode: format.value === 'tar' ? undefined : bootMode.value,
      min_disk: mib(minDisk),
      min_memory: mib(minMemory),
      os: val(os),
      initrd: val(initrd),
      kernel_cmdline: val(cmdline),
      public: admin ? pub.box.checked : undefined,
    }));
    if (upload) {
      try {
        img = await sendFile('PUT', `/images/${enc(img.id)}/file`, data, (sent, total) => progress.set(sent, total));
      } catch (e) {
        // The image stays (failed, or pending when cut off): it is listed, to upload again or delete.
        refreshView();
        throw new Error(t('upload_failed', { name: displayName(img), message: errorText(e) }));
      }
    }
    notify('ok', upload ? t('image_uploaded', { name: displayName(img) }) : t('image_importing', { name: displayName(img) }));
    close();
    refreshView();
  });
}

// The data of an image still pending (an upload that was cut off, or never sent).
function uploadDialog(img) {
  const file = el('input', { type: 'file', required: true, id: 'upload-file' });
  const progress = progressBar(t('upload_progress'));
  formDialog(t('upload_title', { name: displayName(img) }),
    el('div', {}, field(t('field_file'), file, t('hint_image_file')), progress.node), t('upload'), async () => {
      const done = await sendFile('PUT', `/images/${enc(img.id)}/file`, file.files[0], (sent, total) => progress.set(sent, total));
      notify('ok', t('image_uploaded', { name: displayName(done) }));
    });
}

// A member's answer to a share, as the owner sees it.
function memberLabel(status) {
  if (status === 'accepted') return t('member_accepted');
  if (status === 'rejected') return t('member_rejected');
  return t('member_pending');
}

// Who an image is shared with: they can see and boot it, not change it.
async function shareDialog(img) {
  const path = `/images/${enc(img.id)}/members`;
  const members = el('div');
  const account = input({ required: true, placeholder: 'a-…', id: 'share-account' });
  async function show(list) {
    members.replaceChildren(list.members.length
      ? el('ul', { class: 'plain' }, list.members.map((m) => el('li', {}, code(m), ' ',
        el('span', { class: 'badge badge-off' }, memberLabel((list.member_status || {})[m])), ' ',
        actionButton(t('unshare'), `unshare:${m}`, async () => {
          try {
            show(await api('DELETE', `${path}/${enc(m)}`));
          } catch (e) {
            notify('error', errorText(e));
          }
        }, { danger: true }))))
      : empty(t('shared_with_nobody')));
  }
  try {
    await show(await api('GET', path));
  } catch (e) {
    notify('error', errorText(e));
    return;
  }
  const { dlg, form } = dialog(t('share_title', { name: displayName(img) }),
    el('div', {}, el('h3', {}, t('shared_with')), members, field(t('field_account_id'), account, t('hint_share'))), [
      el('button', { type: 'submit', class: 'primary' }, t('share')),
      el('button', { type: 'button', class: 'ghost', onclick: () => dlg.close() }, t('close')),
    ]);
  form.method = 'post';
  asyncForm(form, async () => {
    await show(await api('PUT', `${path}/${enc(val(account) || '')}`));
    account.value = '';
  });
}

function mountImages(root) {
  const frame = viewFrame(root, t('nav_images'), t('images_intro'));
  createPanel(frame, t('image_register'), imageForm);
  const list = el('div');
  frame.body.append(list);
  return {
    frame,
    async refresh(fresh) {
      const [items, offered] = await Promise.all([listAll('/images'), listAll('/images?member_status=pending')]);
      if (!fresh()) return false;
      const here = app.who ? app.who.account.id : '';
      // Offered by another account: listed apart until accepted (nothing lands in the
      // account's images, or makes its names ambiguous, unasked).
      const answer = (i, accept) => async () => {
        try {
          await api(accept ? 'PUT' : 'DELETE', `/images/${enc(i.id)}/members/${enc(here)}`);
          const params = { name: displayName(i) };
          notify('ok', accept ? t('offer_accepted', params) : t('offer_declined', params));
        } catch (e) {
          notify('error', errorText(e));
        }
        refreshView();
      };
      const offers = offered.length ? el('section', { id: 'image-offers' },
        el('h3', {}, t('images_offered')),
        table([
          { label: t('col_id'), cell: (i) => code(i.id) },
          { label: t('col_name'), cell: (i) => i.name },
          { label: t('col_owner'), cell: (i) => code(i.owner || '-') },
          { label: t('col_format'), cell: (i) => i.format },
          { label: t('col_os'), cell: (i) => orDash(i.os) },
          { label: t('col_created'), cell: (i) => fmtTime(i.created_at) },
          {
            label: t('col_actions'),
            cell: (i) => actionsCell(
              actionButton(t('accept'), `accept:${i.id}`, answer(i, true)),
              actionButton(t('decline'), `decline:${i.id}`, answer(i, false), { danger: true })),
          },
        ], offered, t('images_offered'))) : null;
      const columns = [
        { label: t('col_id'), cell: (i) => code(i.id) },
        { label: t('col_name'), cell: (i) => i.name },
        {
          label: t('col_state'),
          cell: (i) => [badge(i.state), i.failure_reason ? el('div', { class: 'reason' }, i.failure_reason) : null],
        },
        { label: t('col_format'), cell: (i) => i.format },
        // The disk a volume or root disk from it gets at least (disk images dcmgr read).
        { label: t('col_disk_size'), cell: (i) => fmtMib(i.virtual_size == null ? null : Math.ceil(i.virtual_size / MIB)), class: 'num' },
        { label: t('col_arch'), cell: (i) => i.arch },
        { label: t('col_os'), cell: (i) => orDash(i.os) },
        { label: t('col_default_user'), cell: (i) => orDash(i.default_user) },
        { label: t('col_hypervisors'), cell: (i) => i.hypervisors.join(', ') },
        { label: t('col_source'), cell: (i) => el('span', { class: 'wrap' }, i.source === 'upload' ? t('source_uploaded') : i.source) },
        { label: t('col_public'), cell: (i) => (i.public ? t('yes') : t('no')) },
        { label: t('col_owner'), cell: (i) => (i.owner === here ? t('owner_this_account') : code(i.owner || '-')) },
        { label: t('col_created'), cell: (i) => fmtTime(i.created_at) },
        {
          label: t('col_actions'),
          cell: (i) => actionsCell(
            i.state === 'pending' && i.source === 'upload' ? actionButton(t('upload'), `upload:${i.id}`, () => uploadDialog(i)) : null,
            // Only the owner shares or deletes; a member declines what it accepted.
            i.member_status ? actionButton(t('decline'), `decline:${i.id}`, answer(i, false), { danger: true }) : null,
            i.member_status ? null : actionButton(t('share'), `share:${i.id}`, () => shareDialog(i), { disabled: i.public || i.owner !== here }),
            i.member_status ? null : actionButton(t('delete'), `del:${i.id}`, () => deleteWith(
              t('confirm_delete_title'), t('confirm_delete', { name: displayName(i) }),
              `/images/${enc(i.id)}`, t('deleted', { name: displayName(i) })), { danger: true, disabled: i.owner !== here })),
        },
      ];
      swap(list, offers, items.length ? table(columns, items, t('nav_images')) : empty(t('images_empty')));
      return items.some((i) => TRANSITIONAL.has(i.state));
    },
  };
}

// ------------------------------------------------------------------ volumes and snapshots

// Runs one volume or snapshot request; `done(jobId)` is the success notice.
async function volumeRequest(method, path, done) {
  try {
    const r = await api(method, path);
    notify('ok', done(r.job.id));
  } catch (e) {
    notify('error', errorText(e));
  }
  refreshView();
}

async function attachDialog(vol) {
  let instances;
  try {
    instances = (await listAll('/instances')).filter((i) => !['terminated', 'shuttingdown', 'failed'].includes(i.state));
  } catch (e) {
    notify('error', errorText(e));
    return;
  }
  if (!instances.length) {
    notify('error', t('no_instances_to_attach'));
    return;
  }
  const target = select(instances.map((i) => ({ value: i.id, label: `${displayName(i)} — ${stateLabel(i.state)}` })), { required: true });
  formDialog(t('attach_title', { name: displayName(vol) }), field(t('field_instance'), target), t('action_attach'), async () => {
    const r = await api('POST', `/volumes/${enc(vol.id)}/attach`, { instance_id: target.value });
    notify('ok', t('attach_requested', { name: displayName(vol), job: r.job.id }));
  });
}

function snapshotDialog(vol) {
  const name = input({ required: true, maxlength: '64', value: `${vol.name}-snap` });
  formDialog(t('snapshot_from_title', { name: displayName(vol) }), field(t('field_name'), name), t('create'), async () => {
    const r = await api('POST', '/snapshots', { volume_id: vol.id, name: val(name) });
    notify('ok', t('snapshot_requested', { name: displayName(r.resource), job: r.job.id }));
  });
}

// A new image holding a snapshot's blocks (raw, or qcow2 converted by the storage node).
function snapshotImageDialog(snap) {
  const name = input({ required: true, maxlength: '64', value: `${snap.name}-image`, id: 'snapshot-image-name' });
  const format = select([{ value: 'raw', label: 'raw' }, { value: 'qcow2', label: 'qcow2' }]);
  const os = input({ maxlength: '64', placeholder: 'debian-12' });
  formDialog(t('snapshot_image_title', { name: displayName(snap) }), el('div', {},
    field(t('field_image_name'), name),
    field(t('field_format'), format),
    field(t('field_os'), os, t('hint_optional'))), t('create'), async () => {
    const r = await api('POST', `/snapshots/${enc(snap.id)}/image`, compact({ image_name: val(name), format: format.value, os: val(os) }));
    notify('ok', t('snapshot_image_requested', { name: displayName(snap), image: displayName(r.resource), job: r.job.id }));
  });
}

function mountVolumes(root) {
  const frame = viewFrame(root, t('nav_volumes_snapshots'), t('volumes_intro'));
  createPanel(frame, t('volume_create'), async (close) => {
    const [snapshots, images] = await Promise.all([
      listAll('/snapshots').then((l) => l.filter((s) => s.state === 'available')),
      // Only disks fill a volume: qcow2 and raw images.
      listAll('/images').then((l) => l.filter((i) => i.state === 'available' && ['qcow2', 'raw'].includes(i.format))),
    ]);
    const name = input({ required: true, maxlength: '64' });
    const src = uid('src');
    const blank = radio(src, 'blank', t('volume_blank'), true);
    const fromSnap = radio(src, 'snapshot', t('volume_from_snapshot'), false);
    const fromImage = radio(src, 'image', t('volume_from_image'), false);
    const size = input({ type: 'number', min: '1', step: '1', value: '1024' });
    const snap = select(snapshots.map((s) => ({ value: s.id, label: `${displayName(s)} — ${fmtMib(s.size_mib)}` })));
    const disk = (i) => (i.virtual_size ? ` — ${fmtMib(Math.ceil(i.virtual_size / 1048576))}` : '');
    const image = select(images.map((i) => ({ value: i.id, label: `${displayName(i)}${disk(i)}` })));
    const snapField = field(t('field_snapshot'), snap);
    const imageField = field(t('field_image'), image);
    const sizeField = field(t('field_size_mib'), size);
    const sizeHint = el('p', { class: 'hint' }, t('hint_size_from_snapshot'));
    const imageHint = el('p', { class: 'hint' }, t('hint_size_from_image'));
    fromSnap.r.disabled = !snapshots.length;
    fromImage.r.disabled = !images.length;
    const sync = () => {
      const copy = fromSnap.r.checked;
      const filled = fromImage.r.checked;
      snapField.hidden = !copy;
      sizeHint.hidden = !copy;
      imageField.hidden = !filled;
      imageHint.hidden = !filled;
      size.required = !copy && !filled;
      // A copy or a filled volume defaults to its source's size: do not send the blank
      // volume's default.
      if ((copy || filled) && size.value === '1024') size.value = '';
      if (!copy && !filled && size.value === '') size.value = '1024';
    };
    for (const r of [blank, fromSnap, fromImage]) r.r.addEventListener('change', sync);
    sync();
    const form = el('form', { class: 'form' },
      field(t('field_name'), name),
      el('fieldset', { class: 'group' }, el('legend', {}, t('field_volume_source')),
        el('div', { class: 'checks' }, blank.node, fromSnap.node, fromImage.node),
        snapshots.length ? null : el('p', { class: 'hint' }, t('no_snapshots')),
        images.length ? null : el('p', { class: 'hint' }, t('no_disk_images')),
        snapField, imageField, sizeField, sizeHint, imageHint),
      formActions(t('create'), close));
    return asyncForm(form, async () => {
      const body = compact({
        name: val(name),
        size_mib: num(size),
        snapshot_id: fromSnap.r.checked ? snap.value : undefined,
        image_id: fromImage.r.checked ? image.value : undefined,
      });
      const r = await api('POST', '/volumes', body);
      notify('ok', t('volume_requested', { name: displayName(r.resource), job: r.job.id }));
      close();
      refreshView();
    });
  });

  const volList = el('div');
  const snapList = el('div');
  const snapHeadId = uid('snaps');
  frame.body.append(volList,
    el('section', { class: 'subsection', 'aria-labelledby': snapHeadId },
      el('h2', { id: snapHeadId }, t('nav_snapshots')),
      el('p', { class: 'intro' }, t('snapshots_intro')),
      snapList));

  return {
    frame,
    async refresh(fresh) {
      const [volumes, snapshots, instances] = await Promise.all([
        listAll('/volumes'),
        listAll('/snapshots'),
        listAll('/instances').catch(() => []), // only for names: never fail the view on it
      ]);
      if (!fresh()) return false;
      const shownVolumes = volumes.filter((v) => v.state !== 'deleted');
      const shownSnaps = snapshots.filter((s) => s.state !== 'deleted');
      const instName = new Map(instances.map((i) => [i.id, i.name]));
      const instCell = (id) => (id ? [code(id), instName.get(id) ? ` (${instName.get(id)})` : ''] : DASH);
      const volColumns = [
        { label: t('col_id'), cell: (v) => code(v.id) },
        { label: t('col_name'), cell: (v) => v.name },
        { label: t('col_size'), cell: (v) => fmtMib(v.size_mib), class: 'num' },
        { label: t('col_state'), cell: (v) => [badge(v.state), v.failure_reason ? el('div', { class: 'reason' }, v.failure_reason) : null] },
        { label: t('col_instance'), cell: (v) => instCell(v.instance_id) },
        { label: t('col_storage_node'), cell: (v) => code(v.storage_node_id) },
        { label: t('col_snapshot'), cell: (v) => code(v.snapshot_id) },
        { label: t('col_created'), cell: (v) => fmtTime(v.created_at) },
        {
          label: t('col_actions'),
          cell: (v) => actionsCell(
            actionButton(t('action_attach'), `attach:${v.id}`, () => attachDialog(v), { disabled: v.state !== 'available' }),
            actionButton(t('action_detach'), `detach:${v.id}`, async () => {
              const ok = await confirmDialog(t('confirm_detach_title'), t('confirm_detach', { name: displayName(v), instance: v.instance_id || DASH }), t('action_detach'));
              if (ok) volumeRequest('POST', `/volumes/${enc(v.id)}/detach`, (job) => t('detach_requested', { name: displayName(v), job }));
            }, { disabled: v.state !== 'attached' }),
            actionButton(t('action_snapshot'), `snap:${v.id}`, () => snapshotDialog(v), { disabled: !['available', 'attached'].includes(v.state) }),
            actionButton(t('delete'), `del:${v.id}`, async () => {
              const ok = await confirmDialog(t('confirm_delete_title'), t('confirm_delete', { name: displayName(v) }), t('delete'));
              if (ok) volumeRequest('DELETE', `/volumes/${enc(v.id)}`, (job) => t('delete_requested', { name: displayName(v), job }));
            }, { danger: true, disabled: !['available', 'failed'].includes(v.state) }),
          ),
        },
      ];
      const volName = new Map(volumes.map((v) => [v.id, v.name]));
      const snapColumns = [
        { label: t('col_id'), cell: (s) => code(s.id) },
        { label: t('col_name'), cell: (s) => s.name },
        { label: t('col_volume'), cell: (s) => [code(s.volume_id), volName.get(s.volume_id) ? ` (${volName.get(s.volume_id)})` : ''] },
        { label: t('col_size'), cell: (s) => fmtMib(s.size_mib), class: 'num' },
        { label: t('col_state'), cell: (s) => badge(s.state) },
        { label: t('col_storage_node'), cell: (s) => code(s.storage_node_id) },
        { label: t('col_created'), cell: (s) => fmtTime(s.created_at) },
        {
          label: t('col_actions'),
          cell: (s) => actionsCell(
            actionButton(t('action_make_image'), `image:${s.id}`, () => snapshotImageDialog(s), { disabled: s.state !== 'available' }),
            actionButton(t('delete'), `del:${s.id}`, async () => {
              const ok = await confirmDialog(t('confirm_delete_title'), t('confirm_delete', { name: displayName(s) }), t('delete'));
              if (ok) volumeRequest('DELETE', `/snapshots/${enc(s.id)}`, (job) => t('delete_requested', { name: displayName(s), job }));
            }, { danger: true, disabled: !['available', 'failed'].includes(s.state) })),
        },
      ];
      swap(volList, shownVolumes.length ? table(volColumns, shownVolumes, t('nav_volumes')) : empty(t('volumes_empty')));
      swap(snapList, shownSnaps.length ? table(snapColumns, shownSnaps, t('nav_snapshots')) : empty(t('snapshots_empty')));
      return shownVolumes.some((v) => TRANSITIONAL.has(v.state)) || shownSnaps.some((s) => TRANSITIONAL.has(s.state));
    },
  };
}

// ------------------------------------------------------------------ bundles

// The maps a plan or an import is given: one KEY=VALUE per line; blank lines and lines
// starting with # are left out (as in `vdc bundle plan --map-file`).
function bundleQuery(mapsText, prune) {
  const q = new URLSearchParams();
  for (const line of mapsText.split('\n')) {
    const m = line.trim();
    if (m && !m.startsWith('#')) q.append('map', m);
  }
  if (prune) q.set('prune', 'true');
  const text = q.toString();
  return text ? `?${text}` : '';
}

// The whole VDC of this account as one bundle, read as it streams (its bytes counted on
// screen), then saved as a download named as the CLI names it.
async function exportBundle(modelOnly, stop, progress) {
  const used = app.token;
  const headers = { Authorization: `Bearer ${used}` };
  if (app.actIn) headers['X-Vdc-Account'] = app.actIn;
  const q = new URLSearchParams();
  if (modelOnly) q.set('model_only', 'true');
  if (stop) q.set('stop', 'true');
  let res;
  try {
    res = await fetch(`${API_BASE}/bundle${q.toString() ? `?${q}` : ''}`, { headers, cache: 'no-store' });
  } catch (_) {
    throw new ApiError(0, 'network', t('error_network'));
  }
  if (!res.ok) {
    let data = null;
    try {
      data = await res.json();
    } catch (_) {
      data = null;
    }
    throw refusal(res.status, res.statusText, data, used);
  }
  const parts = [];
  let got = 0;
  const reader = res.body.getReader();
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    parts.push(value);
    got += value.length;
    progress.set(got, 0);
  }
  const stamp = new Date().toISOString().replace(/[-:]/g, '').replace(/\..*/, '');
  const name = `vdc-${stamp}.bundle`;
  const link = el('a', { href: URL.createObjectURL(new Blob(parts, { type: 'application/octet-stream' })), download: name, hidden: true });
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(link.href), 60000);
  return { name, bytes: got };
}

// A plan as the CLI prints it: what is created, changed and deleted, and what keeps the
// bundle from being imported, each conflict with the map that resolves it (one click adds
// it to `maps`).
function planView(plan, maps) {
  const line = (sign, text) => el('li', {}, el('code', {}, sign), ' ', text);
  const part = (title, items) => (items.length ? el('section', { class: 'subsection' }, el('h3', {}, title), el('ul', { class: 'plain plan' }, items)) : null);
  const creates = plan.creates.map((c) => line('+', `${c.kind} “${c.name}” (${c.bundle_id})${c.note ? ` — ${c.note}` : ''}`));
  const updates = (plan.updates || []).map((c) => line('~', `${c.kind} “${c.name}” (${c.id}): ${c.detail}`));
  const deletes = (plan.deletes || []).map((c) => line('-', `${c.kind} “${c.name}” (${c.id}): ${c.detail}`));
  const conflicts = plan.conflicts.map((c) => el('li', {}, el('code', {}, '!'), ' ', `${c.code}: ${c.message}`,
    c.resolve ? [' ', actionButton(t('plan_use_map', { map: c.resolve }), `map:${c.resolve}`, () => {
      maps.value = `${maps.value.trim() ? `${maps.value.trim()}\n` : ''}${c.resolve}\n`;
    })] : null));
  const unchanged = (plan.unchanged || []).length;
  return el('div', { id: 'bundle-plan-result' },
    el('p', {}, t('plan_verified', { chunks: plan.chunks, size: fmtBytes(plan.bytes), site: plan.source_site, vdc: plan.source_vdc })),
    plan.already_imported ? el('p', { class: 'note' }, t('plan_already', { id: plan.already_imported })) : null,
    plan.update_of ? el('p', {}, t('plan_update_of', { id: plan.update_of })) : null,
    part(t('plan_creates'), creates),
    part(t('plan_updates'), updates),
    part(plan.prune ? t('plan_deletes') : t('plan_deletes_not_pruned'), deletes),
    unchanged ? el('p', { class: 'hint' }, t('plan_unchanged', { n: unchanged })) : null,
    part(t('plan_conflicts'), conflicts),
    el('p', { class: plan.conflicts.length ? 'form-error' : 'note' },
      plan.conflicts.length ? t('plan_unresolved', { n: plan.conflicts.length }) : t('plan_ready')));
}

// Bundle ID → ID made here.
function importMapDialog(imp) {
  const rows = Object.entries(imp.id_map).sort(([a], [b]) => (a < b ? -1 : 1)).map(([from, to]) => ({ from, to }));
  const { dlg } = dialog(t('import_map_title', { id: imp.id }), table([
    { label: t('col_bundle_id'), cell: (r) => code(r.from) },
    { label: t('col_id_here'), cell: (r) => code(r.to) },
  ], rows, t('import_map_title', { id: imp.id })), [
    el('button', { type: 'submit', class: 'primary' }, t('close')),
  ], { wide: true });
  return dlg;
}

function mountBundles(root) {
  const frame = viewFrame(root, t('nav_bundles'), t('bundles_intro'));

  // Export.
  const modelOnly = checkbox(t('export_model_only'), { id: 'export-model-only' });
  const stop = checkbox(t('export_stop'), { id: 'export-stop' });
  const exportProgress = progressBar(t('export_progress'));
  const exportHead = uid('export');
  const siteKey = el('code', { id: 'site-key' }, DASH);
  const exportForm = asyncForm(el('form', { class: 'form', id: 'bundle-export' },
    el('div', { class: 'checks' }, modelOnly.node, stop.node),
    el('p', { class: 'hint' }, t('export_help')),
    el('p', { class: 'hint' }, t('site_key'), ' ', siteKey),
    exportProgress.node,
    el('div', { class: 'actions' }, el('button', { type: 'submit', class: 'primary' }, t('export_bundle')))), async () => {
    const done = await exportBundle(modelOnly.box.checked, stop.box.checked, exportProgress);
    notify('ok', t('exported', { name: done.name, size: fmtBytes(done.bytes) }));
  });

  // Plan, then import.
  const file = el('input', { type: 'file', id: 'bundle-file', required: true });
  const maps = el('textarea', { rows: '3', class: 'mono', spellcheck: 'false', id: 'bundle-maps', placeholder: 'network.front.cidr=10.60.0.0/24\nhypervisor.kvm=qemu' });
  const prune = checkbox(t('import_prune'), { id: 'bundle-prune' });
  const sendProgress = progressBar(t('upload_progress'));
  const result = el('div', { id: 'bundle-result' });
  const importHead = uid('import');
  const importForm = el('form', { class: 'form', id: 'bundle-import' },
    field(t('field_bundle_file'), file, t('hint_bundle_file')),
    field(t('field_maps'), maps, t('hint_maps')),
    el('div', { class: 'field' }, prune.node, el('p', { class: 'hint' }, t('hint_prune'))),
    sendProgress.node,
    el('div', { class: 'actions' },
      el('button', { type: 'submit', class: 'primary', value: 'plan', id: 'bundle-plan-button' }, t('plan_bundle')),
      el('button', { type: 'submit', class: 'ghost', value: 'import', id: 'bundle-import-button' }, t('import_bundle'))));
  let pressed = 'plan';
  importForm.addEventListener('click', (ev) => {
    if (ev.target instanceof HTMLButtonElement && ev.target.type === 'submit') pressed = ev.target.value;
  });
  asyncForm(importForm, async () => {
    const data = file.files && file.files[0];
    if (!data) throw new Error(t('need_file'));
    const path = `/bundle/${pressed === 'import' ? 'import' : 'plan'}${bundleQuery(maps.value, prune.box.checked)}`;
    result.replaceChildren(el('p', { class: 'loading' }, pressed === 'import' ? t('importing') : t('planning')));
    let answer;
    try {
      answer = await sendFile('POST', path, data, (sent, total) => sendProgress.set(sent, total));
    } catch (e) {
      result.replaceChildren();
      throw e;
    }
    if (pressed !== 'import') {
      result.replaceChildren(planView(answer, maps));
      result.scrollIntoView({ block: 'nearest' });
      return;
    }
    const imp = answer.import;
    result.replaceChildren(el('p', { class: 'note', id: 'bundle-imported' },
      answer.created ? t('imported', { id: imp.id, n: Object.keys(imp.id_map).length }) : t('imported_already', { id: imp.id })));
    notify('ok', answer.created ? t('imported', { id: imp.id, n: Object.keys(imp.id_map).length }) : t('imported_already', { id: imp.id }));
    refreshView();
  });

  const imports = el('div');
  const importsHead = uid('imports');
  frame.body.append(
    el('section', { class: 'subsection', 'aria-labelledby': exportHead }, el('h2', { id: exportHead }, t('export_title')), exportForm),
    el('section', { class: 'subsection', 'aria-labelledby': importHead }, el('h2', { id: importHead }, t('import_title')), importForm, result),
    el('section', { class: 'subsection', 'aria-labelledby': importsHead }, el('h2', { id: importsHead }, t('imports_title')), imports));
  return {
    frame,
    async refresh(fresh) {
      const [items, key] = await Promise.all([api('GET', '/bundle/imports'), api('GET', '/bundle/key')]);
      if (!fresh()) return false;
      siteKey.textContent = key.public_key;
      const columns = [
        { label: t('col_id'), cell: (i) => code(i.id) },
        { label: t('col_source_site'), cell: (i) => code(i.source_site) },
        { label: t('col_source_vdc'), cell: (i) => code(i.source_vdc) },
        { label: t('col_objects'), cell: (i) => String(Object.keys(i.id_map).length), class: 'num' },
        { label: t('col_created'), cell: (i) => fmtTime(i.created_at) },
        { label: t('col_updated'), cell: (i) => (i.updated_at ? fmtTime(i.updated_at) : DASH) },
        { label: t('col_actions'), cell: (i) => actionsCell(actionButton(t('show_map'), `map:${i.id}`, () => importMapDialog(i))) },
      ];
      swap(imports, items.length ? table(columns, items, t('imports_title')) : empty(t('imports_empty')));
      return false;
    },
  };
}

// ------------------------------------------------------------------ jobs

function mountJobs(root) {
  const frame = viewFrame(root, t('nav_jobs'), t('jobs_intro'));
  const list = el('div');
  frame.body.append(list);
  return {
    frame,
    async refresh(fresh) {
      // Newest first: one page, however many jobs the account has run.
      const page = await api('GET', `/jobs?limit=${JOBS_SHOWN}`);
      if (!fresh()) return false;
      const items = page.items || [];
      const columns = [
        { label: t('col_id'), cell: (j) => code(j.id) },
        { label: t('col_action'), cell: (j) => j.action },
        { label: t('col_resource'), cell: (j) => code(j.resource_id) },
        { label: t('col_state'), cell: (j) => badge(j.state, j.state === 'running') },
        { label: t('col_message'), cell: (j) => el('span', { class: 'wrap' }, orDash(j.message)) },
        { label: t('col_created'), cell: (j) => fmtTime(j.created_at) },
        { label: t('col_finished'), cell: (j) => fmtTime(j.finished_at) },
      ];
      swap(list,
        items.length ? table(columns, items, t('nav_jobs')) : empty(t('jobs_empty')),
        page.next_cursor ? el('p', { class: 'hint' }, t('jobs_truncated', { n: items.length })) : null);
      return items.some((j) => j.state === 'running');
    },
  };
}

// ------------------------------------------------------------------ hosts (admin)

function mountHosts(root) {
  const frame = viewFrame(root, t('nav_hosts'), t('hosts_intro'));
  const hostHead = uid('hn');
  const storHead = uid('sn');
  const hostList = el('div');
  const storList = el('div');
  frame.body.append(
    el('section', { class: 'subsection', 'aria-labelledby': hostHead }, el('h2', { id: hostHead }, t('host_nodes')), hostList),
    el('section', { class: 'subsection', 'aria-labelledby': storHead }, el('h2', { id: storHead }, t('storage_nodes')), storList));
  return {
    frame,
    async refresh(fresh) {
      let hosts;
      let storage;
      try {
        [hosts, storage] = await Promise.all([listAll('/host_nodes'), listAll('/storage_nodes')]);
      } catch (e) {
        if (e instanceof ApiError && e.status === 403) {
          if (fresh()) frame.body.replaceChildren(el('p', { class: 'note', role: 'note' }, t('admin_only')));
          return false;
        }
        throw e;
      }
      if (!fresh()) return false;
      const hostColumns = [
        { label: t('col_id'), cell: (h) => code(h.id) },
        // A cordoned host takes no new instances (vdc host cordon).
        { label: t('col_state'), cell: (h) => (h.schedulable === false ? el('span', {}, badge(h.state), ' ', el('span', { class: 'badge badge-off', title: h.cordon_reason }, t('badge_cordoned')), h.cordon_reason ? el('span', {}, ' ', h.cordon_reason) : null) : badge(h.state)) },
        { label: t('col_hypervisors'), cell: (h) => h.hypervisors.join(', ') },
        { label: t('col_cpus'), cell: (h) => fmtUsage(h.cpus_used, h.cpus_allocatable, String) },
        { label: t('col_memory'), cell: (h) => fmtUsage(h.memory_used_mib, h.memory_allocatable_mib, fmtMib) },
        { label: t('col_capabilities'), cell: (h) => el('code', { class: 'wrap' }, JSON.stringify(h.capabilities)) },
        { label: t('col_last_seen'), cell: (h) => fmtTime(h.last_seen) },
        { label: t('col_held'), cell: heldInstances },
        {
          label: t('col_actions'),
          cell: (h) => actionsCell(h.schedulable === false
            ? actionButton(t('action_uncordon'), `uncordon:${h.id}`, () => cordon(h, true))
            : actionButton(t('action_cordon'), `cordon:${h.id}`, () => cordon(h, false))),
        },
      ];
      const storColumns = [
        { label: t('col_id'), cell: (s) => code(s.id) },
        { label: t('col_state'), cell: (s) => badge(s.state) },
        { label: t('col_backend'), cell: (s) => s.backend },
        { label: t('col_usage'), cell: (s) => fmtUsage(s.used_mib, s.capacity_mib, fmtMib) },
        { label: t('col_last_seen'), cell: (s) => fmtTime(s.last_seen) },
      ];
      swap(hostList, hosts.length ? table(hostColumns, hosts, t('host_nodes')) : empty(t('host_nodes_empty')));
      swap(storList, storage.length ? table(storColumns, storage, t('storage_nodes')) : empty(t('storage_nodes_empty')));
      return false;
    },
  };
}

// Cordoned, a host takes no new instances; what runs there stays (vdc host cordon).
async function cordon(h, open) {
  try {
    await api('PATCH', `/host_nodes/${enc(h.id)}`, { schedulable: open });
    notify('ok', open ? t('host_uncordoned', { id: h.id }) : t('host_cordoned', { id: h.id }));
  } catch (e) {
    notify('error', errorText(e));
  }
  refreshView();
}

// What a host holds, of every account, read when opened (one request per host opened,
// not per host listed). Hosts opened stay open, and are read again, when the view
// refreshes.
const heldOpen = new Set();

function heldInstances(h) {
  const box = el('div');
  const details = el('details', {
    open: heldOpen.has(h.id),
    ontoggle: async () => {
      if (details.open) heldOpen.add(h.id); else heldOpen.delete(h.id);
      if (!details.open || box.dataset.loaded) return;
      box.dataset.loaded = '1';
      try {
        const page = await api('GET', `/host_nodes/${enc(h.id)}/instances?limit=200`);
        const items = page.items || [];
        swap(box, items.length
          ? el('ul', { class: 'held' }, items.map((i) => el('li', {},
            `${i.name} · ${i.account_name} · ${i.state}${i.placed ? '' : ` (${t('held_disk_only')})`} · `,
            code(i.id))))
          : el('p', { class: 'hint' }, t('held_none')),
        page.next_cursor ? el('p', { class: 'hint' }, t('held_more', { n: items.length })) : null);
      } catch (e) {
        delete box.dataset.loaded;
        swap(box, el('p', { class: 'error' }, e.message));
      }
    },
  }, el('summary', {}, t('held_show')), box);
  return details;
}

// ------------------------------------------------------------------ account

// The signed-in user's own password: the current one first (the API asks for it, so
// that whoever got hold of a session cannot lock the user out), the new one twice.
function passwordForm() {
  const current = el('input', { type: 'password', id: 'password-current', autocomplete: 'current-password' });
  const fresh = el('input', { type: 'password', id: 'password-new', autocomplete: 'new-password', required: true, minlength: '10' });
  const again = el('input', { type: 'password', id: 'password-again', autocomplete: 'new-password', required: true });
  const form = el('form', { class: 'form', id: 'password-change' },
    el('div', { class: 'grid' },
      field(t('field_current_password'), current, t('hint_current_password')),
      field(t('field_new_password'), fresh, t('hint_new_password')),
      field(t('field_new_password_again'), again)),
    formActions(t('password_change')));
  return asyncForm(form, async () => {
    if (fresh.value !== again.value) throw new Error(t('passwords_differ'));
    await api('PUT', `/users/${enc(app.who.user.id)}/password`,
      compact({ password: fresh.value, current_password: current.value || undefined }));
    form.reset();
    notify('ok', t('password_changed'));
  });
}

// A new token's secret, shown once: it is not kept anywhere the console can read again.
function showTokenSecret(token, secret) {
  const text = el('input', { type: 'text', class: 'mono', readonly: true, id: 'token-secret', 'aria-label': t('token_secret') });
  text.value = secret;
  const copy = el('button', { type: 'button', class: 'primary', onclick: async () => {
    try {
      await navigator.clipboard.writeText(secret);
      notify('ok', t('copied'));
    } catch (_) {
      text.select(); // no clipboard access (e.g. plain http): let the user copy it
    }
  } }, t('copy'));
  const { dlg } = dialog(t('token_secret_title', { name: token.name }), [
    el('p', { class: 'warning', role: 'note' }, t('token_secret_warning')),
    el('p', { class: 'hint' }, t('token_secret_usage')),
    text,
    el('div', { class: 'actions' }, copy),
  ], [el('button', { type: 'submit', value: 'done', class: 'ghost' }, t('token_secret_saved'))], { wide: true });
  dlg.addEventListener('cancel', (e) => e.preventDefault());
  dlg.addEventListener('close', () => { text.value = ''; });
}

const EXPIRIES = [
  { value: '', days: null },
  { value: '1', days: 1 },
  { value: '30', days: 30 },
  { value: '365', days: 365 },
];

function tokenForm(done) {
  const name = input({ required: true, maxlength: '64', id: 'token-name' });
  const expires = select(EXPIRIES.map((e) => ({ value: e.value, label: e.days == null ? t('token_never') : t('token_days', { days: e.days }) })), { id: 'token-expires' });
  const role = select([{ value: '', label: t('token_role_user') }, { value: 'reader', label: t('role_reader') },
    { value: 'member', label: t('role_member') }, { value: 'owner', label: t('role_owner') }], { id: 'token-role' });
  const form = el('form', { class: 'form', id: 'token-create' },
    el('div', { class: 'grid' },
      field(t('field_name'), name, t('hint_token_name')),
      field(t('field_token_expires'), expires),
      field(t('field_token_role'), role, t('hint_token_role'))),
    formActions(t('token_create')));
  return asyncForm(form, async () => {
    const days = EXPIRIES.find((e) => e.value === expires.value).days;
    const expiresAt = days == null ? undefined : new Date(Date.now() + days * 86400000).toISOString();
    const made = await api('POST', '/tokens', compact({ name: val(name), expires_at: expiresAt, role: role.value || undefined }));
    form.reset();
    showTokenSecret(made.token, made.secret);
    done();
  });
}

// An owner gives a user a role in the account (or changes the role it has).
function memberForm(done) {
  const user = input({ required: true, maxlength: '64', id: 'member-user' });
  const role = select([{ value: 'member', label: t('role_member') }, { value: 'reader', label: t('role_reader') },
    { value: 'owner', label: t('role_owner') }], { id: 'member-role' });
  const form = el('form', { class: 'form', id: 'member-add' },
    el('div', { class: 'grid' }, field(t('field_user_name'), user, t('hint_member_user')), field(t('field_role'), role)),
    formActions(t('member_add')));
  return asyncForm(form, async () => {
    const m = await api('POST', `/accounts/${enc(app.who.account.id)}/members`, { user: val(user), role: role.value });
    form.reset();
    notify('ok', t('member_added', { name: m.user_name, role: roleName(m.role) }));
    done();
  });
}

function mountAccount(root) {
  const frame = viewFrame(root, t('nav_account'), t('account_intro'));
  const about = el('div');
  const quotas = el('div');
  const quotaHead = uid('quotas');
  const passwordHead = uid('password');
  const tokens = el('div');
  const tokenHead = uid('tokens');
  const members = el('div');
  const memberAdd = el('div');
  const memberHead = uid('members');
  frame.body.append(about,
    el('section', { class: 'subsection', 'aria-labelledby': quotaHead }, el('h2', { id: quotaHead }, t('quotas')), quotas),
    el('section', { class: 'subsection', 'aria-labelledby': memberHead },
      el('h2', { id: memberHead }, t('members_title')), members, memberAdd),
    el('section', { class: 'subsection', 'aria-labelledby': tokenHead },
      el('h2', { id: tokenHead }, t('tokens_title')), el('p', { class: 'hint' }, t('tokens_intro')), tokens,
      tokenForm(() => refreshView())),
    el('section', { class: 'subsection', 'aria-labelledby': passwordHead },
      el('h2', { id: passwordHead }, t('password_title')), passwordForm()));
  return {
    frame,
    async refresh(fresh) {
      const here = app.who ? app.who.account.id : '';
      const [who, q, toks, people] = await Promise.all([api('GET', '/whoami'), api('GET', '/quotas'), listAll('/tokens'),
        // Every member sees the members; shown as an error note if refused.
        here ? listAll(`/accounts/${enc(here)}/members`).catch((e) => e) : Promise.resolve([])]);
      if (!fresh()) return false;
      setWho(who);
      const now = Date.now();
      const tokenColumns = [
        { label: t('col_name'), cell: (k) => [k.name, k.id === who.token.id ? el('span', { class: 'badge badge-ok' }, t('token_this')) : null] },
        { label: t('col_id'), cell: (k) => code(k.id) },
        ...(who.role === 'owner' ? [{ label: t('col_user'), cell: (k) => code(k.user_id) }] : []),
        { label: t('col_role'), cell: (k) => (k.role ? roleName(k.role) : t('token_role_user')) },
        {
          label: t('col_expires'),
          cell: (k) => (k.expires_at == null ? t('token_never')
            : [fmtTime(k.expires_at), Date.parse(k.expires_at) <= now ? el('span', { class: 'badge badge-bad' }, t('token_expired')) : null]),
        },
        { label: t('col_created'), cell: (k) => fmtTime(k.created_at) },
        {
          label: t('col_actions'),
          cell: (k) => actionsCell(actionButton(t('token_revoke'), `revoke:${k.id}`, async () => {
            const message = k.id === who.token.id ? t('token_revoke_this', { name: k.name }) : t('token_revoke_confirm', { name: k.name });
            if (!(await confirmDialog(t('token_revoke_title'), message, t('token_revoke')))) return;
            try {
              await api('DELETE', `/tokens/${enc(k.id)}`);
              notify('ok', t('token_revoked', { name: k.name }));
            } catch (e) {
              notify('error', errorText(e));
            }
            refreshView();
          }, { danger: true })),
        },
      ];
      swap(tokens, toks.length ? table(tokenColumns, toks, t('tokens_title')) : empty(t('tokens_empty')));
      // The account's members: every member sees them; an owner adds, changes and removes.
      const owner = who.role === 'owner';
      const memberColumns = [
        { label: t('col_user'), cell: (m) => [m.user_name, ' ', code(m.user_id)] },
        { label: t('col_role'), cell: (m) => roleName(m.role) },
        { label: t('col_created'), cell: (m) => fmtTime(m.created_at) },
        ...(owner ? [{
          label: t('col_actions'),
          cell: (m) => actionsCell(actionButton(t('member_remove'), `unmember:${m.user_id}`, async () => {
            if (!(await confirmDialog(t('member_remove_title'), t('member_remove_confirm', { name: m.user_name }), t('member_remove')))) return;
            try {
              await api('DELETE', `/accounts/${enc(who.account.id)}/members/${enc(m.user_id)}`);
              notify('ok', t('member_removed', { name: m.user_name }));
            } catch (e) {
              notify('error', errorText(e));
            }
            refreshView();
          }, { danger: true })),
        }] : []),
      ];
      if (people instanceof Error) swap(members, empty(errorText(people)));
      else if (who.account.id !== here) refreshView(); // switched meanwhile: read the members of this one
      else swap(members, table(memberColumns, people, t('members_title')));
      if (owner && !memberAdd.firstChild) memberAdd.append(memberForm(() => refreshView()));
      if (!owner) memberAdd.replaceChildren();
      swap(about, el('dl', { class: 'facts' },
        el('dt', {}, t('col_user')), el('dd', {}, who.user.name),
        el('dt', {}, t('col_account')), el('dd', {}, who.account.name, ' ', code(who.account.id)),
        el('dt', {}, t('col_role')), el('dd', {}, roleLabel(who)),
        el('dt', {}, t('col_signed_in_with')), el('dd', {}, app.session ? t('signed_in_session', { expires: who.token.expires_at || DASH }) : t('signed_in_token', { name: who.token.name }))));
      const columns = [
        { label: t('col_quota'), cell: (u) => u.key },
        { label: t('col_used'), cell: (u) => String(u.used) },
        { label: t('col_limit'), cell: (u) => (u.limit == null ? t('unlimited') : String(u.limit)) },
        { label: t('col_usage'), cell: (u) => (u.limit == null || u.limit === 0 ? DASH : `${Math.round((100 * u.used) / u.limit)}%`) },
      ];
      swap(quotas, table(columns, q.quotas, t('quotas')));
      return false;
    },
  };
}

function roleName(role) {
  if (role === 'owner') return t('role_owner');
  if (role === 'member') return t('role_member');
  return t('role_reader');
}

function roleLabel(who) {
  return who.admin ? t('role_admin', { role: roleName(who.role) }) : roleName(who.role);
}

// The header: who is signed in, in which account and role; a select of the user's accounts.
function setWho(who) {
  app.who = who;
  const box = $('#who');
  if (!who) {
    box.hidden = true;
    return;
  }
  if (!app.actIn) app.home = who.account.id;
  $('#who-user').textContent = who.user.name;
  $('#who-role').textContent = roleLabel(who);
  const sel = $('#account-select');
  const accounts = who.accounts && who.accounts.length ? [...who.accounts]
    : [{ account_id: who.account.id, account_name: who.account.name, role: who.role }];
  for (const a of [{ account_id: app.home, account_name: who.account.name }, { account_id: who.account.id, account_name: who.account.name }]) {
    if (a.account_id && !accounts.some((m) => m.account_id === a.account_id)) accounts.unshift(a);
  }
  // An admin acts in any account: the others follow the user's own.
  for (const a of (who.admin && app.allAccounts) || []) {
    if (!accounts.some((m) => m.account_id === a.id)) accounts.push({ account_id: a.id, account_name: a.name });
  }
  sel.replaceChildren(...accounts.map((a) => el('option', { value: a.account_id, selected: a.account_id === who.account.id }, a.account_name)));
  sel.value = who.account.id;
  // An API token acts in one account; only a session switches, or an admin acts elsewhere.
  sel.disabled = !(who.admin || app.session) || accounts.length < 2;
  sel.title = app.session || who.admin ? t('account_switch') : t('account_switch_token');
  box.hidden = false;
  if (who.admin && !app.allAccounts) loadAllAccounts();
}

// An admin's select lists every account (read once per sign-in).
async function loadAllAccounts() {
  app.allAccounts = [];
  try {
    const page = await api('GET', '/accounts?limit=1000');
    app.allAccounts = page.items;
  } catch (_) {
    return;
  }
  if (app.who) setWho(app.who);
}

async function loadWho() {
  try {
    setWho(await api('GET', '/whoami'));
  } catch (_) {
    /* a 401 signs out in api() */
  }
}

async function onSwitchAccount(ev) {
  const target = ev.target.value;
  if (!app.who || target === app.who.account.id || app.switching) return;
  const member = (app.who.accounts || []).some((a) => a.account_id === target);
  if (app.who.admin && (target === app.home || !app.session || !member)) {
    await actIn(target === app.home ? '' : target);
    return;
  }
  app.actIn = '';
  ev.target.disabled = true;
  const before = app.token;
  app.switching = true;
  let s;
  try {
    s = await api('POST', '/sessions/switch', { account: target });
  } catch (e) {
    app.switching = false;
    if (e instanceof ApiError && e.status === 401) {
      sessionRefused(before);
      return;
    }
    notify('error', errorText(e));
    if (app.who) setWho(app.who);
    return;
  }
  useSession(s);
  app.switching = false;
  notify('ok', t('account_switched', { account: s.account.name }));
  route();
}

// An admin works in another account without a session of it (X-Vdc-Account); '' goes
// back to the token's own. The event stream follows the account.
async function actIn(account) {
  const before = app.actIn;
  app.actIn = account;
  let who;
  try {
    who = await api('GET', '/whoami');
  } catch (e) {
    app.actIn = before;
    notify('error', errorText(e));
    if (app.who) setWho(app.who);
    return;
  }
  setWho(who);
  stopEvents();
  followEvents();
  notify('ok', t('account_switched', { account: who.account.name }));
  route();
}

function useSession(s) {
  app.actIn = '';
  app.token = s.token;
  app.session = true;
  storageSet(LS_TOKEN, s.token);
  storageSet(LS_SESSION, '1');
  setWho({ user: s.user, account: s.account, role: s.role, admin: s.admin, accounts: s.accounts, token: { id: s.id, name: '', expires_at: s.expires_at } });
}

// ------------------------------------------------------------------ navigation

const VIEWS = [
  { id: 'instances', label: () => t('nav_instances'), mount: mountInstances },
  { id: 'networks', label: () => t('nav_networks'), mount: mountNetworks },
  { id: 'security-groups', label: () => t('nav_security_groups'), mount: mountSecurityGroups },
  { id: 'keypairs', label: () => t('nav_keypairs'), mount: mountKeyPairs },
  { id: 'images', label: () => t('nav_images'), mount: mountImages },
  { id: 'volumes', label: () => t('nav_volumes'), mount: mountVolumes },
  { id: 'floating-ips', label: () => t('nav_floating_ips'), mount: mountFloatingIps },
  { id: 'server-groups', label: () => t('nav_server_groups'), mount: mountServerGroups },
  { id: 'bundles', label: () => t('nav_bundles'), mount: mountBundles },
  { id: 'jobs', label: () => t('nav_jobs'), mount: mountJobs },
  { id: 'hosts', label: () => t('nav_hosts'), mount: mountHosts },
  { id: 'account', label: () => t('nav_account'), mount: mountAccount },
];

function renderTabs() {
  const nav = $('#tabs');
  nav.hidden = false;
  nav.replaceChildren(el('ul', {}, VIEWS.map((v) => el('li', {},
    el('a', { href: `#${v.id}`, 'aria-current': v.id === app.view ? 'page' : null }, v.label())))));
}

function stopAuto() {
  clearTimeout(app.timer);
  app.timer = 0;
  app.refreshWhenVisible = false;
}

function showView(id) {
  const spec = VIEWS.find((v) => v.id === id) || VIEWS[0];
  stopAuto();
  app.gen += 1;
  app.view = spec.id;
  renderTabs();
  const root = $('#view');
  root.replaceChildren();
  root.hidden = false;
  app.ctl = spec.mount(root);
  document.title = `${spec.label()} — ${t('app_title')}`;
  refreshView();
}

async function refreshView() {
  const ctl = app.ctl;
  if (!ctl || !app.token) return;
  followEvents();
  stopAuto();
  app.seq += 1;
  const gen = app.gen;
  const seq = app.seq;
  const fresh = () => gen === app.gen && seq === app.seq;
  let busy = false;
  try {
    busy = await ctl.refresh(fresh);
    if (fresh()) ctl.frame.clearError();
  } catch (e) {
    if (!fresh()) return;
    if (e instanceof ApiError && e.status === 401) return; // already signed out
    ctl.frame.showError(e);
  }
  if (!fresh()) return;
  ctl.frame.setAuto(busy);
  // While the event stream is open, changes arrive as events; polling is the fallback.
  if (busy && !live.connected) {
    app.timer = setTimeout(() => {
      if (document.hidden) app.refreshWhenVisible = true;
      else refreshView();
    }, REFRESH_MS);
  }
}

// ------------------------------------------------------------------ live updates

// The console follows GET /api/v1/events (Server-Sent Events, read with fetch: the token
// goes in the Authorization header, which EventSource cannot send). Any change in the
// account refreshes the view on screen, so nothing polls while the stream is open; when
// it is refused or cut, views with work under way refresh every REFRESH_MS until it is
// back, and it resumes after the last event seen (Last-Event-ID).
const live = { token: '', actIn: '', abort: null, lastId: '', connected: false, pending: 0 };

function followEvents() {
  if (live.abort && live.token === app.token && live.actIn === app.actIn) return;
  stopEvents();
  if (!app.token) return;
  const token = app.token;
  live.actIn = app.actIn;
  const ctl = new AbortController();
  Object.assign(live, { token, abort: ctl, lastId: '' });
  (async () => {
    while (!ctl.signal.aborted && app.token === token) {
      try {
        await readEvents(token, ctl.signal);
      } catch (_) {
        /* cut or refused: tried again below */
      }
      live.connected = false;
      if (ctl.signal.aborted || app.token !== token) return;
      if (app.ctl) refreshView(); // polls again while work is under way
      await new Promise((resolve) => setTimeout(resolve, REFRESH_MS));
    }
  })();
}

function stopEvents() {
  if (live.abort) live.abort.abort();
  Object.assign(live, { token: '', abort: null, connected: false });
}

async function readEvents(token, signal) {
  const headers = { Accept: 'text/event-stream', Authorization: `Bearer ${token}` };
  if (live.actIn) headers['X-Vdc-Account'] = live.actIn;
  if (live.lastId) headers['Last-Event-ID'] = live.lastId;
  const res = await fetch(`${API_BASE}/events?follow=true`, { headers, signal });
  if (res.status === 401) {
    sessionRefused(token);
    return;
  }
  // An ID this site never sent (its database was replaced): follow from now on instead.
  if (res.status === 400 && live.lastId) live.lastId = '';
  if (!res.ok || !res.body) throw new Error(`events: HTTP ${res.status}`);
  live.connected = true;
  // What changed while the stream was away (or before it opened) is read once now.
  scheduleRefresh();
  const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
  let buf = '';
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buf += value.replace(/\r\n?/g, '\n');
    let end;
    while ((end = buf.indexOf('\n\n')) >= 0) {
      const block = buf.slice(0, end);
      buf = buf.slice(end + 2);
      let data = false;
      for (const line of block.split('\n')) {
        if (line.startsWith('id:')) live.lastId = line.slice(3).trim();
        else if (line.startsWith('data:')) data = true;
      }
      if (data) scheduleRefresh(); // keep-alive comments carry none
    }
  }
}

// A burst of events (a create: job, instance, interfaces…) makes one refresh.
function scheduleRefresh() {
  if (live.pending) return;
  live.pending = setTimeout(() => {
    live.pending = 0;
    if (document.hidden) app.refreshWhenVisible = true;
    else refreshView();
  }, 150);
}

function route() {
  if (!app.token) return;
  const id = decodeURIComponent(location.hash.replace(/^#/, ''));
  const known = VIEWS.some((v) => v.id === id);
  if (!known) history.replaceState(null, '', `#${VIEWS[0].id}`);
  showView(known ? id : VIEWS[0].id);
}

// ------------------------------------------------------------------ sign-in

function showServerVersion() {
  const box = $('#server-version');
  box.textContent = app.token && app.info
    ? t('server_version', { version: app.info.server_version, api: app.info.api_version })
    : '';
}

function showSignIn(message) {
  stopAuto();
  app.gen += 1;
  app.ctl = null;
  app.view = null;
  $('#view').hidden = true;
  $('#view').replaceChildren();
  $('#tabs').hidden = true;
  $('#sign-out').hidden = true;
  $('#signin').hidden = false;
  setWho(null);
  const err = $('#signin-error');
  err.textContent = message || '';
  err.hidden = !message;
  document.title = t('app_title');
  showServerVersion();
  showSignInForm(!$('#signin-form').hidden);
}

// The password form, or (`token`) the API token form.
function showSignInForm(token) {
  $('#password-form').hidden = token;
  $('#signin-form').hidden = !token;
  (token ? $('#token-input') : $('#user-input')).focus();
}

async function onPasswordSignIn(ev) {
  ev.preventDefault();
  const userBox = $('#user-input');
  const passBox = $('#password-input');
  const err = $('#signin-error');
  if (!userBox.value.trim() || !passBox.value) {
    err.textContent = t('signin_password_empty');
    err.hidden = false;
    (userBox.value.trim() ? passBox : userBox).focus();
    return;
  }
  const button = ev.target.querySelector('button[type=submit]');
  button.disabled = true;
  try {
    const s = await api('POST', '/sessions', { user: userBox.value.trim(), password: passBox.value }, null);
    passBox.value = '';
    err.hidden = true;
    useSession(s);
    if (!location.hash) history.replaceState(null, '', `#${VIEWS[0].id}`);
    enterConsole();
    $('#main').focus();
  } catch (e) {
    passBox.value = '';
    err.textContent = e instanceof ApiError && e.status === 401 ? t('signin_bad_password')
      : e instanceof ApiError && e.status === 429 ? t('signin_too_many') : errorText(e);
    err.hidden = false;
    passBox.focus();
  } finally {
    button.disabled = false;
  }
}

async function enterConsole() {
  $('#signin').hidden = true;
  $('#sign-out').hidden = false;
  route();
  loadWho();
  try {
    app.info = await api('GET', '');
    showServerVersion();
  } catch (_) {
    /* a 401 signs out in api(); other errors show in the view itself */
  }
}

async function onSignIn(ev) {
  ev.preventDefault();
  const inputBox = $('#token-input');
  const token = inputBox.value.trim();
  const err = $('#signin-error');
  if (!token) {
    err.textContent = t('signin_empty');
    err.hidden = false;
    inputBox.focus();
    return;
  }
  const button = ev.target.querySelector('button[type=submit]');
  button.disabled = true;
  try {
    app.info = await api('GET', '', undefined, token);
    app.token = token;
    app.session = false;
    storageSet(LS_TOKEN, token);
    storageSet(LS_SESSION, null);
    loadWho();
    inputBox.value = '';
    err.hidden = true;
    if (!location.hash) history.replaceState(null, '', `#${VIEWS[0].id}`);
    $('#signin').hidden = true;
    $('#sign-out').hidden = false;
    showServerVersion();
    route();
    $('#main').focus();
  } catch (e) {
    err.textContent = e instanceof ApiError && e.status === 401 ? t('signin_rejected', { message: errorText(e) }) : errorText(e);
    err.hidden = false;
  } finally {
    button.disabled = false;
  }
}

function signOut(message) {
  stopEvents();
  Object.assign(app, { actIn: '', home: '', allAccounts: null });
  app.token = '';
  app.session = false;
  app.info = null;
  storageSet(LS_TOKEN, null);
  storageSet(LS_SESSION, null);
  for (const d of document.querySelectorAll('dialog')) d.close();
  $('#notices').replaceChildren(); // they may name the previous account's resources
  showSignIn(message);
}

// Signing out of a session revokes it; an API token is only forgotten by this browser.
async function onSignOutClick() {
  if (app.session && app.token) {
    try {
      await api('DELETE', '/sessions/current', undefined, app.token);
    } catch (_) {
      /* revoked or expired already: signed out all the same */
    }
  }
  signOut(t('signed_out'));
}

// ------------------------------------------------------------------ start

function boot() {
  app.lang = initialLang();
  applyStaticText();
  document.title = t('app_title');
  $('#lang-select').addEventListener('change', (e) => setLang(e.target.value));
  $('#signin-form').addEventListener('submit', onSignIn);
  $('#password-form').addEventListener('submit', onPasswordSignIn);
  $('#use-token').addEventListener('click', () => showSignInForm(true));
  $('#use-password').addEventListener('click', () => showSignInForm(false));
  $('#account-select').addEventListener('change', onSwitchAccount);
  $('#sign-out').addEventListener('click', onSignOutClick);
  window.addEventListener('hashchange', route);
  document.addEventListener('visibilitychange', () => {
    if (!document.hidden && app.refreshWhenVisible) refreshView();
  });
  const saved = storageGet(LS_TOKEN);
  if (saved) {
    app.token = saved;
    app.session = storageGet(LS_SESSION) === '1';
    enterConsole();
  } else {
    showSignIn();
  }
}

boot();
