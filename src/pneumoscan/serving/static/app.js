// The page: choose or drop a radiograph, POST it to /v1/predict, show the result. No dependencies.
"use strict";

const $ = (id) => document.getElementById(id);
const state = {
  card: null, original: null, modelView: null, overlay: null, objectUrl: null, request: 0,
  file: null, aspect: null, explaining: false,
};

function setStatus(text) { $("status").textContent = text; }

function showError(text) {
  const box = $("error");
  box.textContent = text;
  box.hidden = !text;
}

async function errorOf(response) {
  try {
    const body = await response.json();
    if (body && body.detail) return new Error(String(body.detail));
  } catch (_) { /* not JSON: fall through */ }
  return new Error(`${response.status} ${response.statusText}`);
}

async function loadCard() {
  const response = await fetch("/v1/model", { headers: { Accept: "application/json" } });
  if (!response.ok) throw await errorOf(response);
  state.card = await response.json();
  const serving = state.card.serving || {};
  const version = serving.version ? `, trained with pneumoscan ${serving.version}` : "";
  $("model-info").textContent =
    `Model: ${serving.model || "unknown"}${version} · threshold ${Number(serving.threshold).toFixed(2)}` +
    ` · backend ${serving.backend}` + (serving.explain ? " · Grad-CAM available" : "");
  return state.card;
}

function stretched() {
  const input = (state.card && state.card.input) || {};
  return input.fit === "stretch";
}

function showImage() {
  const img = $("image");
  const heat = $("heatmap").checked && state.overlay;
  // A model that stretches images sees a square; the heatmap is shown back at the image's own aspect.
  const reshape = heat && stretched() && state.aspect;
  img.style.aspectRatio = reshape ? String(state.aspect) : "";
  img.style.objectFit = reshape ? "fill" : "";
  if (heat) {
    img.src = state.overlay;
    img.alt = "Grad-CAM heatmap over the radiograph: warm colours mark the regions that raised the score";
    $("caption").textContent = reshape
      ? "Grad-CAM heatmap over the image, at the image's own proportions."
      : "Grad-CAM heatmap over the image as the model sees it (at the model's size).";
  } else if (state.original) {
    img.src = state.original;
    img.alt = "The uploaded radiograph";
    $("caption").textContent = "The uploaded radiograph.";
  } else if (state.modelView) {
    img.src = state.modelView;
    img.alt = "The radiograph as the model sees it";
    $("caption").textContent = "The radiograph as the model sees it (this browser cannot display the file itself).";
  } else {
    img.removeAttribute("src");
    img.alt = "";
    $("caption").textContent = "This browser cannot display this file (DICOM?); the result below is still valid.";
  }
}

// Only a PNEUMONIA answer of a model with a subtype head carries one: "bacterial (P viral 0.12)", "uncertain".
function subtypeText(result) {
  if (result.label !== "PNEUMONIA" || !result.subtype) return "";
  if (result.subtype === "uncertain" || typeof result.viral_probability !== "number") return result.subtype;
  return `${result.subtype} (P viral ${result.viral_probability.toFixed(2)})`;
}

function render(result) {
  const pct = (100 * result.probability).toFixed(1);
  $("result-file").textContent = result.filename;
  $("probability").textContent = `${pct}%`;
  $("label").textContent = result.label;
  $("label").className = result.label;
  $("threshold").textContent = result.threshold.toFixed(2);
  $("subtype").textContent = subtypeText(result);
  $("subtype-block").hidden = !subtypeText(result);
  const fill = $("bar-fill");
  fill.style.width = `${pct}%`;
  fill.classList.toggle("pneumonia", result.label === "PNEUMONIA");
  $("bar-threshold").style.left = `calc(${(100 * result.threshold).toFixed(1)}% - 1px)`;
  $("details").textContent =
    `Model ${result.model} (pneumoscan ${result.version || "?"}, ${result.backend}); answered in ` +
    (result.latency_ms >= 1000 ? `${(result.latency_ms / 1000).toFixed(1)} s.` : `${Math.round(result.latency_ms)} ms.`);

  state.overlay = null;
  state.modelView = null;
  const toggle = $("heatmap");
  const explain = Boolean(state.card && state.card.serving && state.card.serving.explain);
  toggle.disabled = !explain;
  toggle.checked = false;
  $("heatmap-note").textContent = explain ? "" : "No heatmap: this server has no PyTorch weights for Grad-CAM.";
  showImage();
  $("result").hidden = false;
}

