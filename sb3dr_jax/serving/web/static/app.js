// The front end: sketch canvas (Pointer Events), benchmark sketches, results, 3D viewer,
// accounts and history. Plain ES modules, no build step; three.js is loaded on first use
// from the npm package the server serves under /vendor/three/.

const $ = (id) => document.getElementById(id);
const state = { user: null, csrf: null, info: null, lastSource: null };

// ---------------------------------------------------------------- API helper
async function api(path, { method = "GET", json, form } = {}) {
  const headers = {};
  let body;
  if (method !== "GET") headers["X-CSRF-Token"] = state.csrf || "";
  if (json !== undefined) { headers["Content-Type"] = "application/json"; body = JSON.stringify(json); }
  if (form !== undefined) body = form;
  const r = await fetch(path, { method, headers, body, credentials: "same-origin" });
  let data = null;
  try { data = await r.json(); } catch { data = { error: `HTTP ${r.status}` }; }
  if (!r.ok) { const e = new Error(data.error || `HTTP ${r.status}`); e.status = r.status; throw e; }
  return data;
}

function setStatus(el, text, isError = false) {
  el.textContent = text;
  el.classList.toggle("error", isError);
}

// ---------------------------------------------------------------- sketch canvas
const canvas = $("sketch");
const ctx = canvas.getContext("2d", { willReadFrequently: true });
const strokes = []; // {erase, width, points: [[x, y, pressure]]}
let current = null;
let tool = "pen";

function paper() {
  ctx.save();
  ctx.globalCompositeOperation = "source-over";
  ctx.fillStyle = "#fff";
  ctx.fillRect(0, 0, canvas.width, canvas.height);
  ctx.restore();
}

function drawStroke(s) {
  ctx.strokeStyle = s.erase ? "#fff" : "#000";
  ctx.fillStyle = ctx.strokeStyle;
  ctx.lineCap = "round";
  ctx.lineJoin = "round";
  const pts = s.points;
  const w = (p) => s.width * (s.erase ? 3 : 1) * (0.35 + 1.3 * p[2]);
  if (pts.length === 1) {
    ctx.beginPath();
    ctx.arc(pts[0][0], pts[0][1], w(pts[0]) / 2, 0, 2 * Math.PI);
    ctx.fill();
    return;
  }
  for (let i = 1; i < pts.length; i++) {
    ctx.lineWidth = w(pts[i]);
    ctx.beginPath();
    ctx.moveTo(pts[i - 1][0], pts[i - 1][1]);
    ctx.lineTo(pts[i][0], pts[i][1]);
    ctx.stroke();
  }
}

function redraw() {
  paper();
  if (state.background) ctx.drawImage(state.background, 0, 0, canvas.width, canvas.height);
  strokes.forEach(drawStroke);
}

function toCanvas(e) {
  const r = canvas.getBoundingClientRect();
  // Mouse reports pressure 0.5 while a button is down; pens and some touch screens report
  // the real value.
  const p = e.pointerType === "mouse" || !e.pressure ? 0.5 : e.pressure;
  return [((e.clientX - r.left) * canvas.width) / r.width, ((e.clientY - r.top) * canvas.height) / r.height, p];
}

canvas.addEventListener("pointerdown", (e) => {
  if (e.button !== 0) return;
  try { canvas.setPointerCapture(e.pointerId); } catch { /* pointer already gone: draw anyway */ }
  current = { erase: tool === "eraser", width: +$("stroke-width").value, points: [toCanvas(e)] };
  strokes.push(current);
  drawStroke(current);
  e.preventDefault();
});
canvas.addEventListener("pointermove", (e) => {
  if (!current) return;
  // Coalesced events: every sample the pen gave since the last frame (none on some browsers).
  const coalesced = e.getCoalescedEvents ? e.getCoalescedEvents() : [];
  const events = coalesced.length ? coalesced : [e];
  for (const ev of events) current.points.push(toCanvas(ev));
  const n = current.points.length;
  drawStroke({ ...current, points: current.points.slice(Math.max(0, n - events.length - 1)) });
  e.preventDefault();
});
const endStroke = () => { current = null; };
canvas.addEventListener("pointerup", endStroke);
canvas.addEventListener("pointercancel", endStroke);

