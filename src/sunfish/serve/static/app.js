"use strict";
// The page of `sunfish serve` (docs/serving.md): controls built from GET /v1/sunfish, a streamed completion
// read with fetch, and the canvas drawn step by step from the stream's canvas events. No framework, no CDN.

const TEXT = {
  en: {
    prompt: "Prompt", promptPh: "Once upon a time", mode: "Mode", completion: "Completion", chat: "Chat",
    more: "More settings", key: "API key", keyPh: "only if the server asks", submit: "Generate", stop: "Stop",
    reset: "Defaults", canvas: "Canvas", output: "Text", maskWord: "mask", early: "early", late: "late",
    step: "step", masked: "masked", stopped: "stopped", seedRandom: "empty: the server draws one",
    steps: "steps", tokps: "tokens/s", seconds: "seconds", finish: "finish", seed: "seed", promptTokens: "prompt tokens",
    stop_reason: "stop", length_reason: "length", serverError: "The server refused", network: "No answer from the server",
    needKey: "This server needs an API key: enter it below", infoFailed: "Could not read the model's settings",
    cut: "The stream ended before [DONE]", empty: "(no text: the model ended at once)", lang: "Русский интерфейс",
    waiting: "waiting for the server…",
  },
  ru: {
    prompt: "Запрос", promptPh: "Жили-были", mode: "Режим", completion: "Продолжение", chat: "Чат",
    more: "Другие настройки", key: "Ключ API", keyPh: "только если сервер требует", submit: "Сгенерировать",
    stop: "Остановить", reset: "По умолчанию", canvas: "Холст", output: "Текст", maskWord: "маска",
    early: "ранний", late: "поздний", step: "шаг", masked: "под маской", stopped: "остановлено",
    seedRandom: "пусто: сервер выберет сам", steps: "шаги", tokps: "токенов/с", seconds: "время, с", finish: "конец",
    seed: "сид", promptTokens: "токенов в запросе", stop_reason: "стоп", length_reason: "длина",
    serverError: "Сервер отказал", network: "Сервер не отвечает", needKey: "Серверу нужен ключ API: введите его ниже",
    infoFailed: "Не удалось получить настройки модели", cut: "Поток оборвался до [DONE]",
    empty: "(текста нет: модель сразу закончила)", lang: "English interface", waiting: "ждём сервер…",
  },
};

const FIELDS = {
  en: {
    max_tokens: "Max tokens", seed: "Seed", steps: "Steps", temperature: "Temperature", block_length: "Block length",
    policy: "Policy", rule: "Rule", threshold: "Threshold", cache: "Cache", top_k: "Top-k", top_p: "Top-p",
    factor: "Factor", entropy_bound: "Entropy bound", fp64_confidence: "fp64 confidence",
    suppress_special: "Suppress special tokens", stop_at_eos: "Stop at EOS", remask: "Remasking",
    remask_eta: "Remask η", remask_start: "Remask from", remask_end: "Remask until", guidance: "Guidance",
    solver: "Solver", eta: "η (noise)", rounding: "Rounding", clamp: "Clamp",
  },
  ru: {
    max_tokens: "Макс. токенов", seed: "Сид", steps: "Шаги", temperature: "Температура", block_length: "Длина блока",
    policy: "Порядок", rule: "Правило", threshold: "Порог", cache: "Кэш", top_k: "Top-k", top_p: "Top-p",
    factor: "Множитель", entropy_bound: "Граница энтропии", fp64_confidence: "Уверенность в fp64",
    suppress_special: "Без служебных токенов", stop_at_eos: "Стоп на EOS", remask: "Перемаскирование",
    remask_eta: "η перемаскирования", remask_start: "Перемаскировать с", remask_end: "Перемаскировать до",
    guidance: "Guidance", solver: "Решатель", eta: "η (шум)", rounding: "Округление", clamp: "Привязка",
  },
};

const HELP = {
  en: { max_tokens: "tokens to generate (the canvas length)", seed: "same seed, same text; empty: the server draws one" },
  ru: { max_tokens: "сколько токенов генерировать (длина холста)", seed: "тот же сид даёт тот же текст; пусто: сервер выберет" },
};

const MAIN = ["steps", "temperature", "block_length", "policy", "rule", "threshold", "cache"];
const TOP_LEVEL = ["max_tokens", "seed", "temperature", "top_p"]; // OpenAI's own fields; the rest go under "sunfish"
const PACE_MS = 16; // at least a frame per denoising step, so that a fast model's steps can still be watched
const CATCH_UP = 8; // ... unless this many events are already waiting: then draw them at once
const STORE = { key: "sunfish.apiKey", lang: "sunfish.lang" };

const $ = (selector) => document.querySelector(selector);
const state = { lang: "en", info: null, defaults: {}, run: null, view: { step: null, stats: null, error: null } };

