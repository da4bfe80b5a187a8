// The dashboard: a runs list with a start-a-run form (`#/`) and a live run page (`#/runs/<id>`).
// Everything comes from the public REST API under v1/ and the run's Server-Sent Events stream.

import { api, ApiError, forgetToken, setTokenPrompt, storedToken } from "./api.js";
import { Chart, formatNumber } from "./charts.js";
import { describeError, fieldLabel, placeError } from "./configerrors.js";

const ACTIVE = new Set(["pending", "running"]);
const LIST_POLL_MS = 2000;

// ---- small DOM helpers ---------------------------------------------------------------------------

function h(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v == null || v === false) continue;
    if (k === "class") node.className = v;
    else if (k === "dataset") Object.assign(node.dataset, v);
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c == null || c === false) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

const view = () => document.getElementById("view");

function seconds(t) {
  if (t == null) return null;
  if (typeof t === "number") return t > 1e12 ? t / 1000 : t; // epoch seconds (or milliseconds)
  const ms = Date.parse(t);
  return Number.isNaN(ms) ? null : ms / 1000;
}

function formatTime(t) {
  const s = seconds(t);
  if (s == null) return "–";
  const d = new Date(s * 1000);
  const pad = (n) => String(n).padStart(2, "0");
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(
    d.getMinutes(),
  )}:${pad(d.getSeconds())}`;
}

function formatDuration(run) {
  const start = seconds(run.started_at);
  if (start == null) return "–";
  const end = seconds(run.finished_at) ?? Date.now() / 1000;
  let s = Math.max(0, Math.round(end - start));
  const hours = Math.floor(s / 3600);
  const minutes = Math.floor((s % 3600) / 60);
  s %= 60;
  if (hours) return `${hours}h ${String(minutes).padStart(2, "0")}m`;
  if (minutes) return `${minutes}m ${String(s).padStart(2, "0")}s`;
  return `${s}s`;
}

function statusBadge(status) {
  return h("span", { class: `status status-${status}`, dataset: { status } }, status);
}

function errorText(err) {
  if (err instanceof ApiError) {
    if (Array.isArray(err.detail)) return err.detail.map(describeError).join("; ");
    return `${err.status}: ${typeof err.detail === "string" ? err.detail : JSON.stringify(err.detail)}`;
  }
  return String(err && err.message ? err.message : err);
}

function flash(message, kind = "info") {
  const box = document.getElementById("flash");
  box.replaceChildren(h("div", { class: `flash flash-${kind}` }, message));
}

/** A metric record as a flat object: the API sends `{step, source, key: value...}` (or nests `metrics`). */
function flatRecord(record) {
  if (record && typeof record.metrics === "object" && record.metrics !== null) {
    return { ...record.metrics, step: record.step, source: record.source };
  }
  return record;
}

/** A number from the first of `keys` present in `row`. */
const first =
  (...keys) =>
  (row) => {
    for (const k of keys) {
      const v = row[k];
      if (typeof v === "number" && Number.isFinite(v)) return v;
    }
    return undefined;
  };

/** The sum of whichever of `keys` are present; else the fallback accessor. */
const sumOf =
  (keys, fallback = () => undefined) =>
  (row) => {
    let total;
    for (const k of keys) {
      const v = row[k];
      if (typeof v === "number" && Number.isFinite(v)) total = (total ?? 0) + v;
    }
    return total ?? fallback(row);
  };

const CHARTS = [
  {
    id: "reward",
    title: "Reward and accuracy",
    series: [
      { label: "reward", color: "#2563eb", value: first("train/reward", "train/reward_mean") },
      { label: "train accuracy", color: "#93c5fd", value: first("train/accuracy") },
      { label: "val accuracy", color: "#ea580c", value: first("val/accuracy", "validation/accuracy") },
    ],
  },
  {
    id: "response_length",
    title: "Response length",
    unit: "tokens",
    series: [
      { label: "train", color: "#7c3aed", value: first("train/response_length", "train/response_length_mean") },
      { label: "val", color: "#c4b5fd", value: first("val/response_length") },
    ],
  },
  {
    id: "entropy",
    title: "Entropy",
    series: [{ label: "entropy", color: "#0d9488", value: first("train/entropy", "train/entropy_mean") }],
  },
  {
    id: "clip",
    yMin: 0,
    title: "Clip fractions",
    series: [
      { label: "high", color: "#dc2626", value: first("train/clip_high_frac") },
      { label: "low", color: "#2563eb", value: first("train/clip_low_frac") },
      { label: "dual", color: "#a16207", value: first("train/clip_dual_frac", "train/dual_clip_frac") },
    ],
  },
  {
    id: "groups_kept",
    title: "Groups kept by dynamic sampling",
    yMin: 0,
    series: [{ label: "kept", color: "#16a34a", value: first("train/groups_kept_frac", "train/kept_frac") }],
  },
  {
    id: "staleness",
    yMin: 0,
    title: "Staleness",
    unit: "policy versions",
    series: [{ label: "staleness", color: "#9333ea", value: first("train/staleness", "train/staleness_mean") }],
  },
  {
    id: "throughput",
    yMin: 0,
    title: "Throughput",
    unit: "tokens/s",
    series: [
      { label: "generation", color: "#0891b2", value: first("gen/tokens_per_s", "rollout/tokens_per_s") },
      { label: "training", color: "#f59e0b", value: first("train/tokens_per_s") },
    ],
  },
  {
    id: "step_time",
    title: "Step time split",
    unit: "s",
    stacked: true,
    series: [
      { label: "generation", color: "#38bdf8", value: first("time/generate", "time/generation") },
      { label: "reward", color: "#a3e635", value: first("time/reward") },
      {
        label: "training",
        color: "#fb923c",
        value: sumOf(["time/forward", "time/backward", "time/optimizer"], first("time/train_step", "time/train")),
      },
      {
        label: "weight sync",
        color: "#f472b6",
        value: sumOf(["time/gather", "time/publish"], first("time/weight_sync", "time/weights")),
      },
    ],
  },
];

// ---- the API token --------------------------------------------------------------------------------

function askForToken(reason) {
  const dialog = document.getElementById("token-dialog");
  const input = document.getElementById("token-input");
  document.getElementById("token-reason").textContent = reason;
  input.value = "";
  dialog.returnValue = "";
  dialog.showModal();
  input.focus();
  return new Promise((resolve) => {
    dialog.addEventListener(
      "close",
      () => {
        resolve(dialog.returnValue === "save" && input.value.trim() ? input.value.trim() : null);
        renderTokenState();
      },
      { once: true },
    );
  });
}

function renderTokenState() {
  const button = document.getElementById("token-button");
  button.textContent = storedToken() ? "API token ✓" : "API token";
}

// ---- runs list ------------------------------------------------------------------------------------

let pageTimer = null;

function runRow(run, highlight) {
  const m = run.latest_metrics || {};
  const reward = first("train/reward")(m);
  const valAcc = first("val/accuracy")(m);
  return h(
    "tr",
    { dataset: { runId: run.id }, class: run.id === highlight ? "highlight" : null },
    h("td", {}, h("a", { href: `#/runs/${encodeURIComponent(run.id)}` }, run.name || run.id), h("small", {}, run.id)),
    h("td", {}, statusBadge(run.status)),
    h("td", { class: "num", dataset: { col: "step" } }, run.step ?? "–"),
    h("td", { class: "num" }, run.policy_version ?? "–"),
    h("td", { class: "num" }, formatNumber(reward)),
    h("td", { class: "num" }, formatNumber(valAcc)),
    h("td", {}, formatTime(run.started_at)),
    h("td", { class: "num" }, formatDuration(run)),
  );
}

