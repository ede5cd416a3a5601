"use strict";
// The playground: builds the form from /api/settings, lists /api/models, streams /v1/completions per column, or
// in Ask mode /v1/chat/completions (a request to every chosen chat model, so fine-tunes can be compared by eye).

const $ = (selector, root = document) => root.querySelector(selector);
const state = { fields: [], models: [], selected: [], info: new Map(), running: new Map(), mode: "continue" };

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "text") node.textContent = v;
    else node.setAttribute(k, v === true ? "" : v);
  }
  for (const child of children) node.append(child);
  return node;
}

function status(text, isError = false) {
  const node = $("#status");
  node.textContent = text;
  node.classList.toggle("error", isError);
}

async function getJSON(url) {
  const response = await fetch(url);
  const body = await response.json();
  if (!response.ok) throw new Error(body.error ? body.error.message : response.statusText);
  return body;
}

// ---- the form ------------------------------------------------------------------------------------------
function buildSampling(settings) {
  state.fields = settings.fields;
  const box = $("#sampling");
  for (const f of settings.fields) {
    const id = `f-${f.name}`;
    const input = el("input", {
      id, name: f.name, type: "number", inputmode: f.type === "int" ? "numeric" : "decimal",
      min: f.off !== null ? Math.min(f.off, f.min) : f.min_exclusive ? null : f.min, max: f.max,
      step: f.step ?? "any",
      value: f.default ?? "", placeholder: f.name === "seed" ? "random" : null,
      title: `${f.help}. Allowed: ${f.allowed}.`, "aria-describedby": `${id}-help`,
    });
    box.append(el("div", { class: "field" },
      el("label", { for: id, text: f.label }), input,
      el("p", { id: `${id}-help`, class: "help", text: f.hint })));
  }
  $("#prompt").maxLength = settings.max_prompt_chars;
}

function readSettings() {
  // the values to send, or an error naming the field; the server checks again with the same table
  const out = {};
  for (const f of state.fields) {
    const input = $(`#f-${f.name}`);
    const raw = input.value.trim();
    input.removeAttribute("aria-invalid");
    if (raw === "") {
      if (f.name === "seed") continue;
      return { error: `${f.label} is empty; allowed: ${f.allowed}`, input };
    }
    const value = Number(raw);
    const off = f.off !== null && value === f.off;
    const tooLow = value < f.min || (f.min_exclusive && value === f.min);
    const bad = !Number.isFinite(value) || (f.type === "int" && !Number.isInteger(value)) ||
      value > f.max || (tooLow && !off);
    if (bad) return { error: `${f.label} must be ${f.allowed}; got ${raw}`, input };
    out[f.name] = off ? null : value;
  }
  return { values: out };
}

// ---- models --------------------------------------------------------------------------------------------
async function loadModels(refresh = false) {
  const list = $("#model-list");
  list.setAttribute("aria-busy", "true");
  $("#models-note").textContent = "Listing the experiments (dvc exp show)…";
  try {
    const body = await getJSON(`/api/models${refresh ? "?refresh=1" : ""}`);
    state.models = body.models;
    $("#models-note").textContent = body.note || "";
  } catch (err) {
    status(`Could not list the models: ${err.message}`, true);
    return;
  } finally {
    list.removeAttribute("aria-busy");
  }
  const available = new Set(state.models.filter((m) => m.available).map((m) => m.id));
  state.selected = state.selected.filter((id) => available.has(id));
  if (!state.selected.length && available.size) state.selected = [state.models.find((m) => m.available).id];
  list.replaceChildren();
  state.models.forEach((m, i) => {
    const id = `m-${i}`;
    const box = el("input", { type: "checkbox", id, value: m.id, disabled: !m.available,
                              checked: state.selected.includes(m.id),
                              "aria-describedby": m.available ? null : `${id}-why` });
    box.addEventListener("change", () => {
      state.selected = [...list.querySelectorAll("input:checked")].map((x) => x.value);
      renderColumns();
    });
    const label = el("label", { for: id }, el("span", { class: "model-id", text: m.id }),
                     el("span", { class: "kind", text: m.kind }));
    const row = el("div", { class: `model${m.available ? "" : " unavailable"}` }, box, label);
    if (!m.available) row.append(el("p", { id: `${id}-why`, class: "why", text: `Unavailable: ${m.reason}` }));
    else if (Object.keys(m.params).length) row.append(el("p", { class: "why", text: changes(m.params) }));
    list.append(row);
  });
  renderColumns();
}