// ---- language ----

function t(key) {
  return TEXT[state.lang][key] ?? TEXT.en[key] ?? key;
}

function fieldLabel(name) {
  return FIELDS[state.lang][name] ?? FIELDS.en[name] ?? name;
}

function setLanguage(lang) {
  state.lang = lang;
  localStorage.setItem(STORE.lang, lang);
  document.documentElement.lang = lang;
  for (const el of document.querySelectorAll("[data-i18n]")) el.textContent = t(el.dataset.i18n);
  for (const el of document.querySelectorAll("[data-i18n-ph]")) el.placeholder = t(el.dataset.i18nPh);
  for (const el of document.querySelectorAll("[data-field-label]")) el.textContent = fieldLabel(el.dataset.fieldLabel);
  for (const el of document.querySelectorAll("[data-help]")) el.title = HELP[lang][el.dataset.help];
  for (const el of document.querySelectorAll("#lang [data-lang]")) el.classList.toggle("active", el.dataset.lang === lang);
  $("#lang").title = t("lang");
  $("#output").dataset.emptyText = t("empty");
  renderStep();
  renderStats();
  renderError();
  renderLegend();
}

function startLanguage() {
  const stored = localStorage.getItem(STORE.lang);
  setLanguage(stored in TEXT ? stored : (navigator.language || "en").toLowerCase().startsWith("ru") ? "ru" : "en");
}

// ---- the model's settings and the controls ----

function authHeaders() {
  const key = $("#key").value.trim();
  return key ? { Authorization: `Bearer ${key}` } : {};
}

async function errorMessage(response) {
  const text = await response.text();
  try {
    return `${response.status}: ${JSON.parse(text).error.message}`;
  } catch {
    return `${response.status}: ${text.slice(0, 300) || response.statusText}`;
  }
}

async function loadInfo() {
  let response;
  try {
    response = await fetch("v1/sunfish", { headers: authHeaders() });
  } catch (err) {
    return showError("network", err.message);
  }
  if (!response.ok) return showError(response.status === 401 ? "needKey" : "infoFailed", await errorMessage(response));
  state.info = await response.json();
  showError(null);
  buildControls(state.info);
}

function buildControls(info) {
  const main = $("#controls"), more = $("#more-controls");
  main.replaceChildren();
  more.replaceChildren();
  state.defaults = {};
  const limit = info.limits.max_tokens;
  main.append(control("max_tokens", { type: "int", min: 1, max: limit }, Math.min(info.sampler.length ?? limit, limit)));
  for (const name of MAIN) if (info.fields[name]) main.append(control(name, info.fields[name], info.sampler[name]));
  main.append(control("seed", { type: "int", min: 0 }, null));
  for (const [name, spec] of Object.entries(info.fields)) {
    if (!MAIN.includes(name)) more.append(control(name, spec, info.sampler[name]));
  }
  $("#more").hidden = !more.children.length;
  $("#model").textContent = `${info.model} · ${info.process}`;
  $("#mode-chat").disabled = !info.chat;
  if (!info.chat) $("#mode-completion").checked = true;
  $("#key-row").classList.toggle("required", Boolean(info.auth));
}

function control(name, spec, value) {
  const label = document.createElement("label");
  label.className = `field ${spec.type}`;
  const caption = document.createElement("span");
  caption.dataset.fieldLabel = name;
  caption.textContent = fieldLabel(name);
  const input = spec.type === "choice" ? selectOf(spec.choices) : document.createElement("input");
  if (spec.type === "bool") input.type = "checkbox";
  else if (spec.type === "int" || spec.type === "float") numeric(input, spec);
  else if (spec.type !== "choice") input.type = "text";
  input.id = `f-${name}`;
  input.dataset.field = name;
  if (name === "seed") {
    input.dataset.i18nPh = "seedRandom";
    input.placeholder = t("seedRandom");
  }
  label.title = spec.help ?? HELP[state.lang][name] ?? "";
  if (!spec.help && HELP.en[name]) label.dataset.help = name; // the page's own help follows the language
  state.defaults[name] = value;
  setValue(input, value);
  if (spec.type === "bool") label.append(input, caption);
  else label.append(caption, input);
  return label;
}

function selectOf(choices) {
  const select = document.createElement("select");
  for (const choice of choices) select.append(new Option(choice, choice));
  return select;
}

function numeric(input, spec) {
  input.type = "number";
  input.step = spec.type === "int" ? "1" : "any";
  if (spec.min !== undefined) input.min = spec.min;
  if (spec.max !== undefined) input.max = spec.max;
}

function setValue(input, value) {
  if (input.type === "checkbox") input.checked = Boolean(value);
  else input.value = value === null || value === undefined ? "" : String(value);
}

