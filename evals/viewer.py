"""One self-contained HTML page: notes, tables, plots and a trajectory viewer.

    viewer.render("out/report.html", title="Eval report", trajectories=results,
                  tables=[("heading", ["col", ...], [[cell, ...], ...])],
                  plots=[("caption", png_bytes)], notes=["rule-only scoring: no judge"])

`trajectories` are `rl.transcript.transcript` records, optionally with the eval's "key", "suite",
"item", "transform" and "tools". Their image paths are relative to the page's directory and are
shown as relative `<img src>` (never inlined: an eval has thousands); plots are inlined as PNG
data URIs. The page needs nothing from the network: CSS and JavaScript are inline, fonts are the
system's. The trajectories are embedded as JSON in `<script type="application/json"
id="trajectories">` and the page shows every piece of model text with `textContent`, never as HTML.

The viewer lists the trajectories (filters: suite, transform, tools, correct / incorrect /
ungraded, a text search over key, question and answer); a click, or the URL hash
`#traj=<key>`, opens one: its input image, the question, the turns in order with each tool call
(code, status, stdout, error, operations, result image, latency) under the turn that made it,
the answer against the ground truth, and the reward parts.

Self-test: opened with the hash `#selftest`, the page opens the first trajectory, exercises the
filters, waits for every image to load or fail (5 s at most) and appends
`<pre id="selftest-result">` holding JSON: {"errors" (uncaught errors, unhandled rejections and
console.error calls since the page started), "images_total", "images_loaded", "images_failed"
(their paths), "opened" (the key, or null), "detail_text_length", "filters" ({"<filter>=<value>":
rows})}. `tests/test_viewer.py` reads it from headless Chromium's `--dump-dom`.
"""

from __future__ import annotations

import base64
import html
import json
import math
import numbers
import os
from typing import Sequence

# Runs first in <head>: records what goes wrong from the very start of the page.
_CAPTURE_JS = """
(function () {
  var errors = window.__cvjErrors = [];
  window.onerror = function (message, source, line, column, error) {
    errors.push(String(error && error.stack || message) + " (" + source + ":" + line + ")");
  };
  window.addEventListener("unhandledrejection", function (event) {
    var r = event.reason;
    errors.push("unhandled rejection: " + String(r && r.stack || r));
  });
  var original = console.error;
  console.error = function () {
    errors.push("console.error: " + Array.prototype.map.call(arguments, String).join(" "));
    return original.apply(console, arguments);
  };
})();
"""

