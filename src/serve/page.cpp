#include "patchwise/serve/page.h"

namespace patchwise {

const std::string& serve_page() {
  // Never destroyed: connection threads may still answer while the process exits.
  static const auto* page = new std::string(R"html(<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>patchwise</title>
<style>
  body { font: 15px/1.4 system-ui, sans-serif; margin: 0; color: #1d2330; background: #f5f6f8; }
  header { background: #1d2330; color: #fff; padding: 10px 16px; }
  header b { font-size: 18px; }
  #model { font-size: 13px; opacity: .8; }
  main { display: flex; flex-wrap: wrap; gap: 16px; padding: 16px; }
  section { background: #fff; border-radius: 8px; padding: 12px; box-shadow: 0 1px 3px #0002;
            flex: 1 1 300px; min-width: 0; }
  #drop { border: 2px dashed #8a93a6; border-radius: 8px; padding: 18px; text-align: center;
          cursor: pointer; }
  #drop.over { background: #e8eefc; }
  canvas { width: 100%; max-width: 480px; image-rendering: pixelated; display: block;
           margin: 10px auto 0; background: #000; }
  #result { font-size: 22px; font-weight: 600; margin: 4px 0 8px; }
  #error { color: #b00020; white-space: pre-wrap; }
  .bar { display: flex; align-items: center; gap: 6px; font-size: 13px; margin: 2px 0; }
  .bar span:first-child { width: 90px; overflow: hidden; text-overflow: ellipsis; white-space: nowrap; }
  .bar .track { flex: 1; background: #e7e9ee; height: 12px; border-radius: 6px; overflow: hidden; }
  .bar .fill { background: #3867d6; height: 100%; }
  .bar.win .fill { background: #20bf6b; }
  .patch { margin-top: 10px; }
  .patch h4 { margin: 6px 0 2px; font-size: 13px; }
  label { font-size: 13px; }
  input[type=password] { width: 100%; box-sizing: border-box; }
</style>
</head>
<body>
<header><b>patchwise</b> <span id="model">loading the model&hellip;</span></header>
<main>
  <section>
    <div id="drop">Drop an image here, or <u>choose a file</u>
      <input id="file" type="file" accept="image/*" hidden></div>
    <label id="tokenrow" hidden>Token <input id="token" type="password"></label>
    <canvas id="view" width="280" height="280"></canvas>
    <label><input id="heat" type="checkbox" checked> heatmap</label>
  </section>
  <section>
    <div id="result">No image yet</div>
    <div id="error"></div>
    <div id="fused"></div>
    <div id="patches"></div>
  </section>
</main>
<script>
"use strict";
const $ = (id) => document.getElementById(id);
const esc = (s) => String(s).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
let info = null, image = null, answer = null;

function headers() {
  const t = $("token").value || localStorage.getItem("patchwise-token") || "";
  return t ? { Authorization: "Bearer " + t } : {};
}

async function loadModel() {
  const r = await fetch("/v1/model", { headers: headers() });
  if (r.status === 401) { $("tokenrow").hidden = false; $("model").textContent = "token needed"; return; }
  info = await r.json();
  const c = info.config;
  $("model").textContent = `${c.backbone ? c.backbone.name || "" : ""} ` +
    `${info.tiled ? "tiles" : info.patch_grid || ""}, fusion ${c.fusion}, ${info.classes.length} classes`;
}

function bars(probs, winner) {
  const order = probs.map((p, k) => k).sort((a, b) => probs[b] - probs[a]);
  return order.map((k) => `<div class="bar${k === winner ? " win" : ""}"><span>${esc(info.classes[k])}</span>` +
    `<span class="track"><span class="fill" style="display:block;width:${(100 * probs[k]).toFixed(1)}%"></span></span>` +
    `<span>${probs[k].toFixed(3)}</span></div>`).join("");
}

function boxes() {
  if (!answer) return [];
  if (answer.patches) {
    return answer.patches.map((p) => ({ x: p.x, y: p.y, w: p.w, h: p.h,
      score: p.probabilities[answer.class], sx: image.width / info.config.image.width,
      sy: image.height / info.config.image.height }));
  }
  const top = answer.top_tiles || [];
  const max = Math.max(...top.map((t) => t.score), 1e-12);
  return top.map((t) => ({ x: t.x, y: t.y, w: t.w, h: t.h, score: t.score / max, sx: 1, sy: 1 }));
}

function draw() {
  const cv = $("view"), g = cv.getContext("2d");
  if (!image) return;
  const scale = Math.max(1, Math.floor(480 / Math.max(image.width, image.height)));
  cv.width = image.width * scale; cv.height = image.height * scale;
  g.imageSmoothingEnabled = false;
  g.drawImage(image, 0, 0, cv.width, cv.height);
  for (const b of boxes()) {
    const x = b.x * b.sx * scale, y = b.y * b.sy * scale, w = b.w * b.sx * scale, h = b.h * b.sy * scale;
    if ($("heat").checked) {
      g.fillStyle = `rgba(255, 80, 0, ${(0.45 * b.score).toFixed(3)})`;
      g.fillRect(x, y, w, h);
    }
    g.strokeStyle = "#ffd32a"; g.lineWidth = Math.max(1, scale / 2);
    g.strokeRect(x + 0.5, y + 0.5, w - 1, h - 1);
  }
}

function show() {
  $("result").textContent = `${answer.label} (${(100 * answer.probability).toFixed(1)} %)`;
  $("fused").innerHTML = "<h4>Fused</h4>" + bars(answer.probabilities, answer.class);
  const parts = answer.patches ? answer.patches.map((p, i) =>
    `<div class="patch"><h4>Patch ${i + 1} at (${p.x}, ${p.y}), ${p.w}x${p.h}</h4>` +
    bars(p.probabilities, answer.class) + "</div>") :
    [`<div class="patch"><h4>${answer.tiles} tiles; top tiles by ${esc(answer.score)}</h4>` +
     (answer.top_tiles || []).map((t) => `<div>(${t.x}, ${t.y}) ${t.w}x${t.h}: ${t.score.toFixed(4)}</div>`).join("") +
     "</div>"];
  $("patches").innerHTML = parts.join("");
  draw();
}

async function predict(file) {
  $("error").textContent = ""; $("result").textContent = "Classifying\u2026";
  image = await createImageBitmap(file).catch(() => null);
  answer = null; draw();
  const r = await fetch("/v1/predict", { method: "POST", body: file,
    headers: Object.assign({ "Content-Type": file.type || "application/octet-stream" }, headers()) });
  const body = await r.json().catch(() => ({ error: `HTTP ${r.status}` }));
  if (!r.ok) {
    if (r.status === 401) $("tokenrow").hidden = false;
    $("result").textContent = "Error"; $("error").textContent = body.error; return;
  }
  if (!info) await loadModel();
  answer = body; show();
}

$("drop").onclick = () => $("file").click();
$("file").onchange = () => { if ($("file").files[0]) predict($("file").files[0]); };
$("drop").ondragover = (e) => { e.preventDefault(); $("drop").classList.add("over"); };
$("drop").ondragleave = () => $("drop").classList.remove("over");
$("drop").ondrop = (e) => { e.preventDefault(); $("drop").classList.remove("over");
  if (e.dataTransfer.files[0]) predict(e.dataTransfer.files[0]); };
$("heat").onchange = draw;
$("token").onchange = () => { localStorage.setItem("patchwise-token", $("token").value); loadModel(); };
loadModel();
</script>
</body>
</html>
)html");
  return *page;
}

}  // namespace patchwise
