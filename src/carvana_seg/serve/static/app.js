// The cut-out page: send a photo to POST /v1/cutout, show the original, the cut-out on a checkerboard and the
// car composited (in the browser, from the returned PNG) on a colour or an uploaded picture. No external code.
"use strict";
const $ = (id) => document.getElementById(id);
const state = { cutout: null, background: null, busy: false };

function setStatus(text, error = false) {
  $("status").textContent = text;
  $("status").classList.toggle("error", error);
}

function headers() {
  const key = $("api-key").value || localStorage.getItem("carvana-seg-api-key") || "";
  return key ? { "X-Api-Key": key } : {};
}

async function loadModel() {
  try {
    const res = await fetch("/v1/model", { headers: headers() });
    const info = await res.json();
    if (!res.ok) throw new Error(info.error ? info.error.message : res.statusText);
    const variants = info.variants.map((v) => `${v.name} ${v.width}x${v.height} x${v.folds.length}`).join(", ");
    $("model").textContent = `run ${info.run} (${info.round}) · ${variants} · threshold ${info.threshold.toFixed(3)}` +
      ` · ${info.backend} on ${info.device} · trained on ${info.trained_on.summary}`;
    const notice = info.trained_on.notice; // synthetic training data: real photos need a real-data run
    $("notice").textContent = notice || "";
    $("notice").hidden = !notice;
  } catch (err) {
    $("model").textContent = `model: ${err.message}`;
    setTimeout(loadModel, 2000);
  }
}

function loadImage(url) {
  return new Promise((resolve, reject) => {
    const img = new Image();
    img.onload = () => resolve(img);
    img.onerror = () => reject(new Error("the browser cannot show this image"));
    img.src = url;
  });
}

function drawComposite() {
  const canvas = $("composite");
  const cut = state.cutout;
  if (!cut) return;
  canvas.width = cut.naturalWidth;
  canvas.height = cut.naturalHeight;
  const ctx = canvas.getContext("2d");
  const bg = state.background;
  if (bg) { // scale to cover, centred: what the API's bg_image_file does
    const s = Math.max(canvas.width / bg.naturalWidth, canvas.height / bg.naturalHeight);
    const w = bg.naturalWidth * s, h = bg.naturalHeight * s;
    ctx.drawImage(bg, (canvas.width - w) / 2, (canvas.height - h) / 2, w, h);
  } else {
    ctx.fillStyle = $("bg-color").value;
    ctx.fillRect(0, 0, canvas.width, canvas.height);
  }
  ctx.drawImage(cut, 0, 0);
  canvas.toBlob((blob) => {
    const link = $("download-bg");
    if (link.href) URL.revokeObjectURL(link.href);
    link.href = URL.createObjectURL(blob);
    link.classList.remove("disabled");
  }, "image/png");
}

async function cut(file) {
  if (!file || state.busy) return;
  state.busy = true;
  document.body.dataset.state = "busy";
  setStatus(`Cutting ${file.name} …`);
  $("original").src = URL.createObjectURL(file);
  const form = new FormData();
  form.append("image_file", file);
  form.append("format", "png");
  const t0 = performance.now();
  try {
    const res = await fetch("/v1/cutout", { method: "POST", body: form, headers: headers() });
    if (!res.ok) {
      const body = await res.json().catch(() => ({}));
      throw new Error(body.error ? body.error.message : `HTTP ${res.status}`);
    }
    const blob = await res.blob();
    const url = URL.createObjectURL(blob);
    state.cutout = await loadImage(url);
    $("cutout").src = url;
    const link = $("download");
    link.href = url;
    link.download = file.name.replace(/\.[^.]*$/, "") + "_cutout.png";
    link.classList.remove("disabled");
    drawComposite();
    const secs = ((performance.now() - t0) / 1000).toFixed(2);
    setStatus(`${res.headers.get("X-Width")}x${res.headers.get("X-Height")} cut out in ${secs} s`);
    document.body.dataset.state = "done";
  } catch (err) {
    setStatus(`Error: ${err.message}`, true);
    document.body.dataset.state = "error";
  } finally {
    state.busy = false;
  }
}

const drop = $("drop");
["dragenter", "dragover"].forEach((ev) => drop.addEventListener(ev, (e) => {
  e.preventDefault();
  drop.classList.add("over");
}));
["dragleave", "drop"].forEach((ev) => drop.addEventListener(ev, () => drop.classList.remove("over")));
drop.addEventListener("drop", (e) => {
  e.preventDefault();
  cut(e.dataTransfer.files[0]);
});
$("file").addEventListener("change", (e) => cut(e.target.files[0]));
$("bg-color").addEventListener("input", () => { state.background = null; drawComposite(); });
$("bg-clear").addEventListener("click", () => { state.background = null; $("bg-file").value = ""; drawComposite(); });
$("bg-file").addEventListener("change", async (e) => {
  const f = e.target.files[0];
  if (!f) return;
  try {
    state.background = await loadImage(URL.createObjectURL(f));
    drawComposite();
  } catch (err) {
    setStatus(`Background: ${err.message}`, true);
  }
});
$("api-key").addEventListener("change", (e) => {
  localStorage.setItem("carvana-seg-api-key", e.target.value);
  loadModel();
});
loadModel();