_CSS = """
:root { --fg: #1f2328; --muted: #656d76; --border: #d0d7de; --soft: #f6f8fa; --ok: #1a7f37;
        --bad: #cf222e; --accent: #0969da; }
* { box-sizing: border-box; }
[hidden] { display: none !important; }
body { margin: 0; color: var(--fg); background: #fff;
       font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial,
             sans-serif; }
main { max-width: 1500px; margin: 0 auto; padding: 14px 24px 48px; }
h1 { font-size: 22px; margin: 6px 0 12px; }
h2 { font-size: 17px; margin: 28px 0 10px; padding-bottom: 4px;
     border-bottom: 1px solid var(--border); }
h3 { font-size: 15px; margin: 16px 0 6px; }
.notes p { margin: 4px 0; padding: 6px 10px; background: #fff8c5;
           border-left: 3px solid #d4a72c; }
table.data { border-collapse: collapse; font-size: 13px; margin: 4px 0 16px; }
table.data caption { text-align: left; font-weight: 600; padding: 4px 0; }
table.data th, table.data td { border: 1px solid var(--border); padding: 3px 8px;
                               text-align: left; vertical-align: top; }
table.data th { background: var(--soft); }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
figure { margin: 8px 0 18px; }
figure img { max-width: 100%; border: 1px solid var(--border); }
figcaption { color: var(--muted); font-size: 13px; }
.filters { display: flex; flex-wrap: wrap; gap: 8px 16px; align-items: center; padding: 8px 10px;
           background: var(--soft); border: 1px solid var(--border); border-radius: 6px; }
.filters label { font-size: 13px; color: var(--muted); }
.filters select, .filters input { font: inherit; font-size: 13px; padding: 2px 4px;
                                  color: var(--fg); }
.filters input[type=search] { width: 16em; }
#count { margin-left: auto; font-size: 13px; color: var(--muted); }
.viewer { display: grid; grid-template-columns: minmax(400px, 6fr) 7fr; gap: 16px;
          margin-top: 10px; align-items: start; }
@media (max-width: 1000px) { .viewer { grid-template-columns: 1fr; } }
.list { max-height: 92vh; overflow: auto; border: 1px solid var(--border); border-radius: 6px;
        position: sticky; top: 8px; }
.list table { width: 100%; border-collapse: collapse; font-size: 13px; table-layout: fixed; }
.list th { position: sticky; top: 0; background: var(--soft); text-align: left;
           padding: 4px 6px; border-bottom: 1px solid var(--border); font-weight: 600; }
.list td { padding: 3px 6px; border-bottom: 1px solid #eaeef2; white-space: nowrap;
           overflow: hidden; text-overflow: ellipsis; }
.list tr.row { cursor: pointer; }
.list tr.row:hover { background: #f3f8ff; }
.list tr.selected, .list tr.selected:hover { background: #ddf4ff; }
.list .more { display: block; margin: 8px auto; }
table.no-transform .c-transform, table.no-tools .c-tools { display: none; }
.detail { min-width: 0; border: 1px solid var(--border); border-radius: 6px;
          padding: 10px 16px 16px; }
.detail h3:first-child { margin-top: 4px; }
.placeholder { color: var(--muted); padding: 24px 4px; }
.nav { float: right; }
.nav button { font: inherit; font-size: 12px; }
pre { white-space: pre-wrap; word-break: break-word; margin: 3px 0 8px; padding: 7px 10px;
      font: 12.5px/1.45 ui-monospace, SFMono-Regular, Menlo, Consolas, "Liberation Mono",
            monospace;
      background: var(--soft); border: 1px solid var(--border); border-radius: 6px; }
pre.err { background: #ffebe9; border-color: #ff8182; }
.turn { margin: 10px 0; }
.role { font-size: 12px; font-weight: 600; letter-spacing: .03em; color: var(--muted);
        text-transform: uppercase; }
.turn.assistant pre { background: #fff; }
.turn.tool pre { color: #57606a; }
.call { border: 1px solid var(--border); border-left: 4px solid var(--ok); border-radius: 6px;
        padding: 6px 12px 8px; margin: 6px 0 12px 18px; }
.call.failed { border-left-color: var(--bad); }
.call .label { font-size: 12px; color: var(--muted); margin-top: 4px; }
.badge { display: inline-block; padding: 0 8px; border-radius: 10px; font-size: 12px;
         background: #eaeef2; margin: 0 4px 4px 0; }
.badge.ok { background: #dafbe1; } .badge.bad { background: #ffebe9; }
.ok { color: var(--ok); } .bad { color: var(--bad); } .muted { color: var(--muted); }
dl.kv { display: grid; grid-template-columns: max-content 1fr; gap: 2px 14px; margin: 6px 0; }
dl.kv dt { color: var(--muted); }
dl.kv dd { margin: 0; word-break: break-word; white-space: pre-wrap; }
.image img { max-width: 100%; max-height: 460px; border: 1px solid var(--border);
             background: repeating-conic-gradient(#eee 0 25%, #fff 0 50%) 0 0 / 16px 16px; }
.image .broken { color: var(--bad); font-size: 13px; }
"""

