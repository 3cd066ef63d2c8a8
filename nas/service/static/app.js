// distill-nas pages: each page's script reads the REST API (the same one scripts use) and draws
// with plotly.js, which the server itself serves. No data comes from anywhere else.
"use strict";

async function api(path, options = {}) {
  const response = await fetch(path, {
    headers: { "Content-Type": "application/json", Accept: "application/json" },
    credentials: "same-origin",
    ...options,
  });
  const body = await response.json().catch(() => ({ error: `${response.status} ${response.statusText}` }));
  if (!response.ok) throw new Error(body.error || `${response.status} ${response.statusText}`);
  return body;
}

function duration(seconds) {
  if (seconds === null || seconds === undefined || !isFinite(seconds)) return "-";
  seconds = Math.round(seconds);
  const h = Math.floor(seconds / 3600), m = Math.floor((seconds % 3600) / 60), s = seconds % 60;
  return h ? `${h}h${String(m).padStart(2, "0")}m` : `${m}m${String(s).padStart(2, "0")}s`;
}

function esc(text) {
  return String(text ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
}

const PLOT_CONFIG = { responsive: true, displaylogo: false };

// ---- sortable tables: a button in each heading; aria-sort says the order ----

function makeSortable(table) {
  const heads = table.tHead ? [...table.tHead.rows[0].cells] : [];
  heads.forEach((th, column) => {
    if (th.dataset.nosort !== undefined || th.querySelector("button")) return;
    const button = document.createElement("button");
    button.type = "button";
    button.textContent = th.textContent;
    th.textContent = "";
    th.appendChild(button);
    button.addEventListener("click", () => {
      const ascending = th.getAttribute("aria-sort") !== "ascending";
      heads.forEach((h) => h.removeAttribute("aria-sort"));
      th.setAttribute("aria-sort", ascending ? "ascending" : "descending");
      table.dataset.sortColumn = column;
      table.dataset.sortAscending = ascending ? "1" : "";
      sortRows(table);
    });
  });
}

function sortRows(table) {
  if (table.dataset.sortColumn === undefined) return;
  const column = Number(table.dataset.sortColumn), ascending = Boolean(table.dataset.sortAscending);
  const key = (row) => {
    const cell = row.cells[column];
    const value = cell ? cell.dataset.value ?? cell.textContent.trim() : "";
    const number = parseFloat(value.replace(/,/g, ""));
    return isNaN(number) ? value : number;
  };
  const rows = [...table.tBodies[0].rows];
  rows.sort((a, b) => {
    const x = key(a), y = key(b);
    const order = typeof x === "number" && typeof y === "number" ? x - y : String(x).localeCompare(String(y));
    return ascending ? order : -order;
  });
  rows.forEach((row) => table.tBodies[0].appendChild(row));
}

// ---- the studies page ----

function studiesPage() {
  document.querySelectorAll("table.sortable").forEach(makeSortable);
  const form = document.getElementById("launch");
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const error = document.getElementById("launch-error");
    error.textContent = "";
    const trials = form.trials.value.trim();
    const body = {
      spec: form.spec.value,
      overrides: form.overrides.value.split("\n").map((s) => s.trim()).filter(Boolean),
    };
    if (trials) body.trials = Number(trials);
    try {
      const job = await api("/api/searches", { method: "POST", body: JSON.stringify(body) });
      window.location.href = `/studies/${encodeURIComponent(job.study)}`;
    } catch (e) {
      error.textContent = e.message;
    }
  });
}

// ---- the study page: the front, the hypervolume, the trials ----

// The trials no other trial beats on both axes (directions "min"/"max"), sorted by x.
function front2d(points, dirX, dirY) {
  const sx = dirX === "max" ? -1 : 1, sy = dirY === "max" ? -1 : 1;
  const sorted = [...points].sort((a, b) => sx * (a.x - b.x) || sy * (a.y - b.y));
  const front = [];
  let best = Infinity;
  for (const p of sorted) {
    if (sy * p.y < best) {
      front.push(p);
      best = sy * p.y;
    }
  }
  return front.sort((a, b) => a.x - b.x);
}