async function refreshList(tbody, highlight) {
  try {
    const runs = await api.listRuns();
    runs.sort((a, b) => (seconds(b.created_at) ?? 0) - (seconds(a.created_at) ?? 0));
    tbody.replaceChildren(
      ...(runs.length
        ? runs.map((r) => runRow(r, highlight))
        : [h("tr", {}, h("td", { colspan: 8, class: "empty" }, "No runs yet."))]),
    );
    document.getElementById("list-error").textContent = "";
  } catch (err) {
    document.getElementById("list-error").textContent = `Could not load runs: ${errorText(err)}`;
  }
}

function newRunForm(onCreated) {
  const errors = [];
  const name = h("input", { id: "run-name", name: "name", placeholder: "optional", autocomplete: "off" });
  const nameError = h("div", { class: "field-error", id: "run-name-error" });
  const yaml = h("textarea", {
    id: "config-yaml",
    name: "config_yaml",
    spellcheck: "false",
    rows: 18,
    placeholder: "policy:\n  model_name: Qwen/Qwen2.5-1.5B-Instruct\ngrpo:\n  max_num_steps: 100\n...",
  });
  const gutter = h("div", { class: "gutter", "aria-hidden": "true" });
  const marks = h("div", { class: "marks", "aria-hidden": "true" });
  const overrides = h("textarea", {
    id: "overrides",
    name: "overrides",
    spellcheck: "false",
    rows: 3,
    placeholder: "one per line, e.g. grpo.max_num_steps=20",
  });
  const overridesError = h("div", { class: "field-error", id: "overrides-error" });
  const list = h("ul", { class: "error-list", id: "config-errors" });
  const submit = h("button", { type: "submit", class: "primary", id: "start-run" }, "Start run");

  function render() {
    const lines = yaml.value.split("\n");
    const placed = errors.map((e) => ({ error: e, where: placeError(e, yaml.value, overrides.value) }));
    const byLine = new Map();
    for (const p of placed) {
      if (p.where.field !== "config") continue;
      const line = p.where.line ?? 0;
      if (!byLine.has(line)) byLine.set(line, []);
      byLine.get(line).push(p);
    }
    gutter.replaceChildren(
      ...lines.map((_, i) => h("div", { class: byLine.has(i) ? "err" : null }, byLine.has(i) ? `⚠ ${i + 1}` : i + 1)),
    );
    marks.replaceChildren(
      ...[...byLine.entries()].map(([line, ps]) =>
        h(
          "div",
          { class: "mark", style: `top: calc(${line} * var(--line-height))`, dataset: { line: line + 1 } },
          h("span", {}, ps.map((p) => describeError(p.error)).join("; ")),
        ),
      ),
    );
    nameError.textContent = placed
      .filter((p) => p.where.field === "name")
      .map((p) => p.error.msg)
      .join("; ");
    overridesError.textContent = placed
      .filter((p) => p.where.field === "overrides")
      .map((p) => (p.where.line != null ? `line ${p.where.line + 1}: ` : "") + describeError(p.error))
      .join("; ");
    list.replaceChildren(
      ...placed.map((p) => {
        const where =
          p.where.field === "config" && p.where.line != null ? `line ${p.where.line + 1}` : p.where.field;
        return h(
          "li",
          {
            dataset: { field: fieldLabel(p.error), line: p.where.line != null ? p.where.line + 1 : "" },
            onclick: () => p.where.field === "config" && p.where.line != null && selectLine(p.where.line),
          },
          h("code", {}, fieldLabel(p.error)),
          ` (${where}): ${describeError(p.error)}`,
        );
      }),
    );
    syncScroll();
  }

  function selectLine(line) {
    const lines = yaml.value.split("\n");
    const start = lines.slice(0, line).reduce((n, l) => n + l.length + 1, 0);
    yaml.focus();
    yaml.setSelectionRange(start, start + lines[line].length);
  }

  function syncScroll() {
    gutter.style.transform = `translateY(${-yaml.scrollTop}px)`;
    marks.style.transform = `translateY(${-yaml.scrollTop}px)`;
  }

  yaml.addEventListener("input", render);
  overrides.addEventListener("input", render);
  yaml.addEventListener("scroll", syncScroll);

  const form = h(
    "form",
    { id: "new-run-form", novalidate: true },
    h("label", { for: "run-name" }, "Name"),
    h("div", {}, name, nameError),
    h("label", { for: "config-yaml" }, "Config (YAML)"),
    h("div", {}, h("div", { class: "editor" }, h("div", { class: "gutter-box" }, gutter), h("div", { class: "text-box" }, yaml, marks)), list),
    h("label", { for: "overrides" }, "Overrides"),
    h("div", {}, overrides, overridesError),
    h("div", { class: "submit-row" }, submit, h("span", { id: "form-status", class: "form-status" })),
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    errors.length = 0;
    render();
    const status = document.getElementById("form-status");
    const payload = {
      config_yaml: yaml.value,
      overrides: overrides.value
        .split("\n")
        .map((l) => l.trim())
        .filter(Boolean),
    };
    if (name.value.trim()) payload.name = name.value.trim();
    submit.disabled = true;
    status.textContent = "Submitting…";
    try {
      const run = await api.startRun(payload);
      status.textContent = "";
      onCreated(run);
    } catch (err) {
      if (err instanceof ApiError && err.status === 422 && Array.isArray(err.detail)) {
        errors.push(...err.detail);
        status.textContent = `The config has ${err.detail.length} error${err.detail.length === 1 ? "" : "s"}.`;
      } else if (err instanceof ApiError && err.status === 422) {
        errors.push({ loc: ["body", "config_yaml"], msg: String(err.detail) });
        status.textContent = "The config was rejected.";
      } else {
        status.textContent = `Could not start the run: ${errorText(err)}`;
      }
      render();
    } finally {
      submit.disabled = false;
    }
  });
  render();
  return form;
}

