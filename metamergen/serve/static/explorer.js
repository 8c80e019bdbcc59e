// MetamerGen explorer: plain JS, no build step, nothing loaded from anywhere but this server.
//
// Coordinates: fixations are kept and sent in pixels of the scene image as the server decoded it
// (GET /scenes/{id}/image): origin top-left, x right, y down, pixel i covering [i, i + 1). The
// overlay is an SVG whose viewBox is the image's size, so a marker's position is its fixation.
"use strict";

const $ = (id) => document.getElementById(id);
const SVG_NS = "http://www.w3.org/2000/svg";
const KEY_STORAGE = "metamergen-api-key";

const state = {
  settings: null, // GET /settings
  scene: null, // {scene_id, name, width, height}
  viewer: [], // the toy viewer's fixations of a demo scene
  fixations: [], // [[x, y], ...] image pixels, in viewing order
  sceneUrl: null,
  viewUrl: null,
  viewAbort: null,
  viewTimer: null,
  renderAbort: null,
};

// ------------------------------------------------------------------------------- the API

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

function headers(extra = {}) {
  const key = sessionStorage.getItem(KEY_STORAGE);
  return key ? { ...extra, "X-API-Key": key } : extra;
}

async function api(path, { method = "GET", json, body, type, signal } = {}) {
  const init = { method, signal, headers: headers() };
  if (json !== undefined) {
    init.body = JSON.stringify(json);
    init.headers["Content-Type"] = "application/json";
  } else if (body !== undefined) {
    init.body = body;
    init.headers["Content-Type"] = type || "application/octet-stream";
  }
  const response = await fetch(path, init);
  if (!response.ok) {
    let message = `HTTP ${response.status}`;
    try {
      message = (await response.json()).message || message;
    } catch (_) {
      /* not JSON: keep the status */
    }
    if (response.status === 401) $("key-form").hidden = false;
    throw new ApiError(response.status, message);
  }
  return response;
}

function say(text, kind = "") {
  const el = $("message");
  el.textContent = text;
  el.className = `message ${kind}`;
}

function failed(err) {
  if (err.name === "AbortError") return;
  say(err.message, "error");
}

// ------------------------------------------------------------------------------- settings

const CONDITION_LABELS = {
  both: "both streams",
  foveal: "foveal only (periphery dropped)",
  peripheral: "peripheral only (fovea dropped)",
  "foveal:dropped": "foveal only, periphery dropped",
  "foveal:off": "foveal only, λp = 0",
  "peripheral:dropped": "peripheral only, fovea dropped",
  "peripheral:off": "peripheral only, λf = 0",
};

function fraction(s) {
  const inverse = 1 / s;
  if (s === 1) return "1 (no blur)";
  return Number.isInteger(inverse) && inverse > 1 ? `1/${inverse}` : String(s);
}

function fillSettings(settings) {
  const d = settings.defaults;
  const model = settings.model.replace(/\/+$/, "").split("/").pop();
  $("model").textContent =
    `${model} · canvas ${settings.canvas_size} px, ${settings.grid_size} × ${settings.grid_size} patches of ${settings.patch_size} px`;
  $("model").title = settings.model;
  $("foveal-scale").value = d.foveal_scale;
  $("peripheral-scale").value = d.peripheral_scale;
  $("steps").value = d.steps;
  $("steps").max = settings.limits.max_steps;
  $("hypotheses").max = settings.limits.max_hypotheses;
  $("hypotheses").value = Math.min(2, settings.limits.max_hypotheses);
  const levels = [...new Set([...settings.blur_levels, d.peripheral_blur])].sort((a, b) => a - b);
  $("blur").replaceChildren(
    ...levels.map((s) => new Option(fraction(s) + (s === d.peripheral_blur ? " (default)" : ""), s, false, s === d.peripheral_blur)),
  );
  $("condition").replaceChildren(...settings.conditions.map((c) => new Option(CONDITION_LABELS[c] || c, c)));
  for (const id of ["foveal-scale", "peripheral-scale"]) showRange(id);
}

function showRange(id) {
  document.querySelector(`output[for="${id}"]`).textContent = Number($(id).value).toFixed(2);
}

function numberOrNull(id) {
  const v = $(id).value.trim();
  return v === "" ? null : Number(v);
}

function viewBody() {
  return {
    scene_id: state.scene.scene_id,
    fixations: state.fixations.map(([x, y]) => [x, y]),
    n: numberOrNull("n"),
    foveal_scale: Number($("foveal-scale").value),
    peripheral_scale: Number($("peripheral-scale").value),
    peripheral_blur: Number($("blur").value),
    condition: $("condition").value,
  };
}