_VIEWER_JS = r"""
(function () {
  "use strict";
  const DATA = JSON.parse(document.getElementById("trajectories").textContent);
  const BY_KEY = new Map(DATA.map((t) => [t.key, t]));
  const PAGE = 500;
  const FIELDS = ["suite", "transform", "tools"];
  const state = {filtered: DATA, shown: PAGE, current: null};
  const $ = (id) => document.getElementById(id);

  // An element; props: class, text or attributes; children: nodes or strings (added as text).
  function el(tag, props, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(props || {})) {
      if (v === null || v === undefined) continue;
      if (k === "class") e.className = v;
      else if (k === "text") e.textContent = v;
      else e.setAttribute(k, v);
    }
    for (const c of children) {
      if (c !== null && c !== undefined && c !== false) e.append(c);
    }
    return e;
  }

  const grade = (t) => t.correct === true ? "correct" : t.correct === false ? "incorrect"
                                                                             : "ungraded";
  const MARK = {correct: "\u2713", incorrect: "\u2717", ungraded: "\u2013"};
  const fmt = (x) => x === null || x === undefined || x === "" ? "\u2013"
      : Array.isArray(x) ? x.map(String).join(" | ")
      : typeof x === "object" ? JSON.stringify(x) : String(x);
  const calls = (t) => Array.isArray(t.tool_calls) ? t.tool_calls : [];
  const haystack = new Map(DATA.map((t) => [t.key,
      [t.key, t.question, t.answer].map((x) => x == null ? "" : String(x)).join("\n")
                                   .toLowerCase()]));

  // ---- the list and its filters ------------------------------------------------------------
  function buildFilters() {
    const table = $("list-table");
    for (const field of FIELDS) {
      const counts = new Map();
      for (const t of DATA) {
        if (t[field] !== null && t[field] !== undefined) {
          counts.set(String(t[field]), (counts.get(String(t[field])) || 0) + 1);
        }
      }
      const select = $("f-" + field);
      if (!counts.size) {
        select.parentElement.hidden = true;
        table.classList.add("no-" + field);
        continue;
      }
      for (const v of [...counts.keys()].sort()) {
        select.append(el("option", {value: v}, v + " (" + counts.get(v) + ")"));
      }
    }
    const grades = new Map();
    for (const t of DATA) grades.set(grade(t), (grades.get(grade(t)) || 0) + 1);
    for (const option of $("f-grade").options) {
      if (option.value) option.textContent += " (" + (grades.get(option.value) || 0) + ")";
    }
    for (const id of ["f-suite", "f-transform", "f-tools", "f-grade"]) {
      $(id).addEventListener("change", applyFilters);
    }
    $("f-search").addEventListener("input", applyFilters);
    $("more").addEventListener("click", () => { state.shown += PAGE; renderList(); });
    $("list-body").addEventListener("click", (event) => {
      const row = event.target.closest("tr.row");
      if (row) go(row.dataset.key);
    });
  }

  function applyFilters() {
    const want = {};
    for (const field of FIELDS) want[field] = $("f-" + field).value;
    const g = $("f-grade").value;
    const q = $("f-search").value.trim().toLowerCase();
    state.filtered = DATA.filter((t) =>
        FIELDS.every((f) => !want[f] || String(t[f]) === want[f])
        && (!g || grade(t) === g) && (!q || haystack.get(t.key).includes(q)));
    state.shown = PAGE;
    renderList();
  }

  function renderList() {
    const rows = state.filtered.slice(0, state.shown).map((t) => {
      const g = grade(t);
      const n = calls(t).length;
      const failed = calls(t).filter((c) => c.status !== "ok").length;
      const answer = t.answer === null || t.answer === undefined ? "(no answer)" : String(t.answer);
      const truth = fmt(t.ground_truth);
      return el("tr", {class: "row" + (t.key === state.current ? " selected" : ""),
                       "data-key": t.key},
          el("td", {title: t.key}, t.key),
          el("td", {class: "c-transform"}, fmt(t.transform)),
          el("td", {class: "c-tools"}, fmt(t.tools)),
          el("td", {class: g === "correct" ? "ok" : g === "incorrect" ? "bad" : "muted",
                    title: g}, MARK[g]),
          el("td", {title: "answer: " + answer + "\nground truth: " + truth},
             answer, el("span", {class: "muted"}, " vs " + truth)),
          el("td", {title: failed + " failed"}, failed ? n + " (" + failed + "\u2717)" : n));
    });
    $("list-body").replaceChildren(...rows);
    $("count").textContent = state.filtered.length + " of " + DATA.length + " trajectories";
    $("more").hidden = state.filtered.length <= state.shown;
    $("more").textContent = "show " + Math.min(PAGE, state.filtered.length - state.shown)
        + " more";
  }

  // ---- one trajectory ----------------------------------------------------------------------
  function go(key) {
    const hash = "#traj=" + encodeURIComponent(key);
    if (location.hash !== hash) location.hash = hash;  // hashchange opens it
    else openTrajectory(key);
  }

  const encodePath = (p) => String(p).replace(/\\/g, "/").split("/")
      .map(encodeURIComponent).join("/");

  function image(path, caption) {
    const img = el("img", {src: encodePath(path), alt: caption, "data-path": path});
    const figure = el("figure", {class: "image"}, img, el("figcaption", null, caption));
    img.addEventListener("error", () => figure.insertBefore(
        el("div", {class: "broken"}, "could not load " + path), figure.lastChild));
    return figure;
  }

  function labelled(label, text, cls) {
    return [el("div", {class: "label"}, label), el("pre", {class: cls || null}, String(text))];
  }

  function callCard(c, index) {
    const ok = c.status === "ok";
    const head = el("div", null, el("b", null, "tool call " + (index + 1)), " \u00b7 ",
        el("span", {class: ok ? "ok" : "bad"}, fmt(c.status)),
        c.image_index !== null && c.image_index !== undefined ? " \u00b7 on image "
            + c.image_index : null,
        typeof c.latency_s === "number" ? " \u00b7 " + c.latency_s.toFixed(3) + " s" : null);
    const box = el("div", {class: "call" + (ok ? "" : " failed")}, head);
    if (c.description) box.append(el("div", null, String(c.description)));
    if (c.code) box.append(...labelled("code", c.code));
    if (c.stdout) box.append(...labelled("stdout", c.stdout));
    if (c.error) box.append(...labelled("error", c.error, "err"));
    const ops = Array.isArray(c.ops) ? c.ops : [];
    box.append(el("div", {class: "label"}, "operations the executor saw: ",
        ...(ops.length ? ops.map((op) => el("span", {class: "badge"}, String(op)))
                       : [el("span", {class: "muted"}, "none")])));
    if (c.result_image) box.append(image(c.result_image, "result: " + c.result_image));
    else box.append(el("div", {class: "label bad"},
        "no result image" + (c.error ? " (see the error above)" : "")));
    return box;
  }

  function rewardTable(reward) {
    const rows = Object.entries(reward).map(([k, v]) =>
        el("tr", null, el("td", null, k),
           el("td", {class: "num"}, typeof v === "number" ? v.toFixed(3) : fmt(v))));
    return el("table", {class: "data"},
        el("tr", null, el("th", null, "reward part"), el("th", null, "value")), ...rows);
  }

  function detail(t) {
    const g = grade(t);
    const all = calls(t);
    const out = [];
    const index = state.filtered.indexOf(t);
    const nav = el("span", {class: "nav"});
    for (const [label, step] of [["\u2190 previous", -1], ["next \u2192", 1]]) {
      const other = index < 0 ? undefined : state.filtered[index + step];
      const b = el("button", {type: "button"}, label);
      b.disabled = !other;
      if (other) b.addEventListener("click", () => go(other.key));
      nav.append(b, " ");
    }
    out.push(el("h3", null, nav, t.key));
    const badges = el("div");
    for (const f of FIELDS) {
      if (t[f] !== null && t[f] !== undefined) {
        badges.append(el("span", {class: "badge"}, (f === "tools" ? "tools " : "") + t[f]));
      }
    }
    badges.append(el("span", {class: "badge " + (g === "correct" ? "ok" : g === "incorrect"
                                                 ? "bad" : "")}, MARK[g] + " " + g));
    out.push(badges);
    const failed = all.filter((c) => c.status !== "ok").length;
    const facts = [["answer", fmt(t.answer)], ["ground truth", fmt(t.ground_truth)],
                   ["correct", t.correct === true ? "yes" : t.correct === false ? "no"
                                                                         : "ungraded"],
                   ["finish reason", fmt(t.finish_reason)],
                   ["turns", fmt(t.num_turns)],
                   ["tool calls", all.length + (failed ? " (" + failed + " failed)" : "")],
                   ["origin", fmt(t.origin)]];
    if (t.item !== undefined) facts.push(["item", fmt(t.item)]);
    if (t.error) facts.push(["error", String(t.error)]);
    const dl = el("dl", {class: "kv"});
    for (const [k, v] of facts) {
      dl.append(el("dt", null, k), el("dd", {class: k === "error" ? "bad" : null}, v));
    }
    out.push(dl);
    out.push(t.reward && typeof t.reward === "object" ? rewardTable(t.reward)
             : el("div", {class: "muted"}, "no reward parts (not graded)"));

    const images = Array.isArray(t.images) ? t.images : [];
    const results = new Set(all.map((c) => c.result_image).filter(Boolean));
    const inputs = images.map((p, k) => [p, k]).filter(([p, k]) => k === 0 || !results.has(p));
    out.push(el("h3", null, "Input image" + (inputs.length > 1 ? "s" : "")));
    if (!inputs.length) out.push(el("div", {class: "muted"}, "no image"));
    for (const [p, k] of inputs) out.push(image(p, "image " + k + ": " + p));
    out.push(el("h3", null, "Question"), el("pre", null, fmt(t.question)));

    out.push(el("h3", null, "Turns"));
    const placed = new Set();
    let assistantTurn = 0;
    for (const turn of Array.isArray(t.turns) ? t.turns : []) {
      const role = turn.role === "assistant" ? "assistant" : "tool";
      const label = role === "assistant" ? "assistant, turn " + (++assistantTurn) : "tool";
      out.push(el("div", {class: "turn " + role}, el("div", {class: "role"}, label),
                  el("pre", null, String(turn.text == null ? "" : turn.text))));
      if (role === "assistant") {
        all.forEach((c, i) => {
          if (c.turn === assistantTurn) { out.push(callCard(c, i)); placed.add(i); }
        });
      }
    }
    if (!assistantTurn) out.push(el("div", {class: "muted"}, "no turns"));
    const rest = all.map((c, i) => [c, i]).filter(([, i]) => !placed.has(i));
    if (rest.length) {
      out.push(el("h3", null, "Tool calls not matched to a turn"));
      for (const [c, i] of rest) out.push(callCard(c, i));
    }
    return out;
  }

  function openTrajectory(key, scroll) {
    const t = BY_KEY.get(key);
    state.current = t ? key : null;
    for (const row of $("list-body").querySelectorAll("tr.selected")) {
      row.classList.remove("selected");
    }
    const row = [...$("list-body").rows].find((r) => r.dataset.key === key);
    if (row) row.classList.add("selected");
    $("detail").replaceChildren(...(t ? detail(t)
        : [el("div", {class: "placeholder"}, "no trajectory with key " + key)]));
    // From a link: bring the viewer into sight, unless it already is.
    if (scroll && $("viewer").getBoundingClientRect().top > window.innerHeight / 2) {
      $("viewer").scrollIntoView();
    }
    return state.current;
  }

  function openFromHash(scroll) {
    if (!location.hash.startsWith("#traj=")) return;
    let key = location.hash.slice(6);
    try {
      key = decodeURIComponent(key);
    } catch (e) {  // not percent-encoded: the key as typed
    }
    openTrajectory(key, scroll);
  }

  // ---- the self-test (#selftest) -----------------------------------------------------------
  function settle(img) {
    if (img.complete) return Promise.resolve();
    return new Promise((resolve) => {
      img.addEventListener("load", resolve, {once: true});
      img.addEventListener("error", resolve, {once: true});
    });
  }

  async function selftest() {
    let opened = null;
    const filters = {};
    try {
      if (DATA.length) opened = openTrajectory(DATA[0].key);
      for (const id of ["f-suite", "f-transform", "f-tools", "f-grade"]) {
        const select = $(id);
        for (const option of [...select.options].filter((o) => o.value)) {
          select.value = option.value;
          applyFilters();
          filters[id.slice(2) + "=" + option.value] = state.filtered.length;
        }
        select.value = "";
      }
      $("f-search").value = "\u0000no such text\u0000";
      applyFilters();
      filters["search=<nothing>"] = state.filtered.length;
      $("f-search").value = "";
      applyFilters();
    } catch (e) {
      window.__cvjErrors.push("selftest: " + String(e && e.stack || e));
    }
    const images = [...document.images];
    await Promise.race([Promise.all(images.map(settle)),
                        new Promise((resolve) => setTimeout(resolve, 5000))]);
    const failed = images.filter((img) => !(img.complete && img.naturalWidth > 0))
        .map((img) => img.getAttribute("data-path") || img.getAttribute("src").slice(0, 80));
    const result = {errors: window.__cvjErrors.slice(), images_total: images.length,
                    images_loaded: images.length - failed.length, images_failed: failed,
                    opened: opened, detail_text_length: $("detail").textContent.length,
                    filters: filters};
    document.body.append(el("pre", {id: "selftest-result"}, JSON.stringify(result)));
  }

  function init() {
    buildFilters();
    applyFilters();
    window.addEventListener("hashchange", () => openFromHash(false));
    if (location.hash === "#selftest") selftest();
    else openFromHash(true);
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init);
  else init();
})();
"""