function showList() {
  const tbody = h("tbody", { id: "runs-body" });
  let highlight = null;
  const details = h(
    "details",
    { id: "new-run", open: location.hash === "#/new" },
    h("summary", { id: "new-run-toggle" }, "Start a run"),
    newRunForm((run) => {
      highlight = run.id;
      flash(h("span", {}, "Started run ", h("a", { href: `#/runs/${encodeURIComponent(run.id)}` }, run.name || run.id), "."));
      details.open = false;
      refreshList(tbody, highlight);
    }),
  );
  view().replaceChildren(
    h("h1", {}, "Runs"),
    details,
    h("div", { id: "list-error", class: "error" }),
    h(
      "table",
      { id: "runs", class: "runs" },
      h(
        "thead",
        {},
        h(
          "tr",
          {},
          ["Run", "Status", "Step", "Policy version", "Reward", "Val accuracy", "Started", "Duration"].map((t) =>
            h("th", {}, t),
          ),
        ),
      ),
      tbody,
    ),
  );
  refreshList(tbody, highlight);
  pageTimer = setInterval(() => {
    if (!document.hidden) refreshList(tbody, highlight);
  }, LIST_POLL_MS);
}

// ---- run page -------------------------------------------------------------------------------------

let stream = null;

function toYaml(value, indent = "") {
  if (value === null || value === undefined) return "null";
  if (Array.isArray(value)) {
    if (value.length === 0) return "[]";
    return value
      .map((v) => {
        const inner = toYaml(v, `${indent}  `);
        return `\n${indent}- ${typeof v === "object" && v !== null ? inner.trimStart() : inner}`;
      })
      .join("");
  }
  if (typeof value === "object") {
    const keys = Object.keys(value);
    if (keys.length === 0) return "{}";
    return keys
      .map((k) => {
        const v = value[k];
        const nested = typeof v === "object" && v !== null && Object.keys(v).length > 0;
        return `\n${indent}${k}:${nested ? toYaml(v, `${indent}  `) : ` ${toYaml(v, indent)}`}`;
      })
      .join("");
  }
  if (typeof value === "string") return /^[\w./@+-]+$/.test(value) && !/^(true|false|null|[\d.eE+-]+)$/.test(value) ? value : JSON.stringify(value);
  return String(value);
}