function showExplanation(explanation) {
  state.overlay = `data:image/png;base64,${explanation.overlay_png_base64}`;
  state.modelView = `data:image/png;base64,${explanation.image_png_base64}`;
  $("heatmap-note").textContent = "";
  showImage();
}

// Grad-CAM is asked for only when the box is ticked (the first one loads PyTorch on the server).
async function toggleHeatmap() {
  if (!$("heatmap").checked || state.overlay || state.explaining || !state.file) {
    showImage();
    return;
  }
  const request = state.request;
  state.explaining = true;
  $("heatmap-note").textContent = "Computing the Grad-CAM heatmap…";
  try {
    const explained = await post(state.file, true);
    if (request === state.request) showExplanation(explained.explanation);
  } catch (error) {
    if (request === state.request) {
      $("heatmap-note").textContent = `No heatmap: ${error.message}`;
      $("heatmap").checked = false;
    }
  } finally {
    state.explaining = false;
  }
}

async function post(file, explain) {
  const form = new FormData();
  form.append("file", file, file.name);
  const response = await fetch(`/v1/predict${explain ? "?explain=true" : ""}`, { method: "POST", body: form });
  if (!response.ok) throw await errorOf(response);
  return response.json();
}

function previewable(file) {
  return /^image\/(jpeg|png|gif|webp|bmp)$/.test(file.type) || /\.(jpe?g|png)$/i.test(file.name);
}

async function analyse(file) {
  const request = ++state.request;  // answers for an earlier file are dropped
  showError("");
  setStatus(`Analysing ${file.name}…`);
  if (state.objectUrl) URL.revokeObjectURL(state.objectUrl);
  state.objectUrl = previewable(file) ? URL.createObjectURL(file) : null;
  state.original = state.objectUrl;
  state.file = file;
  state.aspect = null;
  state.explaining = false;
  try {
    if (!state.card) await loadCard();
    const result = await post(file, false);
    if (request !== state.request) return;
    render(result);
    setStatus(`${result.filename}: probability of pneumonia ${(100 * result.probability).toFixed(1)}%, ` +
              `labelled ${result.label}${subtypeText(result) ? `, subtype ${subtypeText(result)}` : ""}.`);
  } catch (error) {
    if (request !== state.request) return;
    $("result").hidden = true;
    setStatus("");
    // The server's messages already name the file.
    showError(error.message.startsWith(file.name) ? error.message : `Could not analyse ${file.name}: ${error.message}`);
  }
}

function setUpDropzone() {
  const zone = $("dropzone");
  // Without this, a file dropped next to the box makes the browser navigate away to it.
  for (const type of ["dragover", "drop"]) {
    window.addEventListener(type, (event) => event.preventDefault());
  }
  zone.addEventListener("dragenter", () => zone.classList.add("dragging"));
  zone.addEventListener("dragover", (event) => { event.dataTransfer.dropEffect = "copy"; zone.classList.add("dragging"); });
  zone.addEventListener("dragleave", (event) => {
    if (!zone.contains(event.relatedTarget)) zone.classList.remove("dragging");
  });
  zone.addEventListener("drop", (event) => {
    zone.classList.remove("dragging");
    const file = event.dataTransfer.files[0];
    if (file) analyse(file);
  });
}

document.addEventListener("DOMContentLoaded", () => {
  $("file").addEventListener("change", (event) => {
    const file = event.target.files[0];
    if (file) analyse(file);
  });
  $("heatmap").addEventListener("change", toggleHeatmap);
  $("image").addEventListener("load", () => {
    const img = $("image");
    // The proportions of the upload itself (not of the square heatmap), for showing the heatmap back.
    if (img.src === state.original && img.naturalWidth && img.naturalHeight) {
      state.aspect = img.naturalWidth / img.naturalHeight;
    }
  });
  $("image").addEventListener("error", () => {
    // The browser could not decode the file itself: fall back to the model's view when there is one.
    if (state.original && state.original === state.objectUrl) {
      state.original = null;
      showImage();
    }
  });
  setUpDropzone();
  loadCard().catch((error) => showError(`The model is not ready: ${error.message}. Reload the page in a moment.`));
});