function readValue(input) {
  if (input.type === "checkbox") return input.checked;
  if (input.type === "number") return input.value === "" ? null : Number(input.value);
  return input.value;
}

function setting(name) {
  const input = document.getElementById(`f-${name}`);
  const value = input ? readValue(input) : null;
  return value ?? state.defaults[name] ?? null;
}

function resetControls() {
  for (const input of document.querySelectorAll("[data-field]")) setValue(input, state.defaults[input.dataset.field]);
}

// ---- the request ----

function buildRequest() {
  const body = { stream: true, sunfish: { stream_canvas: true } };
  for (const input of document.querySelectorAll("[data-field]")) {
    const name = input.dataset.field, value = readValue(input);
    if (value === null || value === state.defaults[name]) continue; // only what the user changed
    if (TOP_LEVEL.includes(name)) body[name] = value;
    else body.sunfish[name] = value;
  }
  const chat = $("#mode-chat").checked, prompt = $("#prompt").value;
  if (chat) body.messages = [{ role: "user", content: prompt }];
  else body.prompt = prompt;
  return { url: chat ? "v1/chat/completions" : "v1/completions", body, chat };
}

async function submit(event) {
  event.preventDefault();
  if (state.run) return;
  const request = buildRequest();
  const run = (state.run = { controller: new AbortController(), chat: request.chat, cells: [], total: null });
  clearResult();
  setBusy(true);
  try {
    const response = await fetch(request.url, {
      method: "POST", body: JSON.stringify(request.body), signal: run.controller.signal,
      headers: { "Content-Type": "application/json", ...authHeaders() },
    });
    if (!response.ok) showError("serverError", await errorMessage(response));
    else if (!(await readEvents(response, (data, waiting) => handle(run, data, waiting)))) showError("cut", "");
  } catch (err) {
    if (err.name === "AbortError") setStep({ note: "stopped" });
    else showError("network", err.message);
  } finally {
    state.run = null;
    setBusy(false);
  }
}

/** Reads server-sent events from a fetch response; calls onData(json, eventsWaiting) for each `data:` line.
 * Returns true at `data: [DONE]`, false when the stream ends without it. */
async function readEvents(response, onData) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return false;
    const blocks = (buffer + value).split(/\r?\n\r?\n/);
    buffer = blocks.pop();
    for (const [i, block] of blocks.entries()) {
      const lines = block.split(/\r?\n/).filter((line) => line.startsWith("data:"));
      const data = lines.map((line) => line.slice(5).replace(/^ /, "")).join("\n");
      if (data === "[DONE]") {
        reader.cancel().catch(() => {});
        return true;
      }
      if (data) await onData(JSON.parse(data), blocks.length - i - 1);
    }
  }
}

async function handle(run, data, waiting) {
  if (data.error) return showError("serverError", data.error.message);
  const event = data.sunfish?.event ? data.sunfish : null;
  if (event) {
    if ((event.index ?? 0) !== 0) return; // the page asks for one choice
    if (event.event === "start") startCanvas(run, event);
    else if (event.event === "step") {
      applyStep(run, event);
      if (!document.hidden && waiting < CATCH_UP) await sleep(PACE_MS);
    } else if (event.event === "done") finish(run, event);
    return;
  }
  const choice = data.choices?.[0];
  if (!choice || choice.index !== 0) return;
  const piece = run.chat ? choice.delta?.content : choice.text;
  if (piece) $("#output").textContent += piece;
}

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

function setBusy(busy) {
  $("#submit").disabled = busy;
  $("#stop").disabled = !busy;
  $("#form").setAttribute("aria-busy", String(busy));
  $("#output").classList.toggle("busy", busy);
}

function clearResult() {
  $("#canvas").replaceChildren();
  $("#output").textContent = "";
  $("#output").classList.remove("done");
  state.view = { step: { note: "waiting" }, stats: null, error: null };
  renderStep();
  renderStats();
  renderError();
}

// ---- the canvas ----

function startCanvas(run, event) {
  const block = setting("block_length") || 0;
  const steps = setting("steps");
  run.total = Math.max(1, steps ? Math.min(steps, event.length) : event.length); // the colour scale's last step
  run.seed = event.seed;
  run.promptTokens = event.prompt_tokens;
  const fragment = document.createDocumentFragment();
  run.cells = Array.from({ length: event.length }, (_, pos) => {
    const cell = document.createElement("span");
    cell.className = block && pos && pos % block === 0 ? "cell masked block-start" : "cell masked";
    cell.dataset.pos = pos;
    cell.textContent = "\u00a0";
    fragment.append(cell);
    return cell;
  });
  $("#canvas").replaceChildren(fragment);
  setStep({ step: 0, masked: event.length, length: event.length });
  renderLegend();
}