function eventClass(kind) {
  const k = String(kind || "").toLowerCase();
  if (/fail|error|lost|dead|crash/.test(k)) return "bad";
  if (/retry|restart|back|resum|timeout|stale|stop/.test(k)) return "warn";
  return "";
}

function showRun(id) {
  const rows = new Map(); // step -> merged metrics
  const seenEvents = new Set();
  let run = null;
  let drawQueued = false;
  let firstDrawDone = false;
  let fetchedUpTo = null; // last step of the metrics fetched before the stream opened

  const header = h("div", { class: "run-header" });
  const errorBox = h("div", { class: "error run-error", id: "run-error" });
  const grid = h("div", { class: "charts", id: "charts" });
  const latest = h("table", { class: "latest", id: "latest-metrics" });
  const events = h("ol", { class: "events", id: "events", reversed: true });
  const config = h("pre", { class: "config", id: "resolved-config" });
  view().replaceChildren(
    h("p", {}, h("a", { href: "#/" }, "← All runs")),
    header,
    errorBox,
    grid,
    h(
      "div",
      { class: "columns" },
      h("section", {}, h("h2", {}, "Event log"), events),
      h("section", {}, h("h2", {}, "Latest metrics"), latest),
    ),
    h("details", { open: true }, h("summary", {}, h("h2", {}, "Resolved config")), config),
  );
  const charts = CHARTS.map((spec) => new Chart(grid, spec));
  // Status changes arrive on the stream; step and policy version are refreshed from the record.
  let ticks = 0;
  pageTimer = setInterval(async () => {
    const dd = document.getElementById("run-duration");
    if (!run || !ACTIVE.has(run.status)) return;
    if (dd) dd.textContent = formatDuration(run);
    if (++ticks % 5 === 0 && !document.hidden) {
      const fresh = await api.getRun(id).catch(() => null);
      if (fresh) setRun(fresh);
    }
  }, 1000);

  function renderHeader() {
    if (!run) return;
    const stop = h(
      "button",
      {
        id: "stop-run",
        class: "danger",
        disabled: !ACTIVE.has(run.status),
        onclick: async () => {
          if (!confirm(`Stop run ${run.name || run.id}?`)) return;
          stop.disabled = true;
          try {
            const updated = await api.stopRun(run.id);
            if (updated && updated.id) setRun(updated);
          } catch (err) {
            flash(`Could not stop the run: ${errorText(err)}`, "error");
            stop.disabled = !ACTIVE.has(run.status);
          }
        },
      },
      "Stop run",
    );
    const stopping = run.status === "running" && run.stop_requested;
    if (stopping) {
      stop.disabled = true;
      stop.textContent = "Stopping…";
    }
    header.replaceChildren(
      h(
        "h1",
        {},
        run.name || run.id,
        " ",
        statusBadge(run.status),
        stopping ? h("span", { class: "status status-stopping" }, "stop requested") : null,
      ),
      h(
        "dl",
        { class: "facts" },
        h("dt", {}, "Run id"),
        h("dd", {}, run.id),
        h("dt", {}, "Step"),
        h("dd", { id: "run-step" }, run.step ?? "–"),
        h("dt", {}, "Policy version"),
        h("dd", {}, run.policy_version ?? "–"),
        h("dt", {}, "Created"),
        h("dd", {}, formatTime(run.created_at)),
        h("dt", {}, "Started"),
        h("dd", {}, formatTime(run.started_at)),
        h("dt", {}, "Duration"),
        h("dd", { id: "run-duration" }, formatDuration(run)),
      ),
      stop,
    );
    errorBox.textContent = run.error ? `Error: ${run.error}` : "";
  }

  function setRun(record) {
    const configChanged = !run || JSON.stringify(run.config) !== JSON.stringify(record.config);
    run = record;
    renderHeader();
    if (configChanged) config.textContent = toYaml(run.config || {}).trimStart();
    if (!ACTIVE.has(run.status) && stream) {
      // The last events of a run follow its final status: give them a moment, then stop listening.
      const finished = stream;
      setTimeout(() => {
        finished.close();
        if (stream === finished) stream = null;
      }, 3000);
    }
  }

  function addMetrics(records) {
    for (const raw of records) {
      const record = flatRecord(raw);
      if (record == null || record.step == null) continue;
      const step = Number(record.step);
      const row = rows.get(step) || { step };
      for (const [k, v] of Object.entries(record)) if (k !== "step" && k !== "source") row[k] = v;
      rows.set(step, row);
    }
    queueDraw();
  }

  function addEvent(event) {
    const key = `${event.time}|${event.kind}|${event.message}`;
    if (seenEvents.has(key)) return;
    seenEvents.add(key);
    const item = h(
      "li",
      { class: eventClass(event.kind), dataset: { kind: event.kind } },
      h("time", {}, formatTime(event.time)),
      h("b", {}, event.kind),
      h("span", {}, event.message),
    );
    // Newest first; events can arrive slightly out of order from different services.
    const t = seconds(event.time) ?? Infinity;
    item.dataset.t = String(t);
    const after = [...events.children].find((c) => Number(c.dataset.t) < t);
    events.insertBefore(item, after || null);
  }

  function draw() {
    drawQueued = false;
    const sorted = [...rows.values()].sort((a, b) => a.step - b.step);
    for (const chart of charts) chart.update(sorted);
    const merged = Object.assign({}, ...sorted);
    const keys = Object.keys(merged)
      .filter((k) => k !== "step" && typeof merged[k] === "number")
      .sort();
    latest.replaceChildren(
      ...keys.map((k) => h("tr", {}, h("th", {}, k), h("td", { class: "num" }, formatNumber(merged[k])))),
    );
    if (!firstDrawDone) {
      firstDrawDone = true;
      window.__dashboardDrawnAt = performance.now();
    }
  }

  function queueDraw() {
    if (drawQueued) return;
    drawQueued = true;
    requestAnimationFrame(draw);
  }

  function lastStep() {
    let max = null;
    for (const s of rows.keys()) if (max === null || s > max) max = s;
    return max;
  }

  function connect() {
    let opened = false;
    stream = new EventSource(api.eventsUrl(id));
    // The stream replays the run's history first; steps before the last fetched one are known already.
    stream.addEventListener("metrics", (e) => {
      const record = JSON.parse(e.data);
      if (fetchedUpTo == null || Number(record.step) >= fetchedUpTo) addMetrics([record]);
    });
    stream.addEventListener("status", (e) => setRun(JSON.parse(e.data)));
    stream.addEventListener("event", (e) => addEvent(JSON.parse(e.data)));
    stream.addEventListener("open", async () => {
      document.getElementById("live").dataset.live = "on";
      // After a reconnect, fill whatever the stream missed while it was down.
      if (opened) {
        addMetrics(await api.metrics(id, lastStep()));
        setRun(await api.getRun(id));
      }
      opened = true;
    });
    stream.addEventListener("error", () => {
      document.getElementById("live").dataset.live = "off";
      // A finished run's stream ends for good: don't let EventSource reconnect to it forever.
      if (run && !ACTIVE.has(run.status) && stream) {
        stream.close();
        stream = null;
      }
    });
  }

  (async () => {
    try {
      const [record, metrics] = await Promise.all([api.getRun(id), api.metrics(id)]);
      setRun(record);
      addMetrics(metrics);
      fetchedUpTo = lastStep();
      // Connect for finished runs too: the stream starts with the run's history of events. Connect
      // after the first draw (queued above; animation frames run in order) so its replay doesn't delay it.
      requestAnimationFrame(() => setTimeout(connect, 0));
    } catch (err) {
      view().replaceChildren(
        h("p", {}, h("a", { href: "#/" }, "← All runs")),
        h("div", { class: "error" }, `Could not load run ${id}: ${errorText(err)}`),
      );
    }
  })();
}

// ---- routing --------------------------------------------------------------------------------------

function route() {
  clearInterval(pageTimer);
  pageTimer = null;
  if (stream) {
    stream.close();
    stream = null;
  }
  document.getElementById("flash").replaceChildren();
  document.getElementById("live").dataset.live = "off";
  const match = /^#\/runs\/(.+)$/.exec(location.hash);
  if (match) showRun(decodeURIComponent(match[1]));
  else showList();
}

setTokenPrompt(askForToken);
document.getElementById("token-button").addEventListener("click", async () => {
  if (storedToken() && confirm("Forget the stored API token?")) {
    forgetToken();
    renderTokenState();
    return;
  }
  const token = await askForToken("Token sent as a Bearer header on requests that change runs; kept for this tab only.");
  if (token) sessionStorage.setItem("dapo.apiToken", token);
  renderTokenState();
});
window.addEventListener("hashchange", route);
renderTokenState();
route();