function undo() { strokes.pop(); redraw(); }
function clearCanvas() { strokes.length = 0; state.background = null; state.benchmark = null; redraw(); }
function setTool(t) {
  tool = t;
  for (const [id, name] of [["tool-pen", "pen"], ["tool-eraser", "eraser"]]) {
    $(id).classList.toggle("active", t === name);
    $(id).setAttribute("aria-pressed", String(t === name));
  }
}
$("undo").onclick = undo;
$("clear").onclick = clearCanvas;
$("tool-pen").onclick = () => setTool("pen");
$("tool-eraser").onclick = () => setTool("eraser");

document.addEventListener("keydown", (e) => {
  if (e.target.closest("input, select, textarea") || $("viewer").open) return;
  const mod = e.ctrlKey || e.metaKey;
  if (mod && e.key.toLowerCase() === "z") { e.preventDefault(); undo(); }
  else if (mod && e.key === "Enter") { e.preventDefault(); search(); }
  else if (e.shiftKey && (e.key === "Delete" || e.key === "Backspace")) { e.preventDefault(); clearCanvas(); }
  else if (!mod && e.key.toLowerCase() === "e") setTool("eraser");
  else if (!mod && e.key.toLowerCase() === "p") setTool("pen");
});

// ---------------------------------------------------------------- search + results
function resultCard(r) {
  const card = document.createElement("button");
  card.type = "button";
  card.className = "card" + (r.mesh_url ? "" : " nomesh");
  card.dataset.modelId = r.model_id;
  card.title = r.mesh_url ? "Open in the 3D viewer" : "no mesh in this export";
  const img = document.createElement("img");
  img.alt = `${r.label} ${r.model_id}`;
  img.loading = "lazy";
  if (r.thumbnail_url) img.src = r.thumbnail_url;
  const label = document.createElement("span");
  label.className = "label";
  label.textContent = `${r.rank}. ${r.label}`;
  const score = document.createElement("span");
  score.className = "score";
  score.textContent = `score ${r.score.toFixed(3)} · id ${r.model_id}`;
  card.append(img, label, score);
  card.onclick = () => openViewer(r);
  return card;
}

function showResults(container, results) {
  container.replaceChildren(...results.map(resultCard));
}

async function search() {
  const status = $("status");
  const k = Math.max(1, Math.min(50, +$("k").value || 10));
  setStatus(status, "Searching…");
  try {
    let data;
    if (state.benchmark && strokes.length === 0) {
      data = await api(`/api/query?k=${k}`, { method: "POST", json: { benchmark: state.benchmark } });
    } else {
      const blob = await new Promise((res) => canvas.toBlob(res, "image/png"));
      const form = new FormData();
      form.append("sketch", blob, "sketch.png");
      data = await api(`/api/query?k=${k}`, { method: "POST", form });
    }
    showResults($("results"), data.results);
    $("query-time").textContent = `(${data.results.length} in ${data.query_ms.toFixed(0)} ms)`;
    setStatus(status, data.history_id ? "Saved to your history." : state.user ? "" : "Log in to keep a history.");
  } catch (e) {
    setStatus(status, e.message, true);
  }
}
$("search").onclick = search;

// ---------------------------------------------------------------- benchmark sketches
async function loadBenchmarks() {
  const split = (state.info.sketch_splits || [])[0];
  if (!split) { $("bench").hidden = true; return; }
  const data = await api(`/api/sketches?split=${encodeURIComponent(split)}`);
  const sel = $("bench-class");
  sel.replaceChildren(...["(all)", ...data.classes].map((c) => new Option(c, c)));
  const render = () => {
    const items = sel.value === "(all)" ? data.sketches : data.sketches.filter((s) => s.label === sel.value);
    $("bench-grid").replaceChildren(...items.map((s) => {
      const b = document.createElement("button");
      b.type = "button";
      b.title = `${s.label} (${s.id})`;
      b.dataset.sketchId = s.id;
      const img = document.createElement("img");
      img.loading = "lazy";
      img.alt = s.label;
      img.src = s.url;
      b.append(img);
      b.onclick = () => pickBenchmark(s, img);
      return b;
    }));
  };
  sel.onchange = render;
  render();
}