_VIEWER_HTML = """<h2 id="viewer">Trajectories</h2>
<div class="filters">
  <label>suite <select id="f-suite"><option value="">all</option></select></label>
  <label>transform <select id="f-transform"><option value="">all</option></select></label>
  <label>tools <select id="f-tools"><option value="">all</option></select></label>
  <label>graded <select id="f-grade"><option value="">all</option>
    <option value="correct">correct</option><option value="incorrect">incorrect</option>
    <option value="ungraded">ungraded</option></select></label>
  <label>search <input id="f-search" type="search"
    placeholder="key, question or answer"></label>
  <span id="count"></span>
</div>
<div class="viewer">
  <div class="list">
    <table id="list-table">
      <colgroup><col style="width:29%"><col class="c-transform" style="width:16%">
        <col class="c-tools" style="width:9%"><col style="width:5%"><col style="width:30%">
        <col style="width:11%"></colgroup>
      <thead><tr><th>key</th><th class="c-transform">transform</th><th class="c-tools">tools</th>
        <th title="correct">\u2713</th><th>answer vs ground truth</th><th>calls</th></tr></thead>
      <tbody id="list-body"></tbody>
    </table>
    <button id="more" class="more" type="button" hidden></button>
  </div>
  <div id="detail" class="detail">
    <div class="placeholder">Click a trajectory to see its image, turns and tool calls.</div>
  </div>
</div>
"""


