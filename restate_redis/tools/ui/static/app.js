// restate-redis UI: services -> objects -> one object's state, over the JSON API in app.py.
// Data is only ever put in the page as text (textContent / text nodes), never as HTML.
"use strict";

const TOKEN_KEY = "restate-redis-token";
let token = sessionStorage.getItem(TOKEN_KEY) || "";

// A #token=... fragment logs in and is then removed from the address bar.
function takeToken() {
  if (!location.hash.startsWith("#token=")) return;
  token = decodeURIComponent(location.hash.slice(7));
  sessionStorage.setItem(TOKEN_KEY, token);
  document.getElementById("token-form").hidden = true;
  history.replaceState(null, "", location.pathname + "#/");
}

// -- DOM helpers ------------------------------------------------------------------------------

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else if (name === "className") node.className = value;
    else if (value === true) node.setAttribute(name, "");
    else if (value !== false && value !== null && value !== undefined) node.setAttribute(name, value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

const view = () => document.getElementById("view");

function show(...nodes) {
  view().replaceChildren(...nodes.filter((n) => n !== null && n !== undefined && n !== false));
}

function message(text, kind, ...extra) {
  const box = document.getElementById("message");
  if (!text) {
    box.hidden = true;
    box.replaceChildren();
    return;
  }
  box.className = kind || "ok";
  box.replaceChildren(document.createTextNode(text), ...extra);
  box.hidden = false;
}

function bytes(n) {
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KiB`;
  return `${(n / 1024 / 1024).toFixed(1)} MiB`;
}

function duration(ms) {
  let s = Math.floor(ms / 1000);
  const parts = [];
  for (const [unit, size] of [["d", 86400], ["h", 3600], ["m", 60]]) {
    if (s >= size) {
      parts.push(`${Math.floor(s / size)}${unit}`);
      s %= size;
    }
  }
  parts.push(`${s}s`);
  return parts.join(" ");
}

const pretty = (value) => JSON.stringify(value, null, 2);

// JSON text -> data, for the API's answers and for what the user types. A number keeps the
// text it was written with wherever a JS number would change it (1.0 would become 1, and
// 2**60 + 1 would be rounded), so a value sent back unchanged is the value that was read.
// NaN, Infinity and 1e999 (Infinity to JS, null once sent) are refused: JSON cannot carry them.
const rawJSON = typeof JSON.rawJSON === "function" ? JSON.rawJSON : null;

function parseJson(text) {
  return JSON.parse(text, (name, value, context) => {
    if (typeof value !== "number") return value;
    const source = context && context.source;
    if (!Number.isFinite(value)) {
      throw new SyntaxError(`${source || value} is not a finite number, which JSON cannot carry`);
    }
    if (rawJSON && typeof source === "string" && JSON.stringify(value) !== source) return rawJSON(source);
    return value;
  });
}

// What the user typed into a text area, as { value }; null, with the error shown, when it is
// not valid JSON (a wrapper, since null is a value one may type).
function typedJson(area) {
  try {
    return { value: parseJson(area.value) };
  } catch (e) {
    message(`Not valid JSON: ${e.message}`, "error");
    return null;
  }
}

const plural = (n, word) => `${n} ${word}${n === 1 ? "" : "s"}`;

// Keys restate-redis did not write are left out of listings; say so, naming a few.
function skippedNote(data) {
  if (!data.skipped) return null;
  const names = (data.skipped_keys || []).join(", ");
  return el("p", { className: "muted skipped", id: "skipped" },
    `Skipped ${plural(data.skipped, "key")} that restate-redis did not write: ${names}${data.skipped > (data.skipped_keys || []).length ? ", …" : ""}`);
}
const q = (params) => new URLSearchParams(params).toString();

// -- the API ------------------------------------------------------------------------------------

class ApiError extends Error {
  constructor(message, status, code) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

// Changes this page has sent and not yet seen answered: the live stream leaves their commits
// to the change's own answer (which reloads the page), rather than report them as news.
let changing = 0;

async function api(method, path, body) {
  if (body === undefined) return request(method, path, body);
  changing++;
  try {
    return await request(method, path, body);
  } finally {
    changing--;
  }
}

async function request(method, path, body) {
  const headers = { Accept: "application/json" };
  if (token) headers.Authorization = `Bearer ${token}`;
  const options = { method, headers, credentials: "same-origin" };
  if (body !== undefined) {
    // JSON and a custom header: a cross-site page cannot send these without a preflight
    headers["Content-Type"] = "application/json";
    headers["X-Requested-By"] = "restate-redis";
    options.body = JSON.stringify(body);
  }
  const response = await fetch(path, options);
  let data;
  try {
    data = parseJson(await response.text());
  } catch (e) {
    data = { error: response.statusText };
  }
  if (response.status === 401) document.getElementById("token-form").hidden = false;
  if (!response.ok) throw new ApiError(data.error || response.statusText, response.status, data.code);
  if (typeof data.namespace === "string") {
    document.getElementById("namespace").textContent = `namespace ${data.namespace}`;
  }
  return data;
}

function failed(error) {
  if (error.code === "version_conflict") {
    message(
      `Conflict: the object changed since you loaded it; nothing was written. ${error.message} `,
      "error",
      el("button", { id: "reload-after-conflict", onclick: () => route() }, "Reload"),
    );
  } else {
    message(`Error: ${error.message}`, "error");
  }
}

// -- views ----------------------------------------------------------------------------------------

function crumbs(service, key) {
  const parts = [el("a", { href: "#/" }, "services")];
  if (service !== undefined) parts.push(el("span", {}, "/"), el("a", { href: `#/s/${encodeURIComponent(service)}` }, service));
  if (key !== undefined) parts.push(el("span", {}, "/"), el("span", {}, key));
  document.getElementById("crumbs").replaceChildren(...parts);
}

function sizeText(n) {
  return n === null || n === undefined ? "unknown" : bytes(n);
}

// "2026-11-02 10:00:01Z" (UTC) from ms since the epoch; "-" when unknown.
function timeText(ms) {
  if (ms === null || ms === undefined) return "-";
  return new Date(ms).toISOString().replace("T", " ").replace(/\.\d+Z$/, "Z");
}

const LOAD_TEXT = { lazy: "loads lazily", near: "near the eager limit", unknown: "size unknown" };

function loadBadge(load) {
  return LOAD_TEXT[load] ? el("span", { className: `badge load ${load}` }, LOAD_TEXT[load]) : null;
}

async function servicesView() {
  crumbs();
  lastTable = null;
  const data = await api("GET", "/api/services");
  const rows = data.services.map((s) => {
    const flags = [];
    if (s.lazy) flags.push(`${s.lazy} load${s.lazy === 1 ? "s" : ""} lazily`);
    if (s.near) flags.push(`${s.near} near the eager limit`);
    if (s.unsized) flags.push(`${plural(s.unsized, "object")} of unknown size`);
    return el("tr", { "data-service": s.name },
      el("td", {}, el("a", { href: `#/s/${encodeURIComponent(s.name)}`, className: "service" }, s.name)),
      el("td", { className: "num objects" }, String(s.objects)),
      el("td", { className: "num keys" }, String(s.keys)),
      el("td", { className: "num size" }, (s.unsized ? "≥ " : "") + bytes(s.bytes)),
      el("td", { className: "flags muted" }, flags.join(", ")));
  });
  const head = el("tr", {}, ["service", "objects", "state keys", "size", ""].map((h) => el("th", {}, h)));
  show(
    el("h2", {}, "Services"),
    rows.length ? el("table", { id: "services" }, el("thead", {}, head), el("tbody", {}, rows))
      : el("p", { className: "muted" }, "No state stored in this namespace."),
    skippedNote(data),
  );
}

// The object table: one row per object, sorted and paginated by the server (/api/table),
// with the state keys the user picked as columns. Its state lives in the address:
// #/s/SERVICE?sort=size&order=desc&offset=50&prefix=ab&col=items&col=count
const PAGE_SIZE = 50;
const SORTABLE = [["key", "key"], ["version", "version"], ["size", "size"], ["keys", "state keys"], ["changed", "last change"]];
let lastTable = null; // service and prefix of the table shown last: paging reuses its sweep

function tableHash(service, params) {
  return `#/s/${encodeURIComponent(service)}?${params}`;
}

async function objectsView(service, params) {
  crumbs(service);
  const sort = SORTABLE.some(([f]) => f === params.get("sort")) ? params.get("sort") : "key";
  const order = params.get("order") === "desc" ? "desc" : "asc";
  const offset = Math.max(0, Number.parseInt(params.get("offset") || "0", 10) || 0);
  const prefix = params.get("prefix") || "";
  const columns = params.getAll("col");
  const same = lastTable && lastTable.service === service && lastTable.prefix === prefix;
  lastTable = { service, prefix };
  const query = new URLSearchParams({ service, prefix, sort, order, offset, limit: PAGE_SIZE });
  for (const c of columns) query.append("column", c);
  if (!same) query.set("fresh", "1");
  const data = await api("GET", `/api/table?${query}`);

  const go = (changes) => {
    const next = new URLSearchParams(params);
    for (const [name, value] of Object.entries(changes)) {
      next.delete(name);
      if (Array.isArray(value)) value.forEach((v) => next.append(name, v));
      else if (value !== null && value !== "") next.set(name, String(value));
    }
    location.hash = tableHash(service, next);
  };

  const header = el("tr", {});
  for (const [field, label] of SORTABLE) {
    const active = sort === field;
    const arrow = active ? (order === "asc" ? " ▲" : " ▼") : "";
    const button = el("button", { className: "sort", "data-sort": field, title: `sort by ${label}` }, label + arrow);
    button.addEventListener("click", () => go({ sort: field, order: active && order === "asc" ? "desc" : "asc", offset: 0 }));
    header.append(el("th", { "data-column": field, "aria-sort": active ? (order === "asc" ? "ascending" : "descending") : "none" }, button));
  }
  columns.forEach((name, i) => {
    const remove = el("button", { className: "remove-column", title: `remove the column ${name}`, "aria-label": `remove the column ${name}` }, "×");
    remove.addEventListener("click", () => go({ col: columns.filter((_, j) => j !== i) }));
    header.append(el("th", { className: "value-column", "data-state-key": name }, el("span", { className: "column-name" }, name), " ", remove));
  });

  const rows = data.objects.map((o) => {
    const cells = [
      el("td", { className: "key" },
        el("a", { href: `#/s/${encodeURIComponent(service)}/o/${encodeURIComponent(o.key)}`, className: "object" }, o.key === "" ? "(empty key)" : o.key),
        o.workflow_status ? el("span", { className: `badge ${o.workflow_status}` }, `workflow ${o.workflow_status}`) : null,
        o.retention_ms !== null ? el("span", { className: "muted retention" }, ` expires in ${duration(o.retention_ms)}`) : null),
      el("td", { className: "num version" }, String(o.version)),
      el("td", { className: "num size" }, sizeText(o.size), loadBadge(o.load)),
      el("td", { className: "num keys" }, String(o.keys)),
      el("td", { className: "changed" }, timeText(o.changed_ms)),
    ];
    o.values.forEach((cell, i) => {
      let content;
      if (cell === null) content = el("span", { className: "muted absent" }, "—");
      else if (cell.preview === null) content = el("span", { className: "muted too-large" }, `${bytes(cell.size)}, too large to preview`);
      else content = el("code", { className: "preview" }, cell.preview + (cell.truncated ? "…" : ""));
      cells.push(el("td", { className: "value", "data-state-key": columns[i] }, content));
    });
    return el("tr", { "data-key": o.key }, cells);
  });

  const search = el("input", { type: "text", id: "prefix", placeholder: "key prefix", "aria-label": "key prefix" });
  search.value = prefix;
  const searchForm = el("form", { className: "toolbar-part", onsubmit: (e) => {
    e.preventDefault();
    go({ prefix: search.value, offset: 0 });
  } }, search, el("button", { type: "submit" }, "Search"));
  const column = el("input", { type: "text", id: "column-name", placeholder: "state key", "aria-label": "state key to show as a column" });
  const columnForm = el("form", { className: "toolbar-part", onsubmit: (e) => {
    e.preventDefault();
    if (column.value !== "" && !columns.includes(column.value)) go({ col: [...columns, column.value] });
  } }, column, el("button", { type: "submit", id: "add-column" }, "Show as column"));
  const reload = el("button", { id: "reload-table", onclick: () => { lastTable = null; route(); } }, "Reload");

  const shownTo = offset + data.objects.length;
  const info = data.total === 0 ? "No objects." : `${offset + 1} to ${shownTo} of ${plural(data.total, "object")}`;
  const partial = data.complete ? "" : ` (sorted among the first ${data.total} found: narrow with a key prefix)`;
  const prev = el("button", { id: "prev", disabled: offset === 0 }, "Previous");
  prev.addEventListener("click", () => go({ offset: Math.max(0, offset - PAGE_SIZE) }));
  const next = el("button", { id: "next", disabled: shownTo >= data.total }, "Next");
  next.addEventListener("click", () => go({ offset: offset + PAGE_SIZE }));

  const table = el("table", { id: "objects", className: "objects" }, el("thead", {}, header), el("tbody", {}, rows));
  show(el("h2", {}, service),
    el("div", { className: "toolbar" }, searchForm, columnForm, reload),
    data.objects.length ? table : el("p", { className: "muted", id: "no-objects" }, prefix ? `No object key starts with ${prefix}.` : "No objects."),
    el("div", { className: "pager" }, prev, el("span", { id: "page-info", className: "muted" }, info + partial), next),
    skippedNote(data));
}

function valueCell(service, key, entry) {
  if (entry.sealed) {
    // Encrypted under a key this UI was not given: never its ciphertext, and not editable.
    return el("td", { className: "value sealed", title: entry.sealed },
      el("span", { className: "badge encrypted" }, "encrypted"),
      ` under key ${entry.encrypted}: start the UI with RESTATE_REDIS_KEYS holding that key to read or change it.`);
  }
  if (!entry.truncated) return el("td", { className: "value" }, el("pre", { className: "value" }, pretty(entry.value)));
  const href = `/api/value?${q({ service, key, name: entry.name })}`;
  const link = el("a", { href, download: `${entry.name}.json`, className: "download" }, "download the whole value");
  if (token) {
    link.addEventListener("click", async (e) => {
      e.preventDefault();
      const response = await fetch(href, { headers: { Authorization: `Bearer ${token}` } });
      const url = URL.createObjectURL(await response.blob());
      el("a", { href: url, download: `${entry.name}.json` }).click();
      setTimeout(() => URL.revokeObjectURL(url), 10000);
    });
  }
  return el("td", { className: "value" },
    el("pre", { className: "value preview" }, `${entry.preview}…`),
    el("div", { className: "truncated" }, `Preview of a ${bytes(entry.size)} value. `, link));
}

async function stateView(service, key) {
  crumbs(service, key);
  lastTable = null; // back in the table, it sweeps again: this page may change the object
  const data = await api("GET", `/api/state?${q({ service, key })}`);
  const version = data.version;
  // not every key on the page (large values, or more keys than one answer holds)
  const truncated = data.keys.some((k) => k.truncated) || data.next_offset !== null;

  const info = [`version ${version}`, data.kind];
  if (!data.exists) info.push("no state stored");
  const infoLine = el("div", { className: "info", id: "info" }, info.join(" · "),
    data.workflow_status ? el("span", { className: `badge ${data.workflow_status}`, id: "workflow-status" }, `workflow ${data.workflow_status}`) : null,
    data.retention_ms !== null ? el("span", { id: "retention" }, ` · state expires in ${duration(data.retention_ms)}`) : null);

  const done = (text) => (result) => {
    message(`${text} (version ${result.version})`, "ok");
    route(true);
  };

  function rowFor(entry) {
    const row = el("tr", { "data-key": entry.name });
    const cell = valueCell(service, key, entry);
    const sealedTitle = entry.sealed ? "encrypted under a key this UI does not have" : null;
    const edit = el("button", { className: "edit", disabled: entry.truncated || Boolean(entry.sealed), title: entry.truncated ? "too large to edit here: use restate-redis kv edit" : sealedTitle }, "Edit");
    const del = el("button", { className: "danger delete" }, "Delete");
    edit.addEventListener("click", () => {
      const area = el("textarea", { className: "editor", "aria-label": `value of ${entry.name}` });
      area.value = pretty(entry.value);
      const save = el("button", { className: "primary save" }, "Save");
      save.addEventListener("click", () => {
        const typed = typedJson(area);
        if (typed) {
          api("PUT", "/api/value", { service, key, name: entry.name, value: typed.value, version })
            .then(done(`Saved ${entry.name}`)).catch(failed);
        }
      });
      const cancel = el("button", { onclick: () => row.replaceChild(valueCell(service, key, entry), editorCell) }, "Cancel");
      const editorCell = el("td", { className: "value" }, area, save, cancel);
      row.replaceChild(editorCell, row.children[2]);
      area.focus();
    });
    del.addEventListener("click", () => {
      if (del.dataset.armed !== "1") {
        del.dataset.armed = "1";
        del.textContent = "Really delete?";
        return;
      }
      api("DELETE", "/api/value", { service, key, name: entry.name, version })
        .then(done(`Deleted ${entry.name}`)).catch(failed);
    });
    const size = el("td", { className: "size" }, bytes(entry.size),
      entry.encrypted && !entry.sealed ? el("div", { className: "muted key-id" }, `encrypted, key ${entry.encrypted}`) : null);
    row.append(el("td", { className: "name" }, entry.name), size, cell,
      data.expiring ? el("td", { className: "expires" }, entry.ttl_ms === null ? "" : duration(entry.ttl_ms)) : null,
      el("td", { className: "actions" }, edit, del));
    return row;
  }
  const rows = data.keys.map(rowFor);

  const panel = el("div", { id: "panel" });

  function addKey() {
    const name = el("input", { type: "text", id: "new-name", placeholder: "state key", "aria-label": "new state key" });
    const area = el("textarea", { id: "new-value", "aria-label": "new value (JSON)" });
    area.value = "null";
    const save = el("button", { className: "primary", id: "add-save", onclick: () => {
      const typed = typedJson(area);
      if (typed) {
        api("PUT", "/api/value", { service, key, name: name.value, value: typed.value, version })
          .then(done(`Set ${name.value}`)).catch(failed);
      }
    } }, "Set");
    panel.replaceChildren(el("div", { className: "panel" }, el("h3", {}, "Add or set a key"), name, area, save));
  }

  function replaceAll() {
    // no prototype: a state key named __proto__ or constructor is an ordinary key here
    const doc = Object.create(null);
    for (const entry of data.keys) doc[entry.name] = entry.value;
    const area = el("textarea", { id: "state-editor", "aria-label": "the whole state (JSON)", rows: 16 });
    area.value = pretty(doc);
    const save = el("button", { className: "primary", id: "replace-save", onclick: () => {
      const typed = typedJson(area);
      if (typed) {
        api("PUT", "/api/state", { service, key, state: typed.value, version })
          .then(done("Replaced the state")).catch(failed);
      }
    } }, "Replace the whole state");
    panel.replaceChildren(el("div", { className: "panel" },
      el("h3", {}, "Replace the whole state"),
      el("p", { className: "muted" }, "One JSON object {state key: value}; keys left out are cleared."), area, save));
  }

  function clearAll() {
    const input = el("input", { type: "text", id: "confirm-clear", autocomplete: "off", "aria-label": "type delete to confirm" });
    const go = el("button", { className: "danger", id: "clear-all-confirm", disabled: true }, "Clear all state");
    input.addEventListener("input", () => { go.disabled = input.value !== "delete"; });
    go.addEventListener("click", () => {
      api("DELETE", "/api/state", { service, key, version, confirm: input.value })
        .then(done("Cleared all state")).catch(failed);
    });
    panel.replaceChildren(el("div", { className: "panel" },
      el("p", {}, `Every state key of ${service}/${key} will be deleted. Type "delete" to confirm: `),
      input, go));
  }

  const toolbar = el("div", { className: "toolbar" },
    el("button", { id: "reload", onclick: () => { message(""); route(true); } }, "Reload"),
    el("button", { id: "add-key", onclick: addKey }, "Add key"),
    el("button", { id: "replace-state", onclick: replaceAll, disabled: truncated, title: truncated ? "holds values too large to edit here: use restate-redis kv edit" : null }, "Replace whole state"),
    el("button", { className: "danger", id: "clear-all", onclick: clearAll, disabled: !data.keys.length }, "Clear all"));

  const table = el("table", { id: "state" },
    el("thead", {}, el("tr", {}, el("th", {}, "key"), el("th", {}, "size"), el("th", {}, "value"),
      data.expiring ? el("th", { title: "time left until the key expires on its own" }, "expires in") : null, el("th", {}, ""))),
    el("tbody", {}, rows));
  const note = el("div", { className: "muted note" },
    "Changes take the object's lease: they wait for a running handler to finish, and are refused if the object changed since this page loaded it.");

  // One answer holds what fits in the UI's response budget; the rest comes page by page.
  let nextOffset = data.next_offset;
  const shown = el("div", { className: "muted", id: "keys-shown" });
  const moreKeys = el("button", { id: "more-keys" }, "More keys");
  const tbody = table.querySelector("tbody");
  function paging() {
    const count = tbody.children.length;
    shown.textContent = nextOffset === null ? "" : `Showing ${count} of ${plural(data.total_keys, "key")}.`;
    moreKeys.hidden = nextOffset === null;
  }
  moreKeys.addEventListener("click", async () => {
    try {
      const page = await api("GET", `/api/state?${q({ service, key, offset: nextOffset })}`);
      if (page.version !== version) {
        message("The object changed since this page loaded it: reloading.", "error");
        route(true);
        return;
      }
      tbody.append(...page.keys.map(rowFor));
      nextOffset = page.next_offset;
      paging();
    } catch (error) {
      failed(error);
    }
  });
  paging();
  const historyBox = el("section", { id: "history", "aria-label": "history" }, el("h3", {}, "History"));
  show(el("h2", { id: "title" }, `${service} / ${key}`), infoLine, toolbar, panel,
    rows.length ? table : el("p", { className: "muted", id: "empty" }, "No state."), shown, moreKeys, note,
    historyBox);
  view().dataset.version = String(version);
  await historyPanel(service, key, version, historyBox, panel, done);
  watchObject(service, key, version, panel);
}

// -- history ------------------------------------------------------------------------------------

const HISTORY_LIMIT = 100;

// One side of a change as text: the value as JSON, or what stands for it.
function sideText(side) {
  if (side.absent) return null;
  if (side.not_kept) return undefined;
  if (side.truncated) return `${side.preview}…`;
  return pretty(side.value);
}

// A line diff of two texts (longest common subsequence of their lines): [[" "|"-"|"+", line]].
const DIFF_MAX_LINES = 400;
function diffLines(before, after) {
  const a = before === null ? [] : before.split("\n");
  const b = after === null ? [] : after.split("\n");
  if (a.length > DIFF_MAX_LINES || b.length > DIFF_MAX_LINES) {
    return [...a.map((l) => ["-", l]), ...b.map((l) => ["+", l])];
  }
  const common = Array.from({ length: a.length + 1 }, () => new Uint32Array(b.length + 1));
  for (let i = a.length - 1; i >= 0; i--) {
    for (let j = b.length - 1; j >= 0; j--) {
      common[i][j] = a[i] === b[j] ? common[i + 1][j + 1] + 1 : Math.max(common[i + 1][j], common[i][j + 1]);
    }
  }
  const out = [];
  let i = 0;
  let j = 0;
  while (i < a.length || j < b.length) {
    if (i < a.length && j < b.length && a[i] === b[j]) {
      out.push([" ", a[i++]]);
      j++;
    } else if (j < b.length && (i === a.length || common[i][j + 1] >= common[i + 1][j])) {
      out.push(["+", b[j++]]);
    } else {
      out.push(["-", a[i++]]);
    }
  }
  return out;
}

function changeRow(change) {
  const before = sideText(change.old);
  const after = sideText(change.new);
  let diff;
  if (before === undefined || after === undefined) {
    diff = el("span", { className: "muted not-kept" }, "values not kept (the entry was over the history's max_entry_bytes)");
  } else {
    const lines = diffLines(before, after).map(([mark, line]) =>
      el("span", { className: mark === "+" ? "ins" : mark === "-" ? "del" : "same" }, `${mark} ${line}`));
    diff = el("pre", { className: "diff" }, lines);
  }
  // a key the commit added (no old value) or removed (no new value)
  const what = before === null ? "added" : after === null ? "removed" : null;
  return el("tr", { className: "change", "data-key": change.name },
    el("td", { className: "name" }, change.name, what ? el("div", { className: `muted ${what}` }, what) : null),
    el("td", { className: "diff" }, diff));
}

async function historyPanel(service, key, version, box, panel, done) {
  let data;
  try {
    data = await api("GET", `/api/history?${q({ service, key, limit: HISTORY_LIMIT })}`);
  } catch (error) {
    box.append(el("p", { className: "error", id: "history-error" }, `Could not load the history: ${error.message}`));
    return;
  }
  if (!data.kept) {
    box.append(el("p", { className: "muted", id: "no-history" },
      "No history is kept for this object: its workers' store keeps one with history=History(...). " +
      "Without it this page does not refresh by itself when the object changes."));
    return;
  }
  function confirmRestore(entry) {
    const yes = el("button", { className: "danger", id: "restore-confirm" }, `Restore version ${entry.version}`);
    const no = el("button", { id: "restore-cancel", onclick: () => { panel.replaceChildren(); message("Restore cancelled: nothing was written.", "ok"); } }, "Cancel");
    yes.addEventListener("click", () => {
      yes.disabled = true;
      api("POST", "/api/restore", { service, key, to_version: entry.version, version, confirm: "restore" })
        .then(done(`Restored version ${entry.version}`)).catch((error) => { panel.replaceChildren(); failed(error); });
    });
    panel.replaceChildren(el("div", { className: "panel", id: "restore-panel" },
      el("p", {}, `Put ${service}/${key} back to the state of version ${entry.version}? ` +
        `It is written as a new commit (after version ${version}), which can itself be undone.`),
      yes, no));
    panel.scrollIntoView({ block: "nearest" });
  }
  const items = data.entries.map((entry) => {
    const head = el("div", { className: "entry-head" },
      el("strong", { className: "entry-version" }, `version ${entry.version}`),
      el("span", { className: "muted" }, ` · ${entry.at.replace("T", " ")} · `),
      el("span", { className: `badge origin ${entry.origin}` }, entry.origin),
      entry.commit_id !== null ? el("span", { className: "muted commit-id" }, ` commit ${entry.commit_id}`) : null,
      entry.cleared_all ? el("span", { className: "badge cleared" }, "cleared all") : null,
      entry.version === data.version ? el("span", { className: "badge current" }, "current") : null,
      entry.restorable ? el("button", { className: "restore", onclick: () => confirmRestore(entry) }, "Restore") : null);
    const changes = entry.changes.length
      ? el("table", { className: "changes" }, el("tbody", {}, entry.changes.map(changeRow)))
      : el("p", { className: "muted" }, "No state key changed.");
    return el("li", { className: "entry", "data-version": String(entry.version) }, head, changes);
  });
  const reach = data.restorable_from === null ? "" : ` A restore reaches back to version ${data.restorable_from}.`;
  box.append(
    el("p", { className: "muted", id: "history-info" },
      (data.entries.length >= HISTORY_LIMIT ? `The last ${HISTORY_LIMIT} versions, newest first.` : "Every version kept, newest first.") + reach),
    el("ul", { className: "list history", id: "history-entries" }, items));
}

// The open object page follows the object's commits (Server-Sent Events from /api/watch)
// and shows each new version as it lands; not while the user is editing (that would throw the
// edit away): then it says so and offers a reload.
let live = null;

function stopWatching() {
  if (live) live.close();
  live = null;
}

function watchObject(service, key, version, panel) {
  stopWatching();
  const params = { service, key, since: version };
  if (token) params.token = token; // an EventSource sends no headers: the token goes in the query
  const source = new EventSource(`/api/watch?${q(params)}`);
  live = source;
  source.addEventListener("entry", (event) => {
    const entry = parseJson(event.data);
    if (source !== live || changing > 0 || entry.version <= Number(view().dataset.version)) return;
    const editing = panel.children.length > 0 || view().querySelector("textarea.editor, button.delete[data-armed='1']");
    if (editing) {
      message(`The object changed (version ${entry.version}, by ${entry.origin}) while you were editing; saving now would conflict. `,
        "error", el("button", { id: "reload-after-change", onclick: () => route() }, "Reload"));
      return;
    }
    message(`Version ${entry.version} (${entry.origin}) arrived: shown below.`, "ok");
    route(true);
  });
  source.addEventListener("failure", (event) => {
    stopWatching();
    message(`Live updates stopped: ${parseJson(event.data).error}`, "error");
  });
}

// -- routing ---------------------------------------------------------------------------------------

async function route(keepMessage) {
  takeToken();
  stopWatching(); // an object page opens its own again
  if (!keepMessage) message("");
  // names are encoded (encodeURIComponent), so the first "?" starts the table's parameters
  const [path, search] = location.hash.replace(/^#\/?/, "").split(/\?(.*)/s);
  const parts = path.split("/");
  try {
    if (parts[0] === "s" && parts.length >= 4 && parts[2] === "o") {
      await stateView(decodeURIComponent(parts[1]), decodeURIComponent(parts.slice(3).join("/")));
    } else if (parts[0] === "s" && parts.length >= 2) {
      await objectsView(decodeURIComponent(parts[1]), new URLSearchParams(search || ""));
    } else {
      await servicesView();
    }
  } catch (error) {
    show(el("p", { className: "muted" }, "Could not load this page."));
    failed(error);
  }
}

document.getElementById("token-form").addEventListener("submit", (e) => {
  e.preventDefault();
  token = document.getElementById("token-input").value;
  sessionStorage.setItem(TOKEN_KEY, token);
  document.getElementById("token-form").hidden = true;
  route();
});
window.addEventListener("hashchange", () => route());
route();