function pickBenchmark(s, img) {
  strokes.length = 0;
  state.background = img;
  state.benchmark = { split: s.split, id: s.id };
  // A lazy thumbnail may still be loading: draw it again once it is there.
  if (!img.complete) img.addEventListener("load", redraw, { once: true });
  redraw();
  search();
}

// ---------------------------------------------------------------- 3D viewer
let three = null;
let viewer = null;

async function loadThree() {
  if (!three) {
    const [core, controls, loader] = await Promise.all([
      import("three"),
      import("three/addons/controls/OrbitControls.js"),
      import("three/addons/loaders/GLTFLoader.js"),
    ]);
    three = { THREE: core, OrbitControls: controls.OrbitControls, GLTFLoader: loader.GLTFLoader };
  }
  return three;
}

function makeViewer({ THREE, OrbitControls }) {
  const stage = $("viewer-stage");
  const renderer = new THREE.WebGLRenderer({ antialias: true, preserveDrawingBuffer: true });
  renderer.setPixelRatio(Math.min(window.devicePixelRatio, 2));
  stage.append(renderer.domElement);
  const scene = new THREE.Scene();
  scene.background = new THREE.Color(0xeef1f5);
  scene.add(new THREE.HemisphereLight(0xffffff, 0x8090a0, 1.6));
  const sun = new THREE.DirectionalLight(0xffffff, 1.8);
  sun.position.set(2, 3, 4);
  scene.add(sun);
  const camera = new THREE.PerspectiveCamera(40, 4 / 3, 0.01, 100);
  const controls = new OrbitControls(camera, renderer.domElement);
  controls.enableDamping = true;
  const home = () => { camera.position.set(2.2, 1.5, 3.0); controls.target.set(0, 0, 0); controls.update(); };
  home();
  const resize = () => {
    const w = stage.clientWidth || 400, h = stage.clientHeight || 300;
    renderer.setSize(w, h, false);
    camera.aspect = w / h;
    camera.updateProjectionMatrix();
  };
  new ResizeObserver(resize).observe(stage);
  renderer.setAnimationLoop(() => { if ($("viewer").open) { controls.update(); renderer.render(scene, camera); } });
  return { scene, camera, controls, renderer, home, resize, object: null };
}

async function openViewer(r) {
  const dlg = $("viewer");
  $("viewer-title").textContent = `${r.label} · ${r.model_id}`;
  const views = $("viewer-views");
  views.hidden = true;
  api(`/api/models/${encodeURIComponent(r.model_id)}`).then((m) => {
    if (m.views_url) { views.src = m.views_url; views.hidden = false; }
  }).catch(() => {});
  dlg.showModal();
  const status = $("viewer-status");
  if (!r.mesh_url) { setStatus(status, "This export has no mesh for this model."); return; }
  if (!state.info.viewer) { setStatus(status, "3D viewer not installed on the server (npm ci).", true); return; }
  setStatus(status, "Loading mesh…");
  try {
    const lib = await loadThree();
    viewer = viewer || makeViewer(lib);
    viewer.resize();
    const gltf = await new lib.GLTFLoader().loadAsync(r.mesh_url);
    if (viewer.object) viewer.scene.remove(viewer.object);
    const material = new lib.THREE.MeshStandardMaterial({ color: 0x8fa3c7, roughness: 0.55, metalness: 0.05, side: lib.THREE.DoubleSide, flatShading: true });
    gltf.scene.traverse((o) => { if (o.isMesh) o.material = material; });
    viewer.object = gltf.scene;
    viewer.scene.add(gltf.scene);
    viewer.home();
    setStatus(status, "Drag to orbit, wheel or pinch to zoom, right-drag to pan; R resets.");
    dlg.dataset.loaded = r.model_id;
  } catch (e) {
    setStatus(status, `Could not show the mesh: ${e.message}`, true);
  }
}
$("viewer-close").onclick = () => $("viewer").close();
$("viewer-reset").onclick = () => viewer && viewer.home();
$("viewer").addEventListener("keydown", (e) => { if (e.key.toLowerCase() === "r" && viewer) viewer.home(); });
$("viewer").addEventListener("close", () => { delete $("viewer").dataset.loaded; });