function applyStep(run, event) {
  if (event.step > run.total) {
    run.total = event.step;
    recolour(run);
    renderLegend();
  }
  for (const [pos, text] of event.committed) commit(run.cells[pos], text, event.step, run.total);
  for (const pos of event.remasked) mask(run.cells[pos]);
  setStep({ step: event.step, masked: event.masked, length: run.cells.length });
}

function commit(cell, text, step, total) {
  if (!cell) return;
  cell.classList.remove("masked", "remasked");
  cell.textContent = visible(text);
  cell.dataset.step = step;
  cell.title = `#${cell.dataset.pos} · ${t("step")} ${step} · ${JSON.stringify(text)}`;
  cell.style.setProperty("--c", colour(step, total));
}

function mask(cell) {
  if (!cell) return;
  cell.classList.add("masked", "remasked");
  cell.textContent = "\u00a0";
  delete cell.dataset.step;
  cell.style.removeProperty("--c");
}

function recolour(run) {
  for (const cell of run.cells) if (cell.dataset.step) cell.style.setProperty("--c", colour(+cell.dataset.step, run.total));
}

/** Whitespace made visible: spaces as ·, newlines as ⏎, tabs as ⇥; an empty token as ∅. */
function visible(text) {
  return text === "" ? "∅" : text.replace(/ /g, "·").replace(/\n/g, "⏎").replace(/\t/g, "⇥");
}

/** Colour of a token committed at `step` of `total`: blue (early) through green and yellow to orange (late). */
function colour(step, total) {
  const f = total > 1 ? Math.min(1, Math.max(0, (step - 1) / (total - 1))) : 0;
  return `hsl(${Math.round(225 - 200 * f)} 80% 80%)`;
}

function finish(run, event) {
  run.total = Math.max(1, event.steps); // the scale now spans the steps actually taken
  recolour(run);
  for (const cell of run.cells) cell.classList.toggle("unused", cell.classList.contains("masked")); // after a stop
  renderLegend();
  state.view.stats = { ...event, seed: run.seed, promptTokens: run.promptTokens };
  renderStats();
  $("#output").classList.add("done");
}

// ---- the lines that change with the language ----

function setStep(step) {
  state.view.step = step;
  renderStep();
}

function renderStep() {
  const view = state.view.step, el = $("#step");
  if (!view) return (el.textContent = "");
  if (view.note) return (el.textContent = t(view.note));
  el.dataset.step = view.step;
  el.textContent = `${t("step")} ${view.step} · ${t("masked")} ${view.masked}/${view.length}`;
}

function renderLegend() {
  const total = state.run?.total ?? state.view.stats?.steps ?? null;
  $("#legend-early").textContent = `${t("early")} (1)`;
  $("#legend-late").textContent = total ? `${t("late")} (${total})` : t("late");
  const stops = [0, 0.25, 0.5, 0.75, 1].map((f) => colour(1 + f * 99, 100));
  $("#legend-bar").style.background = `linear-gradient(to right, ${stops.join(", ")})`;
}

function renderStats() {
  const s = state.view.stats, el = $("#stats");
  el.replaceChildren();
  if (!s) return;
  const reason = TEXT[state.lang][`${s.finish_reason}_reason`] ?? s.finish_reason;
  const parts = [[t("steps"), s.steps], ["NFE", s.nfe], [t("tokps"), s.tokens_per_s], [t("seconds"), +Number(s.seconds).toPrecision(3)],
    [t("finish"), reason], [t("seed"), s.seed], [t("promptTokens"), s.promptTokens]];
  for (const [name, value] of parts) {
    if (value === undefined || value === null) continue;
    const item = document.createElement("span"), figure = document.createElement("b");
    figure.textContent = value;
    item.append(`${name} `, figure);
    el.append(item);
  }
}

function showError(key, detail) {
  state.view.error = key ? { key, detail } : null;
  renderError();
}

function renderError() {
  const e = state.view.error;
  $("#error").textContent = e ? (e.detail ? `${t(e.key)}: ${e.detail}` : t(e.key)) : "";
}

// ---- wiring ----

function start() {
  $("#key").value = localStorage.getItem(STORE.key) ?? "";
  startLanguage();
  $("#lang").addEventListener("click", () => setLanguage(state.lang === "en" ? "ru" : "en"));
  $("#form").addEventListener("submit", submit);
  $("#stop").addEventListener("click", () => state.run?.controller.abort());
  $("#reset").addEventListener("click", resetControls);
  $("#prompt").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) $("#form").requestSubmit();
  });
  $("#key").addEventListener("change", () => {
    localStorage.setItem(STORE.key, $("#key").value.trim());
    if (!state.info) loadInfo();
  });
  loadInfo();
}

start();