function renderBody() {
  return {
    ...viewBody(),
    steps: numberOrNull("steps"),
    seed: numberOrNull("seed") ?? 0,
    hypotheses: numberOrNull("hypotheses"),
    scores: true,
  };
}

// ------------------------------------------------------------------------------- scenes

async function showDemoScenes() {
  const { scenes } = await (await api("/demo/scenes")).json();
  const box = $("demo-scenes");
  box.replaceChildren(
    ...scenes.map((scene, i) => {
      const button = document.createElement("button");
      button.type = "button";
      button.className = "thumb";
      button.title = scene.name;
      button.setAttribute("role", "listitem");
      button.dataset.name = scene.name;
      const img = new Image();
      img.src = `data:image/png;base64,${scene.png_base64}`;
      img.alt = `toy scene ${i + 1}`;
      button.append(img);
      button.addEventListener("click", () => pickDemo(scene).catch(failed));
      return button;
    }),
  );
}

async function pickDemo(scene) {
  const info = await (await api("/scenes/demo", { method: "POST", json: { name: scene.name } })).json();
  for (const b of document.querySelectorAll(".thumb")) b.classList.toggle("chosen", b.dataset.name === scene.name);
  await useScene(info, scene.viewer_fixations);
}

async function upload(file) {
  const path = `/scenes?name=${encodeURIComponent(file.name)}`;
  const info = await (await api(path, { method: "POST", body: file, type: file.type })).json();
  for (const b of document.querySelectorAll(".thumb")) b.classList.remove("chosen");
  await useScene(info, []);
  if (info.warnings.length) say(info.warnings.join(" "), "warn");
}

async function useScene(info, viewer) {
  const blob = await (await api(`/scenes/${info.scene_id}/image`)).blob();
  if (state.sceneUrl) URL.revokeObjectURL(state.sceneUrl);
  state.sceneUrl = URL.createObjectURL(blob);
  const img = $("scene-image");
  await new Promise((resolve, reject) => {
    img.onload = resolve;
    img.onerror = () => reject(new Error("the scene's image did not load"));
    img.src = state.sceneUrl;
  });
  state.scene = info;
  state.viewer = viewer;
  state.fixations = [];
  const small = Math.max(info.width, info.height) < 256;
  img.classList.toggle("pixelated", small);
  $("model-view").classList.toggle("pixelated", small);
  $("stage").classList.remove("empty");
  const svg = $("overlay");
  svg.setAttribute("viewBox", `0 0 ${info.width} ${info.height}`);
  svg.setAttribute("preserveAspectRatio", "none");
  $("viewer-fixations").disabled = viewer.length === 0;
  $("clear-fixations").disabled = false;
  $("render").disabled = false;
  $("hypothesis-images").replaceChildren(cell("p", "Render to see the model's hypotheses of the scene"));
  $("hypothesis-images").firstChild.className = "placeholder";
  $("scores").hidden = true;
  $("timing").textContent = "";
  $("warnings").textContent = "";
  say(`${info.name}: ${info.width} × ${info.height} px`);
  fixationsChanged();
}

// ------------------------------------------------------------------------------- fixations

function toImage(event) {
  const box = $("overlay").getBoundingClientRect();
  const { width, height } = state.scene;
  const x = ((event.clientX - box.left) * width) / box.width;
  const y = ((event.clientY - box.top) * height) / box.height;
  const clamp = (v, hi) => Math.min(Math.max(v, 0), hi - 0.01); // inside [0, size): on the image
  return [Math.round(clamp(x, width) * 100) / 100, Math.round(clamp(y, height) * 100) / 100];
}

function drawFixations() {
  const svg = $("overlay");
  const { width, height } = state.scene;
  const r = Math.max(width, height) * 0.028;
  const nodes = [];
  if (state.fixations.length > 1) {
    const path = document.createElementNS(SVG_NS, "polyline");
    path.setAttribute("points", state.fixations.map((p) => p.join(",")).join(" "));
    path.setAttribute("class", "scanpath");
    nodes.push(path);
  }
  const used = usedCount();
  state.fixations.forEach(([x, y], i) => {
    const g = document.createElementNS(SVG_NS, "g");
    g.setAttribute("class", i < used ? "fixation" : "fixation unused");
    g.dataset.index = i;
    const circle = document.createElementNS(SVG_NS, "circle");
    circle.setAttribute("cx", x);
    circle.setAttribute("cy", y);
    circle.setAttribute("r", r);
    const label = document.createElementNS(SVG_NS, "text");
    label.setAttribute("x", x);
    label.setAttribute("y", y);
    label.setAttribute("font-size", r * 1.15);
    label.textContent = i + 1;
    g.append(circle, label);
    nodes.push(g);
  });
  svg.replaceChildren(...nodes);
}