// ---------------------------------------------------------------- accounts
function showUser() {
  $("who").textContent = state.user ? `Signed in as ${state.user.username}` : "";
  $("nav-login").hidden = !!state.user;
  $("logout").hidden = !state.user;
}

async function refreshSession() {
  const s = await api("/api/session");
  state.user = s.user;
  state.csrf = s.csrf;
  showUser();
}

async function authenticate(kind) {
  const status = $("auth-status");
  const body = { username: $("username").value.trim(), password: $("password").value };
  try {
    const s = await api(`/api/${kind}`, { method: "POST", json: body });
    state.user = s.user;
    state.csrf = s.csrf;
    showUser();
    $("password").value = "";
    setStatus(status, "");
    location.hash = "#/";
  } catch (e) {
    setStatus(status, e.message, true);
  }
}
$("auth-form").addEventListener("submit", (e) => { e.preventDefault(); authenticate("login"); });
$("register").onclick = () => { if ($("auth-form").reportValidity()) authenticate("register"); };
$("logout").onclick = async () => {
  const s = await api("/api/logout", { method: "POST" });
  state.user = null;
  state.csrf = s.csrf;
  showUser();
  location.hash = "#/";
};

// ---------------------------------------------------------------- history
async function loadHistory() {
  $("history-detail").hidden = true;
  $("history-list").hidden = false;
  if (!state.user) { location.hash = "#/login"; return; }
  const data = await api("/api/history?limit=100");
  $("history-empty").hidden = data.items.length > 0;
  $("history-list").replaceChildren(...data.items.map((q) => {
    const row = document.createElement("button");
    row.type = "button";
    row.className = "history-item";
    row.dataset.queryId = q.id;
    const img = document.createElement("img");
    img.src = q.sketch_url;
    img.alt = "sketch";
    const meta = document.createElement("span");
    meta.className = "meta";
    const top = q.top && q.top[0] ? `${q.top[0].label} (${q.top[0].score.toFixed(3)})` : "";
    meta.textContent = `${new Date(q.created_at).toLocaleString()} · top: ${top}${q.same_export ? "" : " · older export"}`;
    row.append(img, meta);
    row.onclick = () => showHistoryItem(q.id);
    return row;
  }));
}

async function showHistoryItem(id) {
  const q = await api(`/api/history/${encodeURIComponent(id)}`);
  $("history-list").hidden = true;
  $("history-empty").hidden = true;
  const d = $("history-detail");
  d.hidden = false;
  d.dataset.queryId = q.id;
  $("history-sketch").src = q.sketch_url;
  $("history-meta").textContent = `${new Date(q.created_at).toLocaleString()} · ${q.source} · ${q.results.length} results in ${q.query_ms} ms · export ${q.export_id}${q.same_export ? "" : " (not the loaded one)"}`;
  showResults($("history-results"), q.results);
}
$("history-close").onclick = loadHistory;
$("history-delete").onclick = async () => {
  const id = $("history-detail").dataset.queryId;
  if (!id) return;
  await api(`/api/history/${encodeURIComponent(id)}`, { method: "DELETE" });
  loadHistory();
};

// ---------------------------------------------------------------- routing
function route() {
  const page = (location.hash.replace(/^#\//, "") || "search").split("/")[0];
  const known = ["search", "history", "login"].includes(page) ? page : "search";
  for (const p of ["search", "history", "login"]) $(`page-${p}`).hidden = p !== known;
  for (const [id, p] of [["nav-search", "search"], ["nav-history", "history"], ["nav-login", "login"]]) $(id).classList.toggle("current", p === known);
  if (known === "history") loadHistory().catch((e) => setStatus($("status"), e.message, true));
}
window.addEventListener("hashchange", route);

async function main() {
  redraw();
  state.info = await api("/api/info");
  await refreshSession();
  route();
  loadBenchmarks().catch(() => { $("bench").hidden = true; });
  document.body.dataset.ready = "1";
}
main();