const GROUPS = [
  // state -> how a trial is drawn (the front is drawn apart); failed trials go on a strip below
  { name: "on the front", test: (t) => t.front, marker: { color: "#0b5394", size: 10, symbol: "circle" } },
  { name: "complete", test: (t) => t.state === "complete" && !t.front, marker: { color: "#7fa7d1", size: 8, symbol: "circle" } },
  { name: "infeasible (beyond a constraint)", test: (t) => t.state === "infeasible", marker: { color: "#8c8c8c", size: 8, symbol: "square-open" } },
  { name: "stopped at a rung", test: (t) => t.state === "stopped at a rung", marker: { color: "#b45f06", size: 9, symbol: "diamond-open" } },
  { name: "not trained (size bounds)", test: (t) => t.state === "not trained", marker: { color: "#b45f06", size: 9, symbol: "x-thin-open", line: { width: 2 } }, strip: true },
  { name: "failed", test: (t) => t.state === "failed", marker: { color: "#a40000", size: 10, symbol: "x", line: { width: 1 } }, strip: true },
];

function hoverText(t, metrics) {
  const lines = [`<b>#${t.number}</b> ${esc(t.arch_short)} (${esc(t.state)})`];
  for (const [k, v] of Object.entries(t.arch || {})) lines.push(`${esc(k)}: ${esc(v)}`);
  for (const m of metrics) if (m.name in t.formatted) lines.push(`${esc(m.name)}: ${esc(t.formatted[m.name])}`);
  if (t.reason) lines.push(esc(String(t.reason).slice(0, 120)));
  return lines.join("<br>");
}

// Set an element's text only when it changed: live regions announce changes, not every poll.
function setText(element, text) {
  if (element.textContent !== text) element.textContent = text;
}