function usedCount() {
  const n = numberOrNull("n");
  return n === null ? state.fixations.length : Math.min(n, state.fixations.length);
}

function listFixations() {
  const used = usedCount();
  $("fixation-list").replaceChildren(
    ...state.fixations.map(([x, y], i) => {
      const li = document.createElement("li");
      li.className = i < used ? "" : "unused";
      const text = document.createElement("span");
      text.textContent = `(${x.toFixed(1)}, ${y.toFixed(1)})`;
      const remove = document.createElement("button");
      remove.type = "button";
      remove.className = "remove";
      remove.textContent = "×";
      remove.title = `remove fixation ${i + 1}`;
      remove.addEventListener("click", () => removeFixation(i));
      li.append(text, remove);
      return li;
    }),
  );
}

function fixationsChanged() {
  $("n").max = state.fixations.length;
  drawFixations();
  listFixations();
  scheduleModelView();
}

function removeFixation(i) {
  state.fixations.splice(i, 1);
  fixationsChanged();
}

function setUpOverlay() {
  const svg = $("overlay");
  let drag = null; // {index, pointerId, moved}
  svg.addEventListener("pointerdown", (event) => {
    if (!state.scene || event.button !== 0) return;
    const marker = event.target.closest(".fixation");
    if (marker) {
      drag = { index: Number(marker.dataset.index), pointerId: event.pointerId, moved: false };
      svg.setPointerCapture(event.pointerId);
      marker.classList.add("dragging");
    } else {
      state.fixations.push(toImage(event));
      fixationsChanged();
    }
    event.preventDefault();
  });
  svg.addEventListener("pointermove", (event) => {
    if (!drag || event.pointerId !== drag.pointerId) return;
    state.fixations[drag.index] = toImage(event);
    drag.moved = true;
    drawFixations();
    svg.querySelector(`[data-index="${drag.index}"]`)?.classList.add("dragging");
  });
  const end = (event) => {
    if (!drag || event.pointerId !== drag.pointerId) return;
    const moved = drag.moved;
    drag = null;
    if (moved) fixationsChanged();
    else drawFixations();
  };
  svg.addEventListener("pointerup", end);
  svg.addEventListener("pointercancel", end);
  svg.addEventListener("contextmenu", (event) => {
    const marker = event.target.closest(".fixation");
    if (!marker) return;
    event.preventDefault();
    removeFixation(Number(marker.dataset.index));
  });
}

// ------------------------------------------------------------------------------- the model's view

function scheduleModelView() {
  clearTimeout(state.viewTimer);
  state.viewTimer = setTimeout(() => updateModelView().catch(failed), 120);
}

async function updateModelView() {
  if (!state.scene) return;
  state.viewAbort?.abort();
  const abort = (state.viewAbort = new AbortController());
  const response = await api("/model-view", { method: "POST", json: viewBody(), signal: abort.signal });
  const blob = await response.blob();
  if (abort.signal.aborted) return;
  if (state.viewUrl) URL.revokeObjectURL(state.viewUrl);
  state.viewUrl = URL.createObjectURL(blob);
  const img = $("model-view");
  img.src = state.viewUrl;
  img.closest(".stage").classList.remove("empty");
  const h = (name) => response.headers.get(name);
  const streams = { both: "fovea + periphery", peripheral: "periphery only", foveal: "fovea only" }[h("X-View")];
  const shown = Number(h("X-Patches-Shown"));
  $("model-view-caption").textContent =
    `${h("X-Canvas-Size")} px canvas · ${h("X-Grid-Size")} × ${h("X-Grid-Size")} patches of ${h("X-Patch-Size")} px · ` +
    `${streams} · ${shown} foveal patch${shown === 1 ? "" : "es"} from ${h("X-Fixations-Used")} fixation${h("X-Fixations-Used") === "1" ? "" : "s"}`;
}

// ------------------------------------------------------------------------------- rendering

function setProgress(value, max, text) {
  const bar = $("progress");
  bar.max = max;
  bar.value = value;
  $("progress-text").textContent = text;
}

async function* serverSentEvents(response) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let name = "message";
      let data = "";
      for (const line of block.split("\n")) {
        if (line.startsWith("event: ")) name = line.slice(7);
        else if (line.startsWith("data: ")) data += line.slice(6);
      }
      if (data) yield { name, data: JSON.parse(data) }; // a block of comments only is a keep-alive
    }
  }
}

