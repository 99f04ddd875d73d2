// The emorec page: photos or webcam frames go to /v1/predict; each face gets its box and top
// emotion drawn on the image, and the selected face's probabilities are shown as bars.
// Webcam frames carry a stream id, so the server tracks who is who: each person gets "#id" and
// a strip of their emotions over the last STRIP_SECONDS.
"use strict";

const $ = (id) => document.getElementById(id);
const canvas = $("canvas");
const ctx = canvas.getContext("2d");
const WEBCAM_INTERVAL_MS = 350;
const BOX = "#14a06f";
const STRIP_SECONDS = 30;

const state = { items: [], current: -1, selected: 0, webcam: null, busy: false, colours: {}, history: new Map() };

function setStatus(text, error = false) {
  $("status").textContent = text;
  $("status").classList.toggle("error", error);
}

async function loadModel() {
  try {
    const info = await (await fetch("/v1/model")).json();
    state.colours = info.colours || {};
    const figure = Object.values(info.model_card || {})[0];
    $("model").textContent = `${info.model_file} · ${info.class_names.length} emotions` + (figure ? ` · ${figure} on FER2013 val` : "");
  } catch (error) {
    $("model").textContent = "model information unavailable";
  }
}

async function predict(blob, name, stream = null) {
  const form = new FormData();
  form.append("files", blob, name);
  const url = stream ? `/v1/predict?stream=${encodeURIComponent(stream)}` : "/v1/predict";
  const response = await fetch(url, { method: "POST", body: form });
  if (response.status === 503) throw new Error("The server is busy; trying again shortly.");
  if (response.status === 413) throw new Error("That file is too large for this server.");
  const [result] = await response.json();
  return result;
}

// Draw the image and, for each face, its box and a label "happy 87%".
function draw(source, result, selected) {
  const width = source.videoWidth || source.naturalWidth || source.width;
  const height = source.videoHeight || source.naturalHeight || source.height;
  canvas.width = width;
  canvas.height = height;
  ctx.drawImage(source, 0, 0, width, height);
  const faces = (result && result.faces) || [];
  const scale = Math.max(1, Math.max(width, height) / 600);
  ctx.lineWidth = 3 * scale;
  ctx.font = `${Math.round(15 * scale)}px system-ui, sans-serif`;
  faces.forEach((face, index) => {
    const [x, y, w, h] = face.box || [0, 0, width, height];
    ctx.strokeStyle = index === selected ? "#ffd166" : BOX;
    ctx.strokeRect(x, y, w, h);
    const label = faceLabel(face);
    const textWidth = ctx.measureText(label).width + 10 * scale;
    const textHeight = 22 * scale;
    const top = y - textHeight >= 0 ? y - textHeight : y;
    ctx.fillStyle = index === selected ? "#ffd166" : BOX;
    ctx.fillRect(Math.max(0, x - ctx.lineWidth / 2), top, textWidth, textHeight);
    ctx.fillStyle = "#0f1218";
    ctx.fillText(label, Math.max(0, x) + 5 * scale, top + textHeight - 6 * scale);
  });
  canvas.dataset.faces = String(faces.length);
  canvas.dataset.labels = faces.map((face) => face.emotion).join(",");
  canvas.dataset.tracks = faces.map((face) => face.track || "").join(",");
}

// "happy 87%", or "#2 happy 87%" for a tracked webcam face.
function faceLabel(face) {
  const who = face.track ? `#${face.track} ` : "";
  return `${who}${face.emotion} ${Math.round(face.confidence * 100)}%`;
}

function showFaces(result, selected) {
  const list = $("faces");
  list.replaceChildren();
  const faces = (result && result.faces) || [];
  faces.forEach((face, index) => {
    const item = document.createElement("li");
    item.dataset.emotion = face.emotion;
    if (face.track) item.dataset.track = String(face.track);
    item.className = index === selected ? "selected" : "";
    item.innerHTML = `<span></span><span class="emotion"></span>`;
    item.firstChild.textContent = face.track ? `Person #${face.track}` : `Face ${index + 1}`;
    item.querySelector(".emotion").textContent = `${face.emotion} ${Math.round(face.confidence * 100)}%`;
    item.addEventListener("click", () => select(index));
    list.append(item);
  });
  showChart(faces[selected]);
}

function showChart(face) {
  const chart = $("chart");
  chart.replaceChildren();
  $("chart-title").textContent = face ? "Probabilities" : "Probabilities (no face)";
  if (!face) return;
  for (const [name, p] of Object.entries(face.probabilities)) {
    const bar = document.createElement("div");
    bar.className = "bar" + (name === face.emotion ? " top" : "");
    bar.innerHTML = `<span class="name"></span><span class="track"><span class="fill"></span></span><span></span>`;
    bar.children[0].textContent = name;
    bar.querySelector(".fill").style.width = `${(p * 100).toFixed(1)}%`;
    bar.children[2].textContent = `${Math.round(p * 100)}%`;
    chart.append(bar);
  }
}

function select(index) {
  state.selected = index;
  const item = state.items[state.current];
  if (!item) return;
  draw(item.image, item.result, index);
  showFaces(item.result, index);
}

function show(position) {
  state.current = position;
  state.selected = 0;
  const item = state.items[position];
  document.querySelectorAll("#thumbs img").forEach((img, i) => img.classList.toggle("active", i === position));
  draw(item.image, item.result, 0);
  showFaces(item.result, 0);
  const faces = item.result.faces.length;
  if (item.result.error) setStatus(`${item.name}: ${item.result.error.replace(/^.*?: /, "")}`, true);
  else setStatus(faces ? `${item.name}: ${faces} face${faces > 1 ? "s" : ""}` : `${item.name}: no face found`);
}