function studyPage(name) {
  const xSelect = document.getElementById("x-axis"), ySelect = document.getElementById("y-axis");
  const xLog = document.getElementById("x-log");
  const table = document.getElementById("trials");
  let data = null, timer = null, shownTrials = "";

  function chooseAxes() {
    if (xSelect.options.length || !data.metrics.length) return;
    for (const m of data.metrics) {
      for (const select of [xSelect, ySelect]) select.add(new Option(`${m.name}${m.objective ? " (objective)" : ""}`, m.name));
    }
    const objectives = data.metrics.filter((m) => m.objective);
    const size = objectives.find((m) => m.kind === "size") || data.metrics.find((m) => m.kind === "size");
    const quality = objectives.find((m) => m.kind === "quality") || objectives[0];
    xSelect.value = (size || data.metrics[1] || data.metrics[0]).name;
    ySelect.value = (quality || data.metrics[0]).name;
  }

  function direction(metric) {
    const m = data.metrics.find((x) => x.name === metric);
    return m ? m.direction : "min";
  }

  function drawFront() {
    const x = xSelect.value, y = ySelect.value;
    const traces = [];
    const drawn = data.trials.filter((t) => t.duplicate_of === null || t.duplicate_of === undefined);
    const onAxes = (t) => t.metrics[x] !== undefined && t.metrics[y] !== undefined;
    const points = drawn.filter((t) => ["complete"].includes(t.state) && onAxes(t)).map((t) => ({ x: t.metrics[x], y: t.metrics[y] }));
    const step = front2d(points, direction(x), direction(y));
    traces.push({
      type: "scatter", mode: "lines", name: "front on these axes", x: step.map((p) => p.x), y: step.map((p) => p.y),
      line: { shape: "hv", color: "#0b5394", width: 2 }, hoverinfo: "skip",
    });
    for (const g of GROUPS) {
      const members = drawn.filter(g.test).filter((t) => t.metrics[x] !== undefined && (g.strip || t.metrics[y] !== undefined));
      const count = drawn.filter(g.test).length;
      if (!count) continue;
      traces.push({
        type: "scatter", mode: "markers", name: `${g.name} (${count})`,
        x: members.map((t) => t.metrics[x]),
        y: members.map((t) => (g.strip ? 0.5 : t.metrics[y])),
        yaxis: g.strip ? "y2" : "y",
        marker: g.marker, customdata: members.map((t) => t.number),
        text: members.map((t) => hoverText(t, data.metrics)), hovertemplate: "%{text}<extra></extra>",
      });
    }
    const teacher = data.teacher_metrics || {};
    if (teacher[x] !== undefined && teacher[y] !== undefined) {
      traces.push({
        type: "scatter", mode: "markers+text", name: "teacher", x: [teacher[x]], y: [teacher[y]],
        text: ["teacher"], textposition: "top center",
        marker: { symbol: "star", size: 16, color: "#f0a500", line: { color: "#1a1a1a", width: 1 } },
        hovertext: [`<b>teacher</b> ${esc(data.teacher)}<br>` + Object.entries(data.teacher_formatted || {}).map(([k, v]) => `${esc(k)}: ${esc(v)}`).join("<br>")],
        hovertemplate: "%{hovertext}<extra></extra>",
      });
    }
    const strip = traces.some((t) => t.yaxis === "y2" && t.x.length);
    const layout = {
      margin: { t: 30, r: 20, b: 60, l: 70 },
      xaxis: { title: { text: x }, type: xLog.checked ? "log" : "linear" },
      yaxis: { title: { text: y }, domain: [strip ? 0.12 : 0, 1] },
      legend: { orientation: "h", y: 1.08 },
      hovermode: "closest",
      hoverlabel: { align: "left" },
    };
    if (strip) {  // trials without a quality score (failed, not trained) on a strip below, at their size
      layout.yaxis2 = { domain: [0, 0.06], showticklabels: false, showgrid: false, zeroline: false, range: [0, 1], fixedrange: true };
      layout.annotations = [{ text: "no score", xref: "paper", yref: "y2", x: 0, y: 0.5, xanchor: "right", showarrow: false, font: { size: 11, color: "#555" } }];
    }
    const plot = document.getElementById("front-plot");
    Plotly.react(plot, traces, layout, PLOT_CONFIG);
    if (!plot.dataset.clicks) {
      plot.dataset.clicks = "1";
      plot.on("plotly_click", (event) => {
        const number = event.points[0] && event.points[0].customdata;
        if (number !== undefined && number !== null) window.location.href = `/studies/${encodeURIComponent(name)}/trials/${number}`;
      });
    }
  }

  function drawHypervolume() {
    const hv = data.hypervolume || [];
    Plotly.react(
      "hv-plot",
      [{
        type: "scatter", mode: "lines+markers", name: "hypervolume", line: { shape: "hv" },
        x: hv.map((p) => new Date(p.at * 1000)), y: hv.map((p) => p.hypervolume),
        text: hv.map((p) => `after trial ${p.trial}`), hovertemplate: "%{text}: %{y:.4g}<extra></extra>",
      }],
      { margin: { t: 20, r: 20, b: 50, l: 70 }, xaxis: { title: { text: "time" } }, yaxis: { title: { text: "hypervolume" } } },
      PLOT_CONFIG,
    );
  }

  function drawTable() {
    const shown = data.metrics.filter((m) => m.objective || data.trials.some((t) => m.name in t.metrics)).slice(0, 8);
    const head = ["Compare", "Trial", "State", "Architecture", ...shown.map((m) => m.name), "Distilled"];
    if (table.dataset.head !== head.join("|")) {  // the columns change as the study's metrics appear
      table.dataset.head = head.join("|");
      delete table.dataset.sortColumn;
      shownTrials = "";
      table.tHead.innerHTML = "";
      const row = table.tHead.insertRow();
      head.forEach((text, i) => {
        const th = document.createElement("th");
        th.scope = "col";
        th.textContent = text;
        if (i === 0) th.dataset.nosort = "";
        row.appendChild(th);
      });
      makeSortable(table);
    }
    const key = JSON.stringify(data.trials);
    if (key === shownTrials) return;  // unchanged: the rows (and the keyboard's focus in them) stay
    shownTrials = key;
    const focused = document.activeElement && table.contains(document.activeElement) ? document.activeElement.dataset.focus : null;
    const checked = new Set([...table.querySelectorAll("input[type=checkbox]:checked")].map((c) => c.value));
    const body = table.tBodies[0];
    body.innerHTML = "";
    for (const t of data.trials) {
      const row = body.insertRow();
      if (t.front) row.className = "front";
      const cells = [
        `<input type="checkbox" value="${esc(t.number)}" data-focus="box-${esc(t.number)}" aria-label="compare trial ${esc(t.number)}"${checked.has(String(t.number)) ? " checked" : ""}>`,
        `<a href="/studies/${encodeURIComponent(name)}/trials/${esc(t.number)}" data-focus="link-${esc(t.number)}">${esc(t.number)}</a>`,
        esc(t.state) + (t.front ? " (front)" : "") + (t.duplicate_of !== null && t.duplicate_of !== undefined ? ` of #${esc(t.duplicate_of)}` : ""),
        esc(t.arch_short),
        ...shown.map((m) => esc(t.formatted[m.name] ?? "-")),
        t.distilled ? "yes" : "",
      ];
      cells.forEach((html, i) => {
        const cell = row.insertCell();
        cell.innerHTML = html;
        if (i === 1) cell.dataset.value = t.number;
        if (i >= 4 && i < 4 + shown.length) {
          cell.className = "num";
          const v = t.metrics[shown[i - 4].name];
          cell.dataset.value = v === undefined ? "" : v;
        }
      });
    }
    sortRows(table);
    if (focused) {
      const again = table.querySelector(`[data-focus="${focused}"]`);
      if (again) again.focus();
    }
  }

  function summary() {
    const running = data.running_jobs || [];
    const counts = Object.entries(data.counts || {}).filter(([, n]) => n).map(([k, n]) => `${n} ${k}`).join(", ");
    setText(
      document.getElementById("study-summary"),
      data.searched
        ? `${data.task} study; teacher ${data.teacher}; ${data.evaluated}/${data.target} architectures done, front of ${data.front_size}` + (counts ? ` (${counts})` : "")
        : `${data.task} study, not searched yet; teacher ${data.teacher}. Start its search from the studies page.`,
    );
    const html = running.length
      ? "<p>Running: " + running.map((j) => `<a href="/jobs/${esc(j.id)}">${esc(j.kind)}${j.trial !== undefined && j.trial !== null ? " of trial " + esc(j.trial) : ""}</a> ${esc(progressLine(j))}`).join("; ") + "</p>"
      : "";
    const jobs = document.getElementById("study-jobs");
    if (jobs.dataset.shown !== html) {
      jobs.dataset.shown = html;
      jobs.innerHTML = html;
    }
  }

  async function refresh() {
    try {
      data = await api(`/api/studies/${encodeURIComponent(name)}`);
      chooseAxes();
      summary();
      drawFront();
      drawHypervolume();
      drawTable();
    } catch (e) {
      document.getElementById("study-summary").textContent = `Could not read the study: ${e.message}`;
    }
    clearTimeout(timer);
    timer = setTimeout(refresh, data && data.running_jobs && data.running_jobs.length ? 2000 : 10000);
  }

  for (const control of [xSelect, ySelect, xLog]) control.addEventListener("change", () => data && drawFront());
  document.getElementById("compare-form").addEventListener("submit", (event) => {
    const picked = [...table.querySelectorAll("input[type=checkbox]:checked")].map((c) => c.value);
    if (picked.length < 2 || picked.length > 4) {
      event.preventDefault();
      alert("Select 2 to 4 trials to compare.");
      return;
    }
    document.getElementById("compare-trials").value = picked.join(",");
  });
  refresh();
}

