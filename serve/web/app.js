// ILS web page: upload an image, send it with the instruction, draw the mask over the image.
"use strict";
const $ = (id) => document.getElementById(id);

function loadImage(src) {
  return new Promise((resolve, reject) => {
    const img = new Image();
    img.onload = () => resolve(img);
    img.onerror = () => reject(new Error("cannot display image"));
    img.src = src;
  });
}

async function maskCanvas(maskB64, w, h) {
  // Turn the 0/255 mask PNG into a red, semi-transparent layer.
  const img = await loadImage("data:image/png;base64," + maskB64);
  const c = document.createElement("canvas");
  c.width = w; c.height = h;
  const ctx = c.getContext("2d");
  ctx.drawImage(img, 0, 0, w, h);
  const data = ctx.getImageData(0, 0, w, h);
  for (let i = 0; i < data.data.length; i += 4) {
    const on = data.data[i] > 127;
    data.data[i] = 255; data.data[i + 1] = 40; data.data[i + 2] = 40;
    data.data[i + 3] = on ? 110 : 0;
  }
  ctx.putImageData(data, 0, 0);
  return c;
}

function showDetails(body) {
  const dl = $("details");
  dl.innerHTML = "";
  const rows = [
    ["present", String(body.present)],
    ["instruction read as", body.normalized_instruction || body.instruction],
    ["confidence", body.confidence.toFixed(3)],
    ["lesion", body.lesion || "-"],
    ["locations", (body.locations || []).join(", ") || "-"],
    ["mask pixels", String(body.mask_pixels)],
    ["mask size", body.mask_size.join(" x ")],
    ["model", body.model_id],
    ["time", body.timings.total_s.toFixed(3) + " s"],
    ["request id", body.request_id],
  ];
  for (const [k, v] of rows) {
    const dt = document.createElement("dt"); dt.textContent = k;
    const dd = document.createElement("dd"); dd.textContent = v;
    dl.append(dt, dd);
  }
}

async function draw(body) {
  const canvas = $("canvas");
  const [h, w] = body.mask_size;
  const scale = Math.min(1, 768 / Math.max(w, h));
  canvas.width = Math.round(w * scale); canvas.height = Math.round(h * scale);
  const ctx = canvas.getContext("2d");
  const base = await loadImage("data:image/png;base64," + body.preview_png_b64);
  ctx.drawImage(base, 0, 0, canvas.width, canvas.height);
  ctx.drawImage(await maskCanvas(body.mask_png_b64, canvas.width, canvas.height), 0, 0);
  canvas.dataset.drawn = "true";
}

$("form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const file = $("image").files[0];
  if (!file) return;
  const fd = new FormData();
  fd.append("image", file);
  fd.append("instruction", $("instruction").value);
  fd.append("preview", "true");
  const headers = {};
  const key = $("apikey").value.trim();
  if (key) headers["Authorization"] = "Bearer " + key;
  $("status").className = ""; $("status").textContent = "Segmenting...";
  $("message").textContent = ""; $("answer").textContent = ""; $("canvas").dataset.drawn = "false";
  $("submit").disabled = true;
  try {
    const resp = await fetch("v1/segment", { method: "POST", body: fd, headers });
    const body = await resp.json();
    if (!resp.ok) throw new Error(`${resp.status}: ${body.error || "request failed"}`);
    $("message").textContent = body.message;
    $("answer").textContent = body.answer;
    showDetails(body);
    await draw(body);
    $("status").textContent = "Done.";
  } catch (err) {
    $("status").className = "error";
    $("status").textContent = String(err.message || err);
  } finally {
    $("submit").disabled = false;
  }
});