function changes(params) {
  return Object.entries(params).map(([k, v]) => `${k}=${v === null ? "(removed)" : v}`).join(", ");
}

function fmt(value) {
  return typeof value === "number" && !Number.isInteger(value) ? value.toPrecision(4) : String(value);
}

function renderColumns() {
  const stories = $("#stories");
  const keep = new Map([...stories.children].map((c) => [c.dataset.model, c]));
  stories.replaceChildren(...state.selected.map((id) => keep.get(id) || newColumn(id)));
  stories.classList.toggle("compare", state.selected.length > 1);
  $("#write").disabled = !state.selected.length;
  if (!state.selected.length) status("Choose a model to write with.");
  updateModes();
}

function newColumn(id) {
  const node = $("#story-template").content.firstElementChild.cloneNode(true);
  node.dataset.model = id;
  node.dataset.state = "idle";
  $(".model-name", node).textContent = id;
  const entry = state.models.find((m) => m.id === id);
  const extra = $(".changes", node);
  if (entry && Object.keys(entry.params).length) extra.append(el("p", { text: `Changed: ${changes(entry.params)}` }));
  const metrics = entry ? Object.entries(entry.metrics).slice(0, 6) : [];
  if (metrics.length) extra.append(el("p", { text: `Metrics: ${metrics.map(([k, v]) => `${k} ${fmt(v)}`).join(" · ")}` }));
  showInfo(node, id);
  return node;
}

async function showInfo(node, id) {
  const dl = $(".model-info", node);
  dl.replaceChildren(el("dt", { text: "Model" }), el("dd", { text: "loading…" }));
  try {
    if (!state.info.has(id)) state.info.set(id, await getJSON(`/api/model?id=${encodeURIComponent(id)}`));
  } catch (err) {
    dl.replaceChildren(el("dt", { text: "Model" }), el("dd", { class: "error", text: err.message }));
    return;
  }
  const m = state.info.get(id);
  const bpb = m.bits_per_byte === null ? "unknown" : `${m.bits_per_byte.toFixed(3)} (${m.bits_per_byte_from})`;
  const rows = [["Checkpoint", m.source], ["Step", m.step ?? "unknown"],
                ["Size", `${m.n_layer} layer${m.n_layer === 1 ? "" : "s"} × ${m.n_embd} wide, context ${m.block_size}`],
                ["Vocabulary", m.vocab_size], ["Val bits/byte", bpb],
                ["Kind", m.chat ? "chat (instruction-tuned): continues and answers" : "story: continues only"]];
  dl.replaceChildren(...rows.flatMap(([k, v]) => [el("dt", { text: k }), el("dd", { text: String(v) })]));
  updateModes();
}

// ---- modes: continue a story, or ask the chat models for one ------------------------------------------------
function updateModes() {
  // Ask is offered once a chosen model is known to be a chat model; a story model asked anyway says why not
  const chat = state.selected.some((id) => state.info.get(id)?.chat);
  $("#mode-ask").disabled = !chat;
  if (!chat && state.mode === "ask") setMode("continue");
}

function setMode(mode) {
  state.mode = mode;
  $(`#mode-${mode}`).checked = true;
  $("#prompt-field").hidden = mode !== "continue";
  $("#request-field").hidden = mode !== "ask";
}

// ---- writing -------------------------------------------------------------------------------------------
async function write() {
  if (state.running.size) return;
  const read = readSettings();
  if (read.error) {
    read.input.setAttribute("aria-invalid", "true");
    read.input.focus();
    status(read.error, true);
    return;
  }
  const values = read.values;
  const seed = values.seed ?? Math.floor(Math.random() * 2 ** 31);  // one seed for every column
  const mode = state.mode, prompt = $(mode === "ask" ? "#request" : "#prompt").value;
  if (mode === "ask" && !prompt.trim()) {
    $("#request").focus();
    status("Type a request first, such as: A story about a brave cat, please.", true);
    return;
  }
  const columns = [...$("#stories").children];
  if (!columns.length) return;
  $("#write").disabled = true;
  $("#stop").disabled = false;
  status(`Writing with seed ${seed}…`);
  if (window.matchMedia("(max-width: 760px)").matches) columns[0].scrollIntoView({ block: "start" });  // phones
  const results = await Promise.all(columns.map((column) => stream(column, mode, prompt, { ...values, seed })));
  $("#write").disabled = false;
  $("#stop").disabled = true;
  const stopped = results.includes("stopped"), failed = results.includes("error");
  status(failed ? "Something went wrong; see the story's column." :
         `${stopped ? "Stopped" : "Done"} (seed ${seed}; type it into Seed to write the same again).`, failed);
}

