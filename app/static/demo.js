// The browser demo: draw or drop an image, POST it to /predict, show the answer.
// Plain script, no build step; every request goes to this page's own origin.
"use strict";

(() => {
  // MNIST digits are ~2-3 px strokes in a 20 px box; on this 280 px canvas a digit drawn at
  // full height is cropped and scaled ~10x down by the service, so 20 px lands there.
  const STROKE_WIDTH = 20;
  // Time after a stroke ends before predicting: a digit of several strokes is sent once.
  const DEBOUNCE_MS = 250;
  const MESSAGES = {
    400: "The service could not read that image",
    401: "The service needs a valid API key",
    404: "The service does not have that model",
    413: "That upload is too large for the service",
    415: "That file is not an image type the service takes",
    422: "The service found no usable image in the request",
    503: "The service is not ready yet; try again in a moment",
  };

  const $ = (id) => document.getElementById(id);
  const canvas = $("canvas");
  const ctx = canvas.getContext("2d");
  const modelSelect = $("model");
  const fileInput = $("file");
  const result = $("result");

  const state = {
    apiKey: null, // memory only: never stored, never put in a URL
    models: new Map(), // name -> model info from GET /models
    last: null, // {blob, name}: the last input, re-sent when the model changes
    drawn: false,
    pointer: null, // the id of the pointer drawing now
    point: null,
    timer: 0,
    seq: 0, // answers to older requests than the newest are dropped
  };

  function authHeaders() {
    return state.apiKey ? { "X-API-Key": state.apiKey } : {};
  }

  function setBusy(busy) {
    result.setAttribute("aria-busy", busy ? "true" : "false");
  }

  function announce(text) {
    $("status").textContent = text;
  }

  function showError(text) {
    const error = $("error");
    error.textContent = text;
    error.hidden = false;
    announce(text);
  }

  function clearError() {
    $("error").hidden = true;
    $("error").textContent = "";
  }

  // A readable sentence for an error answer: what it means, the service's detail, the code.
  async function describe(response) {
    let detail = "";
    try {
      const body = await response.json();
      if (typeof body.detail === "string") {
        detail = body.detail;
      } else if (Array.isArray(body.detail)) {
        detail = body.detail.map((e) => e.msg || String(e)).join("; ");
      }
    } catch {
      // not JSON: the status alone says enough
    }
    const meaning = MESSAGES[response.status] || "The service answered with an error";
    return `${meaning}${detail ? `: ${detail}` : "."} (HTTP ${response.status})`;
  }

  function askForKey(message) {
    const form = $("key-form");
    form.hidden = false;
    showError(message);
    $("api-key").focus();
  }

  // ------------------------------------------------------------------ models

  async function loadModels() {
    let response;
    try {
      response = await fetch("/models", { headers: authHeaders() });
    } catch {
      showError("Could not reach the service.");
      return;
    }
    if (response.status === 401) {
      askForKey(await describe(response));
      return;
    }
    if (!response.ok) {
      showError(await describe(response));
      return;
    }
    const body = await response.json();
    if (body.models.length === 0) {
      // The service answers before its models are loaded: ask again shortly.
      announce("The service is loading its models…");
      setTimeout(loadModels, 1000);
      return;
    }
    const current = modelSelect.value || body.default_model;
    state.models = new Map(body.models.map((m) => [m.name, m]));
    modelSelect.replaceChildren(
      ...body.models.map((m) => {
        const option = document.createElement("option");
        option.value = m.name;
        option.textContent = m.name;
        return option;
      }),
    );
    modelSelect.value = state.models.has(current) ? current : body.models[0].name;
    modelSelect.disabled = false;
    clearError();
    describeModel();
  }

  function describeModel() {
    const model = state.models.get(modelSelect.value);
    if (!model) return;
    const accuracy = model.metrics && model.metrics.test_accuracy;
    const parts = [`${model.architecture.name} on ${model.dataset}`];
    if (typeof accuracy === "number") {
      parts.push(`${(accuracy * 100).toFixed(2)}% test accuracy`);
    }
    parts.push(`${model.input.width}×${model.input.height} input`);
    $("model-info").textContent = parts.join(", ");
    $("seen-caption").textContent =
      `What the model saw (${model.input.width}×${model.input.height})`;
  }

  // ------------------------------------------------------------------ prediction

  async function predict(input) {
    state.last = input;
    const seq = ++state.seq;
    const model = modelSelect.value;
    const form = new FormData();
    form.append("file", input.blob, input.name);
    const params = new URLSearchParams({ include_input: "true" });
    if (model) params.set("model", model);
    setBusy(true);
    announce("Predicting…");
    const started = performance.now();
    let response;
    let body = null;
    try {
      response = await fetch(`/predict?${params}`, {
        method: "POST",
        body: form,
        headers: authHeaders(),
      });
      if (response.ok) body = await response.json();
    } catch {
      if (seq === state.seq) {
        showError("Could not reach the service.");
        setBusy(false);
      }
      return;
    }
    const latency = performance.now() - started;
    if (seq !== state.seq) return;
    if (body === null) {
      const message = await describe(response);
      if (seq !== state.seq) return;
      clearResult();
      if (response.status === 401) askForKey(message);
      else showError(message);
      setBusy(false);
      return;
    }
    clearError();
    render(body.model, body.predictions[0], latency);
    setBusy(false);
  }

  function percent(p) {
    return p > 0 && p < 0.0005 ? "<0.1%" : `${(p * 100).toFixed(1)}%`;
  }

  function render(modelName, prediction, latency) {
    const model = state.models.get(modelName);
    const classes = model ? model.classes : Object.keys(prediction.probabilities);
    $("top-label").textContent = prediction.label;
    $("top-probability").textContent = percent(prediction.probability);
    $("latency").textContent = `${modelName} · ${Math.round(latency)} ms round trip`;

    const rows = classes.map((label) => {
      const p = prediction.probabilities[label] ?? 0;
      const row = document.createElement("li");
      row.dataset.testid = `prob-${label}`;
      row.dataset.probability = String(p);
      if (label === prediction.label) row.classList.add("best");
      const name = document.createElement("span");
      name.className = "bar-label";
      name.textContent = label;
      const track = document.createElement("span");
      track.className = "bar-track";
      const fill = document.createElement("span");
      fill.className = "bar-fill";
      fill.style.width = `${Math.max(0, Math.min(1, p)) * 100}%`;
      track.append(fill);
      const value = document.createElement("span");
      value.className = "bar-value";
      value.textContent = percent(p);
      row.append(name, track, value);
      return row;
    });
    $("bars").replaceChildren(...rows);

    const seen = prediction.input_image;
    if (typeof seen === "string" && seen.startsWith("data:image/")) {
      $("seen").src = seen;
      $("seen-figure").hidden = false;
    } else {
      // Services without ?include_input answer without it: show the rest.
      $("seen").removeAttribute("src");
      $("seen-figure").hidden = true;
    }
    announce(`${prediction.label}, ${percent(prediction.probability)} (${modelName})`);
  }

  function clearResult() {
    $("top-label").textContent = "–";
    $("top-probability").textContent = "";
    $("latency").textContent = "";
    $("bars").replaceChildren();
    $("seen").removeAttribute("src");
    $("seen-figure").hidden = true;
  }

  // ------------------------------------------------------------------ drawing

  function resetCanvas() {
    // Opaque black: the drawing is white on black, as MNIST is.
    ctx.fillStyle = "#000";
    ctx.fillRect(0, 0, canvas.width, canvas.height);
    state.drawn = false;
  }

  function canvasPoint(event) {
    const box = canvas.getBoundingClientRect();
    return [
      ((event.clientX - box.left) * canvas.width) / box.width,
      ((event.clientY - box.top) * canvas.height) / box.height,
    ];
  }

  function dot([x, y]) {
    ctx.beginPath();
    ctx.arc(x, y, STROKE_WIDTH / 2, 0, 2 * Math.PI);
    ctx.fill();
  }

  function lineTo(point) {
    ctx.beginPath();
    ctx.moveTo(...state.point);
    ctx.lineTo(...point);
    ctx.stroke();
    state.point = point;
  }

  function sendDrawing() {
    state.timer = 0;
    if (!state.drawn) return;
    canvas.toBlob((blob) => {
      if (blob) predict({ blob, name: "drawing.png" });
    }, "image/png");
  }

  canvas.addEventListener("pointerdown", (event) => {
    if (event.button !== 0 || state.pointer !== null) return;
    event.preventDefault();
    canvas.setPointerCapture(event.pointerId);
    clearTimeout(state.timer);
    setBusy(true);
    if (!state.drawn) {
      // The first stroke after an upload starts a fresh drawing.
      resetCanvas();
      fileInput.value = "";
    }
    state.pointer = event.pointerId;
    state.point = canvasPoint(event);
    state.drawn = true;
    ctx.fillStyle = "#fff";
    ctx.strokeStyle = "#fff";
    ctx.lineWidth = STROKE_WIDTH;
    ctx.lineCap = "round";
    ctx.lineJoin = "round";
    dot(state.point);
  });

  canvas.addEventListener("pointermove", (event) => {
    if (event.pointerId !== state.pointer) return;
    // Coalesced events: every point the device reported, not one per frame.
    const events = event.getCoalescedEvents ? event.getCoalescedEvents() : [event];
    for (const e of events.length ? events : [event]) lineTo(canvasPoint(e));
  });

  function endStroke(event) {
    if (event.pointerId !== state.pointer) return;
    state.pointer = null;
    state.timer = setTimeout(sendDrawing, DEBOUNCE_MS);
  }
  canvas.addEventListener("pointerup", endStroke);
  canvas.addEventListener("pointercancel", endStroke);

  $("clear").addEventListener("click", () => {
    clearTimeout(state.timer);
    state.seq++; // drop an answer still on its way
    state.last = null;
    resetCanvas();
    fileInput.value = "";
    clearResult();
    clearError();
    setBusy(false);
    announce("Cleared.");
  });

  // ------------------------------------------------------------------ files

  // The upload, fitted into the canvas: the input stays beside what the model saw. The
  // file itself is what is sent, in its own format, whether or not the browser can show it.
  async function showFile(file) {
    resetCanvas();
    try {
      const bitmap = await createImageBitmap(file);
      const scale = Math.min(canvas.width / bitmap.width, canvas.height / bitmap.height);
      const w = bitmap.width * scale;
      const h = bitmap.height * scale;
      ctx.drawImage(bitmap, (canvas.width - w) / 2, (canvas.height - h) / 2, w, h);
      bitmap.close();
    } catch {
      ctx.fillStyle = "#bbb";
      ctx.font = "16px sans-serif";
      ctx.textAlign = "center";
      ctx.fillText("(no preview for this format)", canvas.width / 2, canvas.height / 2);
    }
  }

  function sendFile(file) {
    clearTimeout(state.timer);
    showFile(file);
    predict({ blob: file, name: file.name || "image" });
  }

  fileInput.addEventListener("change", () => {
    if (fileInput.files.length) sendFile(fileInput.files[0]);
  });

  function hasFiles(event) {
    return event.dataTransfer && Array.from(event.dataTransfer.types).includes("Files");
  }
  document.addEventListener("dragover", (event) => {
    if (!hasFiles(event)) return;
    event.preventDefault(); // allows the drop
    document.body.classList.add("dragging");
  });
  document.addEventListener("dragleave", (event) => {
    if (event.relatedTarget === null) document.body.classList.remove("dragging");
  });
  document.addEventListener("drop", (event) => {
    document.body.classList.remove("dragging");
    if (!hasFiles(event)) return;
    event.preventDefault(); // the browser would open the file instead
    const file = event.dataTransfer.files[0];
    if (file) {
      fileInput.value = "";
      sendFile(file);
    }
  });
  document.addEventListener("paste", (event) => {
    const data = event.clipboardData;
    const file = data && Array.from(data.files).find((f) => f.type.startsWith("image/"));
    if (!file) return; // text pasted into the key field stays text
    event.preventDefault();
    fileInput.value = "";
    sendFile(file);
  });

  // ------------------------------------------------------------------ settings

  modelSelect.addEventListener("change", () => {
    describeModel();
    if (state.last) predict(state.last);
  });

  $("key-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    state.apiKey = $("api-key").value.trim() || null;
    await loadModels();
    if (state.models.size) {
      $("key-form").hidden = true;
      modelSelect.focus();
      if (state.last) predict(state.last);
    }
  });

  resetCanvas();
  loadModels();
})();