async function render(event) {
  event.preventDefault();
  if (!state.scene) return;
  const body = renderBody();
  const box = $("progress-box");
  box.dataset.stepsSeen = "0";
  box.classList.add("running");
  setProgress(0, body.steps || 1, "sending…");
  say("");
  $("render").disabled = true;
  $("cancel").hidden = false;
  const abort = (state.renderAbort = new AbortController());
  const started = performance.now();
  try {
    const response = await api("/render/stream", { method: "POST", json: body, signal: abort.signal });
    for await (const { name, data } of serverSentEvents(response)) {
      if (name === "queued") setProgress(0, data.steps, data.ahead ? `queued, ${data.ahead} ahead` : "queued");
      else if (name === "started") setProgress(0, $("progress").max, data.encoding ? "encoding the scene…" : "denoising…");
      else if (name === "step") {
        box.dataset.stepsSeen = String(Number(box.dataset.stepsSeen) + 1);
        setProgress(data.step, data.steps, `step ${data.step} / ${data.steps}`);
      } else if (name === "result") {
        showResult(data, performance.now() - started);
      } else if (name === "error") throw new ApiError(data.status, data.message);
    }
  } catch (err) {
    setProgress(0, 1, err.name === "AbortError" ? "cancelled" : "failed");
    failed(err);
  } finally {
    box.classList.remove("running");
    $("render").disabled = false;
    $("cancel").hidden = true;
    state.renderAbort = null;
  }
}

function showResult(result, ms) {
  setProgress($("progress").max, $("progress").max, `done in ${(ms / 1000).toFixed(2)} s`);
  $("hypothesis-images").replaceChildren(
    ...result.images.map((im) => {
      const figure = document.createElement("figure");
      figure.className = "hypothesis";
      const img = new Image();
      img.src = `data:image/png;base64,${im.png_base64}`;
      img.alt = `hypothesis, seed ${im.seed}`;
      img.classList.toggle("pixelated", Math.max(im.width, im.height) < 256);
      const caption = document.createElement("figcaption");
      caption.textContent = `seed ${im.seed}`;
      figure.append(img, caption);
      return figure;
    }),
  );
  const t = result.timing;
  const batch = result.batch.requests > 1 ? ` · batched with ${result.batch.requests - 1} other request(s)` : "";
  $("timing").textContent = `render ${(t.render_ms / 1000).toFixed(2)} s · queued ${t.queued_ms.toFixed(0)} ms${batch}`;
  $("warnings").textContent = result.warnings.join(" ");
  showScores(result);
}

function formatScore(v) {
  if (v === null) return "∞";
  return Math.abs(v) >= 100 ? v.toFixed(1) : v.toPrecision(3);
}

function showScores(result) {
  const table = $("scores");
  if (!result.scores) {
    table.hidden = true;
    return;
  }
  const head = document.createElement("tr");
  head.append(...["metric", ...result.images.map((im) => `seed ${im.seed}`)].map((t) => cell("th", t)));
  table.tHead.replaceChildren(head);
  table.tBodies[0].replaceChildren(
    ...result.scores.map((m) => {
      const row = document.createElement("tr");
      const name = cell("th", `${m.label} ${m.higher_is_similar ? "↑" : "↓"}`);
      name.title = m.higher_is_similar ? "higher = more similar" : "lower = more similar";
      row.append(name, ...m.values.map((v) => cell("td", formatScore(v))));
      return row;
    }),
  );
  table.hidden = false;
}

function cell(tag, text) {
  const el = document.createElement(tag);
  el.textContent = text;
  return el;
}

// ------------------------------------------------------------------------------- start

async function start() {
  try {
    state.settings = await (await api("/settings")).json();
  } catch (err) {
    $("model").textContent = "not connected";
    failed(err);
    return;
  }
  $("key-form").hidden = true;
  fillSettings(state.settings);
  await showDemoScenes().catch(failed);
  say("Pick a toy scene or upload an image, then click on it to place fixations.");
}

document.addEventListener("DOMContentLoaded", () => {
  setUpOverlay();
  $("settings").addEventListener("submit", render);
  $("cancel").addEventListener("click", () => state.renderAbort?.abort());
  $("upload").addEventListener("change", (event) => {
    const [file] = event.target.files;
    if (file) upload(file).catch(failed);
    event.target.value = "";
  });
  $("viewer-fixations").addEventListener("click", () => {
    state.fixations = state.viewer.map(([x, y]) => [x, y]);
    fixationsChanged();
  });
  $("clear-fixations").addEventListener("click", () => {
    state.fixations = [];
    fixationsChanged();
  });
  for (const id of ["foveal-scale", "peripheral-scale"]) {
    $(id).addEventListener("input", () => {
      showRange(id);
      scheduleModelView();
    });
  }
  for (const id of ["blur", "condition"]) $(id).addEventListener("change", scheduleModelView);
  $("n").addEventListener("input", () => {
    drawFixations();
    listFixations();
    scheduleModelView();
  });
  $("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    sessionStorage.setItem(KEY_STORAGE, $("api-key").value);
    start();
  });
  start();
});
