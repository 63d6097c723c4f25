// The viewer page: asks the gateway for the server's description, builds the session form from its JSON Schemas,
// connects over WebRTC (video track in, "control" data channel both ways) and drives sessions. No build step.
"use strict";

const $ = (id) => document.getElementById(id);
const viewer = {   // the page's state; the browser tests read it too
  token: sessionStorage.getItem("tokentrim-token") || "",
  info: null, pc: null, channel: null, id: null,
  running: false, started: null, ended: null, errors: [], chart: null,
};

function showError(text) {
  viewer.errors.push(text);
  $("error").textContent = text;
  $("error").hidden = false;
}

function setState(text) { $("state").textContent = text; }

async function api(path, options = {}) {
  const headers = { ...(options.headers || {}) };
  if (viewer.token) headers.Authorization = `Bearer ${viewer.token}`;
  const response = await fetch(path, { ...options, headers });
  if (response.status === 401) {
    $("token-form").hidden = false;
    throw new Error("this gateway asks for an access token");
  }
  if (!response.ok) {
    const body = await response.json().catch(() => ({ code: response.status, message: response.statusText }));
    throw new Error(`${body.code}: ${body.message}`);
  }
  return response;
}

// --- the form, from GetServerInfo's schemas ------------------------------------------------------------------

function fieldFor(name, schema, value) {
  const label = document.createElement("label");
  const title = schema.description ? `${name} — ${schema.description}` : name;
  let input;
  if (schema.type === "boolean") {
    label.className = "check";
    input = document.createElement("input");
    input.type = "checkbox";
    input.checked = Boolean(value);
  } else if (Array.isArray(schema.enum)) {
    input = document.createElement("select");
    for (const choice of schema.enum) input.add(new Option(String(choice), JSON.stringify(choice)));
    input.value = JSON.stringify(value);
  } else {
    input = document.createElement("input");
    if (schema.type === "integer" || schema.type === "number") {
      input.type = "number";
      input.step = schema.type === "integer" ? "1" : "any";
      input.value = value ?? "";
    } else {
      input.type = "text";   // strings as they are, anything else (lists) as JSON
      input.value = schema.type === "string" ? (value ?? "") : JSON.stringify(value ?? null);
    }
  }
  input.dataset.name = name;
  input.dataset.type = schema.type || "json";
  input.dataset.initial = JSON.stringify(value ?? null);
  label.title = title;
  label.append(name, input);
  return label;
}

function readField(input) {
  if (input.type === "checkbox") return input.checked;
  if (input.tagName === "SELECT") return JSON.parse(input.value);
  const type = input.dataset.type;
  if (type === "integer" || type === "number") return input.value === "" ? null : Number(input.value);
  if (type === "string") return input.value;
  try { return JSON.parse(input.value); } catch { return input.value; }   // the server names what is wrong
}

// Only what the viewer changed is sent: the server's defaults stay the server's.
function changedValues(fieldset) {
  const values = {};
  for (const input of fieldset.querySelectorAll("[data-name]")) {
    const value = readField(input);
    if (JSON.stringify(value) !== input.dataset.initial) values[input.dataset.name] = value;
  }
  return values;
}

function fillFieldset(fieldset, schema, defaults) {
  fieldset.querySelectorAll("label").forEach((label) => label.remove());
  for (const [name, property] of Object.entries((schema && schema.properties) || {})) {
    fieldset.append(fieldFor(name, property, defaults[name] ?? property.default));
  }
}

function buildForm(info) {
  const pipelines = info.server.pipelines || [], policies = info.server.cache_policies || [];
  $("pipeline").replaceChildren(...pipelines.map((p) => new Option(p.name, p.name)));
  $("pipeline").value = info.server.default_pipeline;
  $("policy").replaceChildren(...policies.map((p) => new Option(p.name, p.name)));
  $("policy").value = info.server.default_cache_policy;
  const refill = () => {
    const pipeline = pipelines.find((p) => p.name === $("pipeline").value);
    const policy = policies.find((p) => p.name === $("policy").value);
    fillFieldset($("pipeline-options"), pipeline && pipeline.options_schema, (pipeline && pipeline.default_options) || {});
    fillFieldset($("policy-params"), policy && policy.parameters_schema, {});
    $("policy").title = (policy && policy.description) || "";
  };
  $("pipeline").onchange = refill;
  $("policy").onchange = refill;
  refill();
  const s = info.server;
  $("server-line").textContent = `${s.model} · ${s.default_width}x${s.default_height} at ${s.frames_per_second} fps`;
}

function startMessage() {
  const number = (id) => ($(id).value === "" ? null : Number($(id).value));
  return {
    type: "start",
    prompt: $("prompt").value,
    pipeline: $("pipeline").value,
    cache_policy: $("policy").value,
    pipeline_options: changedValues($("pipeline-options")),
    policy_params: changedValues($("policy-params")),
    chunks: number("chunks") ?? 0,
    seed: number("seed"),
    width: number("width") ?? 0,
    height: number("height") ?? 0,
  };
}