function progressLine(job) {
  const p = job.progress || {};
  if (p.event === "trial") {
    const eta = job.state === "running" ? `, ETA ${duration(p.eta_s)}` : "";
    return `${p.evaluated}/${p.target} architectures, front ${p.front}, last: ${p.last}${eta}`;
  }
  if (p.event === "step") {
    const unit = { tok_s: "tokens/s", sent_s: "sentences/s" }[p.rate_unit] || p.rate_unit;
    const rate = p.rate ? `, ${Math.round(p.rate).toLocaleString("en")} ${unit}` : "";
    const eta = job.state === "running" ? `, ETA ${duration(p.eta_s)}` : "";
    return `step ${p.step}/${p.total}, loss ${Number(p.loss).toFixed(3)}${rate}${eta}`;
  }
  return job.state === "running" || job.state === "starting" ? "preparing" : "";
}

// ---- the trial page: the loss curve and "distill this" ----

function trialPage() {
  const { curve, steps } = JSON.parse(document.getElementById("curve-data").textContent);
  if (curve && curve.length) {
    const scale = (steps || curve.length) / curve.length;
    Plotly.react(
      "curve-plot",
      [{ type: "scatter", mode: "lines", name: "loss", x: curve.map((_, i) => Math.round(i * scale)), y: curve }],
      { margin: { t: 20, r: 20, b: 50, l: 70 }, xaxis: { title: { text: "step" } }, yaxis: { title: { text: "loss" } } },
      PLOT_CONFIG,
    );
  } else {
    document.getElementById("curve-plot").textContent = "No loss curve: the trial did not train.";
  }
  const show = document.getElementById("show-card");
  if (show) {
    show.addEventListener("click", async (event) => {
      event.preventDefault();
      const card = document.getElementById("card");
      try {
        card.textContent = (await api(show.dataset.card)).markdown;
      } catch (e) {
        card.textContent = `Could not read the model card: ${e.message}`;
      }
      card.hidden = false;
      card.focus();
    });
  }
  const form = document.getElementById("distill-form");
  if (!form) return;
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const error = document.getElementById("distill-error");
    error.textContent = "";
    const overrides = [...form.querySelectorAll("input[type=number]")]
      .filter((input) => input.value !== input.dataset.initial)
      .map((input) => `full.${input.name}=${input.value}`);
    const again = form.again.value;
    const body = { trial: Number(form.dataset.trial), overrides, overwrite: form.overwrite.checked };
    if (again) body[again] = true;
    try {
      const job = await api(`/api/studies/${encodeURIComponent(form.dataset.study)}/distill`, { method: "POST", body: JSON.stringify(body) });
      window.location.href = `/jobs/${job.id}`;
    } catch (e) {
      error.textContent = e.message;
    }
  });
}

