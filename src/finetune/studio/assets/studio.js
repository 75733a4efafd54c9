// finetune studio: draws each page from the JSON the server put in it, and keeps it live with server-sent
// events. No framework and no CDN: charts are hand-drawn SVG.
"use strict";
const DATA = JSON.parse(document.getElementById("page-data").textContent);
const TOKEN = document.querySelector('meta[name="studio-token"]').content;
const $ = (id) => document.getElementById(id);
const esc = (s) => String(s ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
const num = (x, d = 4) => (typeof x === "number" ? x.toFixed(d) : "");
const when = (t) => (t ? new Date(t * 1000).toLocaleString() : "");
const secs = (s) => (typeof s === "number" ? (s < 90 ? `${s.toFixed(0)} s` : s < 5400 ? `${(s / 60).toFixed(1)} min` : `${(s / 3600).toFixed(1)} h`) : "");

async function post(url, body) {
  const r = await fetch(url, { method: "POST", headers: { "Content-Type": "application/json", "X-Studio-Token": TOKEN }, body: JSON.stringify(body || {}) });
  const out = await r.json().catch(() => ({}));
  if (!r.ok && !out.error) out.error = `HTTP ${r.status}`;
  return out;
}

function live(url, draw) {
  const source = new EventSource(url);
  source.onmessage = (e) => draw(JSON.parse(e.data));
  return source;
}

// ---------------------------------------------------------------- SVG line chart
const COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"];
function chart(svg, series) {
  // series: [{name, points: [[x, y], ...]}]
  const W = 520, H = 240, L = 56, B = 24, T = 10, R = 10;
  svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
  const all = series.flatMap((s) => s.points);
  if (!all.length) { svg.innerHTML = `<text x=20 y=40 fill="#888">no points yet</text>`; return; }
  let [x0, x1] = [Math.min(...all.map((p) => p[0])), Math.max(...all.map((p) => p[0]))];
  let [y0, y1] = [Math.min(...all.map((p) => p[1])), Math.max(...all.map((p) => p[1]))];
  if (x1 === x0) x1 = x0 + 1;
  if (y1 === y0) { y1 += Math.abs(y1) * 0.1 + 1e-9; y0 -= Math.abs(y0) * 0.1 + 1e-9; }
  const sx = (x) => L + ((x - x0) / (x1 - x0)) * (W - L - R);
  const sy = (y) => T + (1 - (y - y0) / (y1 - y0)) * (H - T - B);
  let out = `<line x1=${L} y1=${H - B} x2=${W - R} y2=${H - B} stroke="#999"/><line x1=${L} y1=${T} x2=${L} y2=${H - B} stroke="#999"/>`;
  for (let i = 0; i <= 4; i++) {
    const y = y0 + ((y1 - y0) * i) / 4;
    out += `<text x=2 y=${sy(y) + 4} font-size=10 fill="#666">${y.toPrecision(3)}</text>`;
    const x = x0 + ((x1 - x0) * i) / 4;
    out += `<text x=${sx(x) - 8} y=${H - 8} font-size=10 fill="#666">${Math.round(x)}</text>`;
  }
  series.forEach((s, i) => {
    if (!s.points.length) return;
    const d = s.points.map((p, j) => `${j ? "L" : "M"}${sx(p[0]).toFixed(1)},${sy(p[1]).toFixed(1)}`).join("");
    out += `<path class="curve" data-name="${esc(s.name)}" d="${d}" fill="none" stroke="${COLORS[i % COLORS.length]}" stroke-width="1.6"/>`;
    out += `<text x=${W - R - 150} y=${T + 12 + 12 * i} font-size=11 fill="${COLORS[i % COLORS.length]}">${esc(s.name)}</text>`;
  });
  svg.innerHTML = out;
  svg.dataset.points = String(all.length);
}

// ---------------------------------------------------------------- Runs (home)
function runsPage() {
  const selected = new Set();
  const draw = (d) => {
    $("runs").tBodies[0].innerHTML = d.runs.map((r) => `<tr data-run="${esc(r.name)}">
      <td><input type=checkbox ${selected.has(r.name) ? "checked" : ""} data-name="${esc(r.name)}"></td>
      <td><a href="/run?name=${encodeURIComponent(r.name)}">${esc(r.name)}</a></td><td>${esc(r.base)}</td><td>${esc(r.method)}</td>
      <td class="status-${esc(r.status)}">${esc(r.status)}${r.reason ? `: <small>${esc(r.reason)}</small>` : ""}</td>
      <td>${r.step ?? ""}${r.total ? " / " + r.total : ""}</td><td>${num(r.train_loss)}</td><td>${num(r.eval_loss)}</td>
      <td>${esc(r.metric)}</td><td>${when(r.started)}</td><td>${secs(r.duration)}</td>
      <td>${r.peak_memory_mb ? (r.peak_memory_mb / 1024).toFixed(2) + " GiB" : ""}</td></tr>`).join("");
    $("jobs").tBodies[0].innerHTML = d.jobs.slice(-15).reverse().map((j) => `<tr><td>${esc(j.id)}</td><td><code>${esc(j.command)}</code></td><td>${esc(j.status)}</td></tr>`).join("");
  };
  draw(DATA.data);
  $("runs").addEventListener("change", (e) => {
    const name = e.target.dataset.name;
    if (!name) return;
    e.target.checked ? selected.add(name) : selected.delete(name);
    $("compare").disabled = selected.size < 2;
  });
  $("compare").onclick = () => { location.href = "/compare?" + [...selected].map((n) => "run=" + encodeURIComponent(n)).join("&"); };
  live("/api/events", draw);
}

// ---------------------------------------------------------------- A run
function runPage() {
  const run = DATA.run;
  const q = "?name=" + encodeURIComponent(run.name);
  $("run-name").textContent = run.name;
  const shown = {};  // the files' parts as last drawn: redrawn only when they change (a choice made there stays)
  const drawFiles = (f) => {
    const changed = (key) => { const text = JSON.stringify(f[key]); if (shown[key] === text) return false; shown[key] = text; return true; };
    if (changed("config")) $("config").textContent = f.config || "(not written yet)";
    if (changed("card")) $("card").innerHTML = f.card || "<i>no card yet (written when training ends)</i>";
    if (changed("evals")) drawEvals(f.evals);
    if (changed("predictions")) {
      const chosen = $("pred-file").value;
      $("pred-file").innerHTML = f.predictions.map((n) => `<option>${esc(n)}</option>`).join("");
      if (f.predictions.includes(chosen)) $("pred-file").value = chosen;
      showPredictions();
    }
  };
  const draw = (s) => {
    const p = s.progress;
    $("status").textContent = s.row.status + (s.row.reason ? ` (${s.row.reason})` : "");
    $("status").className = "status-" + s.row.status;
    $("step").textContent = `${p.step ?? 0}${p.total ? " / " + p.total : ""}`;
    $("eta").textContent = s.row.status === "running" ? secs(p.eta_seconds) : "";
    $("tps").textContent = p.tokens_per_second ? p.tokens_per_second.toFixed(0) : "";
    $("loss").textContent = num(p.loss);
    const c = s.curves;
    chart($("loss-chart"), [{ name: "train loss", points: c.loss || [] }, { name: "eval loss", points: c.eval_loss || [] }]);
    chart($("lr-chart"), [{ name: "learning rate", points: c.learning_rate || [] }]);
    $("run-jobs").innerHTML = s.jobs.slice().reverse().map((j) => `<details ${j.status === "running" || j.kind === "push" ? "open" : ""}><summary><code>${esc(j.command)}</code> — <b class="job-status">${esc(j.status)}</b></summary><pre>${esc(j.log)}</pre></details>`).join("");
    drawFiles(s.files);
  };
  const act = async (name, body) => {
    const out = await post(`/api/action/${name}${q}`, body);
    if (out.error) alert(out.error);
  };
  $("stop").onclick = () => act("stop");
  $("resume").onclick = () => act("resume");
  $("export").onclick = () => act("export", { quant: "q8_0" });
  $("merge").onclick = () => act("merge");
  $("eval").onclick = () => act("eval", { data: $("eval-data").value });
  $("push").onclick = async () => {
    const repo = $("push-repo").value;
    await act("push", { repo });
    setTimeout(() => { if (confirm(`The dry run lists the files (see Jobs). Push them to ${repo} now?`)) act("push", { repo, confirm: true }); }, 4000);
  };
  // eval results: per-class F1 and confusion matrix
  const drawEvals = (evals) => { $("evals").innerHTML = Object.entries(evals).map(([data, byModel]) => Object.entries(byModel).map(([who, e]) => {
    let h = `<h3>${esc(data)} — ${esc(who)}</h3><p>${["accuracy", "macro_f1", "weighted_f1", "exact_match", "numeric_match"].filter((k) => k in e).map((k) => `${k} <b>${num(e[k], 3)}</b>`).join(", ")} (${e.examples} rows)</p>`;
    if (e.per_class) h += `<table class=grid><tr><th>class</th><th>precision</th><th>recall</th><th>F1</th><th>support</th></tr>${Object.entries(e.per_class).map(([k, v]) => `<tr><td>${esc(k)}</td><td>${num(v.precision, 3)}</td><td>${num(v.recall, 3)}</td><td>${num(v.f1, 3)}</td><td>${v.support ?? ""}</td></tr>`).join("")}</table>`;
    return h;
  }).join("")).join("") || "<i>none yet: Eval on a file</i>"; };
  const showPredictions = async () => {
    if (!$("pred-file").value) return;
    const { rows, confusion: c } = await (await fetch(`/api/predictions${q}&file=${encodeURIComponent($("pred-file").value)}`)).json();
    const matrix = c && c.labels ? `<h3>confusion matrix</h3><table class=grid id=confusion><tr><th>true \\ predicted</th>${c.columns.map((l) => `<th>${esc(l)}</th>`).join("")}</tr>${c.matrix.map((row, i) => `<tr><th>${esc(c.labels[i])}</th>${row.map((n) => `<td>${n}</td>`).join("")}</tr>`).join("")}</table>` : "";
    $("predictions").innerHTML = matrix + `<table class=grid><tr><th>line</th><th>input</th><th>target</th><th>prediction</th></tr>${rows.map((r) => `<tr class="${r.correct ? "" : "wrong"}"><td>${r.line}</td><td>${esc(String(r.input).slice(0, 300))}</td><td>${esc(r.target)}</td><td>${esc(r.prediction)}</td></tr>`).join("")}</table>`;
  };
  $("pred-file").onchange = showPredictions;
  draw(DATA.state);
  live("/api/events" + q, draw);
}

// ---------------------------------------------------------------- New run
function newPage() {
  const yaml = $("yaml"), gutter = $("gutter");
  let bad = new Map(), timer = null, planTimer = null;
  DATA.starts.forEach((p) => { const o = document.createElement("option"); o.value = o.textContent = p; $("start-from").appendChild(o); });
  $("start-from").value = DATA.start;
  yaml.value = DATA.text;
  const name = () => $("run-name-input").value.trim();
  const drawGutter = () => {
    const n = yaml.value.split("\n").length;
    let h = "";
    for (let i = 1; i <= n; i++) h += bad.has(i) ? `<span class=bad title="${esc(bad.get(i))}">${i}</span>\n` : `${i}\n`;
    gutter.innerHTML = h;
    yaml.style.height = `${Math.max(550, n * 18 + 10)}px`;
  };
  const validate = async () => {
    const out = await post("/api/validate", { text: yaml.value, name: name() });
    bad = new Map((out.problems || []).filter((p) => p.line).map((p) => [p.line, p.message]));
    $("problems").innerHTML = (out.problems || []).map((p) => `<li data-line="${p.line}">${esc(p.message)}</li>`).join("") || (out.ok ? "<li class=ok style='color:#080'>OK</li>" : "");
    drawGutter();
    clearTimeout(planTimer);
    if (out.ok) planTimer = setTimeout(plan, 200);
    else { asked++; $("plan").innerHTML = "<i>the plan shows once the messages are fixed</i>"; }
  };
  let asked = 0;  // a plan answer for an older text is dropped
  const plan = async () => {
    const mine = ++asked;
    $("plan").innerHTML = "<i>planning…</i>";
    const p = await post("/api/plan", { text: yaml.value, device: $("device").value, gpus: $("gpus").value });
    if (mine !== asked) return;
    if (p.error) { $("plan").innerHTML = `<p class=nofit>${esc(p.error)}</p>`; return; }
    const sp = p.speed || {};
    $("plan").innerHTML = `<p class="${p.fits ? "fits" : "nofit"}" id=plan-verdict>${p.fits ? "fits" : "does not fit"}: ${p.peak_memory_gib.toFixed(2)} of ${p.device_memory_gib.toFixed(1)} GiB on ${esc(p.device)}</p>
      <table class=grid>${Object.entries(p.parts).filter(([, v]) => v).map(([k, v]) => `<tr><td>${esc(p.labels[k])}</td><td>${v.toFixed(2)} GiB</td></tr>`).join("")}</table>
      <p>~${Math.round(p.tokens_per_second)} tokens/s${sp.optimizer_steps ? `, ${sp.optimizer_steps} optimizer steps` : ""}${sp.wall_hours ? `, ~${(sp.wall_hours * 60).toFixed(1)} min` : ""}</p>
      ${p.fixes.length ? `<p><b>smallest fix:</b> ${esc(p.fixes[0])}</p>` : ""}${p.notes.map((n) => `<p><small>note: ${esc(n)}</small></p>`).join("")}`;
  };
  const command = () => { $("command").textContent = `finetune train configs/${name()}.yml`; };
  yaml.addEventListener("input", () => { drawGutter(); clearTimeout(timer); timer = setTimeout(validate, 300); });
  $("run-name-input").addEventListener("input", command);
  $("device").onchange = plan; $("gpus").onchange = plan;
  $("start-from").onchange = () => { location.href = "/new?from=" + encodeURIComponent($("start-from").value); };
  $("preview-btn").onclick = async () => {
    $("preview").innerHTML = "<i>tokenizing…</i>";
    const p = await post("/api/preview", { text: yaml.value });
    if (p.error) { $("preview").innerHTML = `<p class=nofit>${esc(p.error)}</p>`; return; }
    $("preview").innerHTML = `<p><span class=trained>trained</span> against <span class=masked>masked</span> tokens; ${p.train_rows} training rows</p>` +
      p.rows.map((r, i) => `<div class=row-preview><b>row ${i}: ${r.tokens} tokens</b>\n${r.segments.map(([t, tr]) => `<span class="${tr ? "trained" : "masked"}">${esc(t)}</span>`).join("")}</div>`).join("");
  };
  $("start").onclick = async () => {
    const out = await post("/api/start", { text: yaml.value, name: name() });
    if (out.error) { $("start-result").textContent = out.error; return; }
    location.href = "/run?name=" + encodeURIComponent(out.run);
  };
  command(); drawGutter();
  if (yaml.value) validate();
}

// ---------------------------------------------------------------- Compare
function comparePage() {
  const d = DATA.data;
  chart($("compare-chart"), Object.entries(d.series).map(([name, points]) => ({ name, points })));
  const names = d.rows.map((r) => r.name);
  $("diff").innerHTML = `<tr><th>key</th>${names.map((n) => `<th>${esc(n)}</th>`).join("")}</tr>` +
    Object.entries(d.diff).map(([k, v]) => `<tr><td>${esc(k)}</td>${names.map((n) => `<td>${esc(v[n])}</td>`).join("")}</tr>`).join("");
  const fields = [["status", (r) => r.status], ["steps", (r) => r.step], ["train loss", (r) => num(r.train_loss)], ["eval loss", (r) => num(r.eval_loss)], ["metric", (r) => r.metric], ["duration", (r) => secs(r.duration)]];
  $("results").innerHTML = `<tr><th></th>${names.map((n) => `<th>${esc(n)}</th>`).join("")}</tr>` +
    fields.map(([label, f]) => `<tr><td>${label}</td>${d.rows.map((r) => `<td>${esc(f(r))}</td>`).join("")}</tr>`).join("");
}

// ---------------------------------------------------------------- Playground
function playgroundPage() {
  const opts = DATA.runs.map((n) => `<option>${esc(n)}</option>`).join("");
  $("run-a").innerHTML = opts;
  $("run-b").innerHTML += opts;
  $("send").onclick = async () => {
    const targets = [];
    if ($("with-base").checked && $("run-a").value) targets.push({ label: `base (${$("run-a").value}'s format)`, run: $("run-a").value, base: true });
    if ($("run-a").value) targets.push({ label: $("run-a").value, run: $("run-a").value, base: false });
    if ($("run-b").value) targets.push({ label: $("run-b").value, run: $("run-b").value, base: false });
    $("answers").innerHTML = targets.map((t, i) => `<div><h3>${esc(t.label)}</h3><div class=answer id=answer-${i}></div></div>`).join("");
    const settings = { prompt: $("prompt").value, system: $("system").value, max_new_tokens: +$("max-new").value, temperature: +$("temperature").value };
    for (const [i, t] of targets.entries()) {  // one model answers at a time: the server runs one generation
      const r = await fetch("/api/chat", { method: "POST", headers: { "Content-Type": "application/json", "X-Studio-Token": TOKEN }, body: JSON.stringify({ ...settings, run: t.run, base: t.base }) });
      const reader = r.body.getReader(), dec = new TextDecoder(), box = $(`answer-${i}`);
      let chunks = 0;
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        box.textContent += dec.decode(value, { stream: true });
        box.dataset.chunks = String(++chunks);
      }
      if (!box.textContent) { box.dataset.empty = "1"; box.innerHTML = "<i>(it ended its turn at once: no text)</i>"; }
      box.dataset.done = "1";
    }
  };
}

({ runs: runsPage, run: runPage, new: newPage, compare: comparePage, playground: playgroundPage })[document.body.dataset.page]();
