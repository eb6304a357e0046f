"""The playground page served at ``/``: plain HTML and JavaScript in this module (no CDN, no
files to ship; a device may be offline). Pick a model, chat with streaming (an image attached for
image+text bundles), or see a classifier's probabilities. ``#out``'s ``data-done`` says when an
answer is complete (its finish reason, ``classified`` or ``error``) and ``data-chunks`` how many
server-sent events the page read: the browser test waits on the one and checks the other."""

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>tunewright serve</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body{font:15px system-ui,sans-serif;max-width:46rem;margin:2rem auto;padding:0 1rem;color:#222}
textarea,input,select,button{font:inherit}textarea{width:100%;box-sizing:border-box}
#out{white-space:pre-wrap;border:1px solid #ccc;border-radius:6px;padding:.6rem;min-height:4rem}
.row{display:flex;gap:.5rem;align-items:center;margin:.5rem 0;flex-wrap:wrap}
.err{color:#a00}table{border-collapse:collapse}td{padding:.1rem .6rem}
</style></head><body>
<h1>tunewright serve</h1>
<div class="row"><label>model <select id="model"></select></label>
<label>API key <input id="key" type="password" size="18" placeholder="if the server has one"></label>
<label>max tokens <input id="max" type="number" value="128" min="1" style="width:5rem"></label>
<label>temperature <input id="temp" type="number" value="1" min="0" max="2" step="0.1" style="width:4rem"></label></div>
<textarea id="prompt" rows="4" placeholder="Type a message (a text to classify, for a classifier)"></textarea>
<div class="row"><input id="image" type="file" accept="image/png,image/jpeg,image/webp">
<button id="send">Send</button></div>
<div id="out" aria-live="polite"></div>
<script>
const $ = id => document.getElementById(id);
let kinds = {};
function headers() {
  const h = {"Content-Type": "application/json"};
  if ($("key").value) h["Authorization"] = "Bearer " + $("key").value;
  return h;
}
async function models() {
  const r = await fetch("/v1/models", {headers: headers()});
  if (!r.ok) { $("out").textContent = "models: HTTP " + r.status + " (API key?)"; return; }
  const sel = $("model"); sel.innerHTML = "";
  for (const m of (await r.json()).data) {
    kinds[m.id] = m.task_kind; const o = document.createElement("option");
    o.value = o.textContent = m.id; sel.appendChild(o);
  }
}
function dataUrl(file) {
  return new Promise((ok, bad) => { const r = new FileReader();
    r.onload = () => ok(r.result); r.onerror = bad; r.readAsDataURL(file); });
}
async function fail(r) {
  let body = await r.text();
  try { const e = JSON.parse(body).error; body = typeof e === "string" ? e : e.message; } catch (x) {}
  $("out").innerHTML = ""; const p = document.createElement("span");
  p.className = "err"; p.textContent = "HTTP " + r.status + ": " + body; $("out").appendChild(p);
  $("out").dataset.done = "error";
}
async function classify(model, text, file) {
  const data = file ? [(await dataUrl(file))] : [text];
  const r = await fetch("/v2/models/" + encodeURIComponent(model) + "/infer", {method: "POST",
    headers: headers(), body: JSON.stringify({inputs: [{name: file ? "image" : "text",
    shape: [1], datatype: "BYTES", data: data}]})});
  if (!r.ok) return fail(r);
  const answer = await r.json(); const labels = answer.parameters.labels;
  const probs = answer.outputs.find(o => o.name === "probabilities").data;
  const table = document.createElement("table");
  labels.forEach((l, i) => { const tr = table.insertRow();
    tr.insertCell().textContent = l; tr.insertCell().textContent = probs[i].toFixed(4); });
  $("out").innerHTML = ""; $("out").appendChild(table); $("out").dataset.done = "classified";
}
async function chat(model, text, file) {
  const content = file ? [{type: "image_url", image_url: {url: await dataUrl(file)}},
                          {type: "text", text: text}] : text;
  const r = await fetch("/v1/chat/completions", {method: "POST", headers: headers(),
    body: JSON.stringify({model: model, messages: [{role: "user", content: content}],
                          max_tokens: Number($("max").value) || 128, stream: true,
                          temperature: $("temp").value === "" ? 1 : Number($("temp").value)})});
  if (!r.ok) return fail(r);
  $("out").textContent = ""; $("out").dataset.done = ""; let chunks = 0;
  const reader = r.body.getReader(); const dec = new TextDecoder(); let buf = "";
  for (;;) {
    const {value, done} = await reader.read(); if (done) break;
    buf += dec.decode(value, {stream: true}); let cut;
    while ((cut = buf.indexOf("\\n\\n")) >= 0) {
      const line = buf.slice(0, cut).trim(); buf = buf.slice(cut + 2);
      if (!line.startsWith("data: ") || line === "data: [DONE]") continue;
      const ev = JSON.parse(line.slice(6)); $("out").dataset.chunks = ++chunks;
      for (const c of ev.choices || []) {
        $("out").textContent += (c.delta && c.delta.content) || "";
        if (c.finish_reason) $("out").dataset.done = c.finish_reason;
      }
    }
  }
  if (!$("out").dataset.done) $("out").dataset.done = "incomplete";  // the stream broke off
}
$("send").onclick = async () => {
  const model = $("model").value, text = $("prompt").value, file = $("image").files[0];
  if (!model) return models();
  $("out").textContent = "..."; $("out").dataset.done = "";
  try {
    if ((kinds[model] || "").includes("classification")) await classify(model, text, file);
    else await chat(model, text, file);
  } catch (e) { $("out").textContent = String(e); $("out").dataset.done = "error"; }
};
$("key").onchange = models;
models();
</script></body></html>
"""