// ---- the job page: state, progress, log; the export when done ----

function jobPage(id) {
  const stop = document.getElementById("job-stop"), resume = document.getElementById("job-resume");
  let cardShown = false, timer = null;
  function again(ms) {
    clearTimeout(timer);
    timer = setTimeout(refresh, ms);
  }
  async function refresh() {
    let job;
    try {
      job = await api(`/api/jobs/${encodeURIComponent(id)}?lines=60`);
    } catch (e) {
      setText(document.getElementById("job-error"), e.message);
      again(3000);
      return;
    }
    const state = document.getElementById("job-state");
    setText(state, job.state);
    state.className = `state state-${job.state}`;
    setText(document.getElementById("job-error"), job.error || "");
    const p = job.progress || {};
    const bar = document.getElementById("job-progress");
    if (p.event === "step") bar.value = p.step / p.total;
    else if (p.event === "trial") bar.value = p.evaluated / p.target;
    if (job.state === "completed") bar.value = 1;
    setText(document.getElementById("job-figures"), progressLine(job));
    const log = document.getElementById("job-log");
    const atEnd = log.scrollTop + log.clientHeight >= log.scrollHeight - 5;
    log.textContent = (job.log || []).join("\n");
    if (atEnd) log.scrollTop = log.scrollHeight;
    const active = job.state === "running" || job.state === "starting";
    stop.hidden = !active;
    resume.hidden = !(job.kind === "distill" && ["stopped", "interrupted", "failed"].includes(job.state));
    if (job.state === "completed" && job.result && job.result.export && !cardShown) {
      cardShown = true;
      document.getElementById("job-done").hidden = false;
      document.getElementById("job-export").textContent = job.result.export;
      document.getElementById("job-command").textContent = job.result.command;
      try {
        const card = await api(`/api/studies/${encodeURIComponent(job.study)}/trials/${job.result.trial}/card`);
        document.getElementById("job-card").textContent = card.markdown;
      } catch (e) {
        document.getElementById("job-card").textContent = e.message;
      }
    }
    if (active) again(1000);
  }
  stop.addEventListener("click", async () => {
    stop.disabled = true;
    try {
      await api(`/api/jobs/${id}/stop`, { method: "POST", body: "{}" });
    } finally {
      stop.disabled = false;
      refresh();
    }
  });
  resume.addEventListener("click", async () => {
    try {
      const job = await api(`/api/jobs/${id}/resume`, { method: "POST", body: "{}" });
      window.location.href = `/jobs/${job.id}`;
    } catch (e) {
      document.getElementById("job-error").textContent = e.message;
    }
  });
  refresh();
}

// Each page's script, by the page's name (no inline scripts: the pages' Content-Security-Policy forbids them).
const PAGES = {
  studies: () => studiesPage(),
  study: () => studyPage(document.body.dataset.study),
  trial: () => trialPage(),
  job: () => jobPage(document.body.dataset.job),
};
if (PAGES[document.body.dataset.page]) PAGES[document.body.dataset.page]();