def _jsonable(x):
  """`x` with numpy scalars and arrays as Python values, non-finite floats as strings ("nan"; a
  JSON parser rejects NaN) and anything else unknown as its str."""
  if x is None or isinstance(x, (str, bool, int)):
    return x
  if isinstance(x, float):
    return x if math.isfinite(x) else str(x)
  if isinstance(x, dict):
    return {str(k): _jsonable(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [_jsonable(v) for v in x]
  if hasattr(x, "tolist"):  # numpy scalars and arrays
    return _jsonable(x.tolist())
  return str(x)


def _entries(trajectories: Sequence[dict]) -> list[dict]:
  """The trajectories, JSON-ready, each with a unique "key" (its own, else str(id); a repeated
  one gets "#2", "#3", ...)."""
  out, seen = [], set()
  for i, t in enumerate(trajectories):
    entry = _jsonable(dict(t))
    key = entry.get("key")
    key = str(key if key is not None else entry.get("id", i))
    unique, n = key, 1
    while unique in seen:
      n += 1
      unique = f"{key}#{n}"
    seen.add(unique)
    entry["key"] = unique
    out.append(entry)
  return out


def script_json(value) -> str:
  """`value` as JSON that is safe inside a <script> element: "</" is written "<\\/" and "<!--"
  "<\\u0021--" (both the same JSON), so no text can close the element or change how the HTML
  parser reads it."""
  text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
  return text.replace("</", "<\\/").replace("<!--", "<\\u0021--")


def cell(value) -> str:
  """A table cell's text: None as "–", floats with 3 decimals, booleans as yes / no."""
  if value is None:
    return "–"
  if isinstance(value, bool):
    return "yes" if value else "no"
  if isinstance(value, numbers.Integral):
    return str(int(value))
  if isinstance(value, numbers.Real):
    value = float(value)
    return f"{value:.3f}" if math.isfinite(value) else str(value)
  return str(value)


def _table(heading: str, header: Sequence[str], rows: Sequence[Sequence]) -> str:
  esc = html.escape
  lines = [
    f"<h3>{esc(str(heading))}</h3>",
    '<table class="data">',
    "<tr>" + "".join(f"<th>{esc(str(h))}</th>" for h in header) + "</tr>",
  ]
  for row in rows:
    tds = []
    for v in row:
      num = isinstance(v, numbers.Real) and not isinstance(v, bool)
      tds.append(f'<td class="num">{esc(cell(v))}</td>' if num else f"<td>{esc(cell(v))}</td>")
    lines.append("<tr>" + "".join(tds) + "</tr>")
  lines.append("</table>")
  return "\n".join(lines)


def _plot(caption: str, png: bytes) -> str:
  data = base64.b64encode(png).decode("ascii")
  return (
    f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(caption)}">'
    f"<figcaption>{html.escape(caption)}</figcaption></figure>"
  )


def page(
  *,
  title: str,
  trajectories: list[dict],
  tables: Sequence[tuple[str, list[str], list[list]]] = (),
  plots: Sequence[tuple[str, bytes]] = (),
  notes: Sequence[str] = (),
) -> str:
  """The HTML text of `render`'s page."""
  esc = html.escape
  parts = [
    "<!DOCTYPE html>",
    '<html lang="en">',
    "<head>",
    '<meta charset="utf-8">',
    f"<script>{_CAPTURE_JS}</script>",
    '<meta name="viewport" content="width=device-width, initial-scale=1">',
    f"<title>{esc(title)}</title>",
    f"<style>{_CSS}</style>",
    "</head>",
    "<body>",
    "<main>",
    f"<h1>{esc(title)}</h1>",
  ]
  if notes:
    parts.append('<section class="notes">' + "".join(f"<p>{esc(str(n))}</p>" for n in notes) + "</section>")
  if tables:
    parts.append('<section class="tables"><h2>Tables</h2>')
    parts += [_table(*t) for t in tables]
    parts.append("</section>")
  if plots:
    parts.append('<section class="plots"><h2>Plots</h2>')
    parts += [_plot(*p) for p in plots]
    parts.append("</section>")
  parts += [
    _VIEWER_HTML,
    "</main>",
    '<script type="application/json" id="trajectories">' + script_json(_entries(trajectories)) + "</script>",
    f"<script>{_VIEWER_JS}</script>",
    "</body>",
    "</html>",
    "",
  ]
  return "\n".join(parts)


def render(
  path: str,
  *,
  title: str,
  trajectories: list[dict],
  tables: Sequence[tuple[str, list[str], list[list]]] = (),
  plots: Sequence[tuple[str, bytes]] = (),
  notes: Sequence[str] = (),
) -> str:
  """Writes the HTML file `path` and returns it.

  `notes`: short plain-text paragraphs shown first. `tables`: (heading, header cells, rows);
  cells are escaped, floats shown with 3 decimals and None as "–". `plots`: (caption, PNG
  bytes), inlined. `trajectories`: `rl.transcript` records (plus the optional "key", "suite",
  "item", "transform", "tools"), their image paths relative to the directory of `path`.
  """
  text = page(title=title, trajectories=trajectories, tables=tables, plots=plots, notes=notes)
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  tmp = path + ".tmp"
  # A lone surrogate (undecodable model output) is written as its JSON escape, \udXXX.
  with open(tmp, "w", encoding="utf-8", errors="backslashreplace") as f:
    f.write(text)
  os.replace(tmp, path)
  return path