// --- WebRTC ----------------------------------------------------------------------------------------------------

function gathered(pc) {
  // The gateway takes one offer with every candidate in it (no trickle), so wait for gathering to finish.
  if (pc.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    pc.addEventListener("icegatheringstatechange", () => { if (pc.iceGatheringState === "complete") resolve(); });
  });
}

async function connect() {
  const pc = new RTCPeerConnection({ iceServers: viewer.info.ice_servers });
  viewer.pc = pc;
  pc.addTransceiver("video", { direction: "recvonly" });
  pc.ontrack = (event) => { $("video").srcObject = event.streams[0] || new MediaStream([event.track]); };
  const channel = pc.createDataChannel("control");
  viewer.channel = channel;
  channel.onopen = () => { setState("connected"); updateButtons(); };
  channel.onclose = () => { setState("disconnected"); viewer.running = false; updateButtons(); };
  channel.onmessage = (event) => onMessage(JSON.parse(event.data));
  pc.onconnectionstatechange = () => {
    if (pc.connectionState === "failed") showError("the WebRTC connection failed (firewall? configure --ice-server)");
  };
  await pc.setLocalDescription(await pc.createOffer());
  await gathered(pc);
  const response = await api("/api/offer", {
    method: "POST", headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ sdp: pc.localDescription.sdp, type: pc.localDescription.type }),
  });
  const answer = await response.json();
  viewer.id = answer.viewer;
  await pc.setRemoteDescription({ sdp: answer.sdp, type: answer.type });
}

function send(message) {
  if (viewer.channel && viewer.channel.readyState === "open") viewer.channel.send(JSON.stringify(message));
}

function onMessage(message) {
  switch (message.type) {
    case "started":
      viewer.running = true;
      viewer.started = message;
      viewer.ended = null;
      viewer.chart.reset(message.frames_per_second);
      setState(`session ${message.session_id.slice(0, 8)} · ${message.pipeline} / ${message.cache_policy} · ` +
        `${message.width}x${message.height} at ${message.frames_per_second} fps · seed ${message.seed}`);
      break;
    case "chunk":
      viewer.chart.add(message);
      $("stats").textContent = `chunk ${message.index} · prompt v${message.prompt_version} · ` +
        `buffer ${message.buffered_frames} frames · severity ${fmt(message.report.severity)}`;
      break;
    case "stall":
      viewer.chart.stall();
      break;
    case "ended":
      viewer.running = false;
      viewer.ended = message;
      setState(`ended: ${message.reason}, ${message.chunks} chunks, ${message.frames} frames`);
      $("download").disabled = !message.recording;
      break;
    case "error":
      showError(`${message.code}: ${message.message}`);
      break;
  }
  updateButtons();
}

function fmt(value) { return value == null ? "–" : value.toFixed(3); }

function updateButtons() {
  const open = viewer.channel && viewer.channel.readyState === "open";
  $("start").disabled = !open;
  $("stop").disabled = !open || !viewer.running;
  $("change-prompt").disabled = !open || !viewer.running;
  if (viewer.running) $("download").disabled = true;
}

async function download() {
  try {
    const response = await api(`/api/viewers/${viewer.id}/recording.mp4`);
    const url = URL.createObjectURL(await response.blob());
    const link = Object.assign(document.createElement("a"), { href: url, download: "tokentrim-session.mp4" });
    link.click();
    setTimeout(() => URL.revokeObjectURL(url), 10000);
  } catch (error) {
    showError(String(error.message || error));
  }
}

async function main() {
  viewer.chart = new TelemetryChart($("chart"), $("legend"));
  $("start").onclick = () => {
    $("error").hidden = true;
    viewer.ended = null;
    setState("starting…");
    send(startMessage());
  };
  $("stop").onclick = () => send({ type: "stop" });
  $("change-prompt").onclick = () => send({ type: "prompt", prompt: $("prompt").value });
  $("download").onclick = download;
  $("token-form").onsubmit = (event) => {
    event.preventDefault();
    viewer.token = $("token").value;
    sessionStorage.setItem("tokentrim-token", viewer.token);
    $("token-form").hidden = true;
    main();
  };
  // Leaving the page ends the session at once; the gateway would also notice the data channel closing.
  window.addEventListener("pagehide", () => {
    if (viewer.id) navigator.sendBeacon(`/api/viewers/${viewer.id}/close`);
  });
  try {
    const config = await (await fetch("/api/config")).json();
    if (config.auth && !viewer.token) { $("token-form").hidden = false; return; }
    viewer.info = await (await api("/api/info")).json();
    buildForm(viewer.info);
    await connect();
  } catch (error) {
    showError(String(error.message || error));
  }
}

window.tokentrimViewer = viewer;
main();