function loadImage(file) {
  return new Promise((resolve, reject) => {
    const image = new Image();
    image.onload = () => resolve(image);
    image.onerror = () => reject(new Error("the browser cannot show this file"));
    image.src = URL.createObjectURL(file);
  });
}

async function handleFiles(files) {
  stopWebcam();
  document.body.dataset.state = "busy";
  for (const file of files) {
    setStatus(`Recognizing ${file.name}…`);
    try {
      const result = await predict(file, file.name);
      const image = await loadImage(file);
      state.items.push({ name: file.name, image, result });
      const thumb = document.createElement("img");
      thumb.src = image.src;
      thumb.alt = file.name;
      const position = state.items.length - 1;
      thumb.addEventListener("click", () => show(position));
      $("thumbs").append(thumb);
      show(position);
    } catch (error) {
      setStatus(`${file.name}: ${error.message}`, true);
    }
  }
  document.body.dataset.state = "done";
}

async function startWebcam() {
  $("mode-webcam").classList.add("active");
  $("mode-photos").classList.remove("active");
  $("drop").hidden = true;
  try {
    const stream = await navigator.mediaDevices.getUserMedia({ video: true, audio: false });
    const video = $("video");
    video.srcObject = stream;
    await video.play();
    const id = Math.random().toString(36).slice(2, 12);  // this page's stream: the server tracks faces per id
    state.webcam = { stream, id, timer: setInterval(webcamFrame, WEBCAM_INTERVAL_MS) };
    state.history = new Map();
    setStatus("Webcam on: looking for faces…");
  } catch (error) {
    setStatus(`Webcam unavailable: ${error.message}`, true);
  }
}

async function webcamFrame() {
  const video = $("video");
  if (state.busy || !video.videoWidth) return;
  state.busy = true;
  const frame = document.createElement("canvas");
  frame.width = video.videoWidth;
  frame.height = video.videoHeight;
  frame.getContext("2d").drawImage(video, 0, 0);
  try {
    const blob = await new Promise((resolve) => frame.toBlob(resolve, "image/jpeg", 0.85));
    const result = await predict(blob, "webcam.jpg", state.webcam.id);
    if (!state.webcam) return;
    remember(result.faces, performance.now() / 1000);
    showPeople(performance.now() / 1000);
    state.items = [{ name: "webcam", image: frame, result }];
    state.current = 0;
    draw(frame, result, Math.min(state.selected, Math.max(result.faces.length - 1, 0)));
    showFaces(result, Math.min(state.selected, Math.max(result.faces.length - 1, 0)));
    const faces = result.faces.length;
    setStatus(faces ? `Webcam: ${faces} face${faces > 1 ? "s" : ""}` : "Webcam: no face in view");
    document.body.dataset.state = "done";
  } catch (error) {
    setStatus(error.message, true);
  } finally {
    state.busy = false;
  }
}

// Each tracked person's emotions, kept for the last STRIP_SECONDS.
function remember(faces, now) {
  for (const face of faces) {
    if (!face.track) continue;
    if (!state.history.has(face.track)) state.history.set(face.track, []);
    state.history.get(face.track).push({ time: now, emotion: face.emotion });
  }
  for (const [track, samples] of state.history) {
    while (samples.length && samples[0].time < now - STRIP_SECONDS) samples.shift();
    if (!samples.length) state.history.delete(track);
  }
}

// One strip per person: a coloured step per frame, the newest on the right.
function showPeople(now) {
  const list = $("people");
  list.replaceChildren();
  $("people-title").hidden = state.history.size === 0;
  const svgNS = "http://www.w3.org/2000/svg";
  for (const [track, samples] of [...state.history].sort((a, b) => a[0] - b[0])) {
    const row = document.createElement("div");
    row.className = "person";
    row.dataset.track = String(track);
    const name = document.createElement("span");
    name.className = "who";
    name.textContent = `#${track}`;
    const strip = document.createElementNS(svgNS, "svg");
    strip.setAttribute("viewBox", `0 0 ${STRIP_SECONDS} 1`);
    strip.setAttribute("preserveAspectRatio", "none");
    strip.classList.add("strip");
    samples.forEach((sample, i) => {
      const end = i + 1 < samples.length ? samples[i + 1].time : now + WEBCAM_INTERVAL_MS / 1000;
      const step = document.createElementNS(svgNS, "rect");
      step.setAttribute("x", String(sample.time - (now - STRIP_SECONDS)));
      step.setAttribute("width", String(Math.max(end - sample.time, 0.05)));
      step.setAttribute("height", "1");
      step.setAttribute("fill", state.colours[sample.emotion] || BOX);
      step.dataset.emotion = sample.emotion;
      strip.append(step);
    });
    const last = document.createElement("span");
    last.className = "now";
    last.textContent = samples[samples.length - 1].emotion;
    row.append(name, strip, last);
    list.append(row);
  }
}

function stopWebcam() {
  if (!state.webcam) return;
  clearInterval(state.webcam.timer);
  state.webcam.stream.getTracks().forEach((track) => track.stop());
  state.webcam = null;
  state.history = new Map();
  showPeople(0);
}

function photosMode() {
  stopWebcam();
  $("mode-photos").classList.add("active");
  $("mode-webcam").classList.remove("active");
  $("drop").hidden = false;
  setStatus("Choose a photo, or switch to the webcam.");
}

$("file").addEventListener("change", (event) => handleFiles([...event.target.files]));
$("mode-webcam").addEventListener("click", startWebcam);
$("mode-photos").addEventListener("click", photosMode);
const drop = $("drop");
drop.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (event) => {
  event.preventDefault();
  drop.classList.remove("over");
  handleFiles([...event.dataTransfer.files].filter((file) => file.type.startsWith("image/")));
});
loadModel();