async function stream(column, mode, prompt, values) {
  // mode "continue": the story continues `prompt`; "ask": `prompt` is a request and the story is the answer
  const controller = new AbortController();
  state.running.set(column, controller);
  const out = $(".new-text", column), speed = $(".speed", column), asked = $(".asked", column);
  const ask = mode === "ask";
  $(".prompt-text", column).textContent = ask ? "" : prompt;
  asked.textContent = ask ? `Asked: ${prompt}` : "";
  asked.hidden = !ask;
  out.textContent = "";
  speed.textContent = "";
  column.dataset.state = "writing";
  column.classList.remove("failed");
  const body = { model: column.dataset.model, stream: true, stream_options: { include_usage: true },
                 temperature: values.temperature, top_k: values.top_k, top_p: values.top_p,
                 max_tokens: values.max_tokens, seed: values.seed,
                 ...(ask ? { messages: [{ role: "user", content: prompt }] } : { prompt }) };
  let result = "done";
  try {
    const response = await fetch(ask ? "/v1/chat/completions" : "/v1/completions", {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
      signal: controller.signal,
    });
    if (!response.ok) {
      const err = await response.json().catch(() => ({}));
      throw new Error(err.error ? err.error.message : `HTTP ${response.status}`);
    }
    const reader = response.body.getReader(), decoder = new TextDecoder();
    let buffer = "", finished = false;
    while (!finished) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const event = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        for (const line of event.split("\n")) {
          if (!line.startsWith("data: ")) continue;
          const data = line.slice(6);
          if (data === "[DONE]") { finished = true; continue; }
          const chunk = JSON.parse(data);
          if (chunk.error) throw new Error(chunk.error.message);
          for (const choice of chunk.choices) out.textContent += (ask ? choice.delta.content : choice.text) ?? "";
          if (chunk.usage) {
            const t = chunk.timing;
            speed.textContent = `${chunk.usage.completion_tokens} tokens in ${t.seconds.toFixed(2)} s · ` +
              `${t.tokens_per_second === null ? "–" : t.tokens_per_second.toFixed(1)} tokens/s`;
          }
        }
      }
    }
    if (!finished) throw new Error("the stream ended early");
  } catch (err) {
    if (controller.signal.aborted) {
      result = "stopped";
      speed.textContent = "Stopped.";
    } else {
      result = "error";
      column.classList.add("failed");
      speed.textContent = `Error: ${err.message}`;
    }
  } finally {
    state.running.delete(column);
    column.dataset.state = result;
  }
  return result;
}

function stop() {
  for (const controller of state.running.values()) controller.abort();
}

// ---- keyboard and start-up ------------------------------------------------------------------------------
function keys() {
  $("#controls").addEventListener("submit", (e) => { e.preventDefault(); write(); });
  for (const box of [$("#prompt"), $("#request")]) {
    box.addEventListener("keydown", (e) => {
      if (e.key === "Enter" && !e.shiftKey && !e.isComposing) { e.preventDefault(); write(); }
    });
  }
  for (const radio of document.querySelectorAll("input[name=mode]")) {
    radio.addEventListener("change", () => {
      setMode(radio.value);
      $(radio.value === "ask" ? "#request" : "#prompt").focus();
    });
  }
  document.addEventListener("keydown", (e) => {
    if (e.key === "Escape" && state.running.size) { e.preventDefault(); stop(); }
    else if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) { e.preventDefault(); write(); }
  });
  $("#stop").addEventListener("click", stop);
  $("#refresh").addEventListener("click", () => loadModels(true));
}

async function start() {
  keys();
  try {
    buildSampling(await getJSON("/api/settings"));
  } catch (err) {
    status(`Could not reach the server: ${err.message}`, true);
    return;
  }
  await loadModels();
  document.body.dataset.ready = "true";
}

start();
