// Upload page: POST /v1/looks, draw boxes and mask outlines, list matches per garment.
const COLORS = ["#e11d48", "#2563eb", "#16a34a", "#d97706", "#7c3aed", "#0891b2"];
const canvas = document.getElementById("photo");
const ctx = canvas.getContext("2d");
const statusEl = document.getElementById("status");
const results = document.getElementById("results");
let file = null, img = null, look = null, drag = null;

function setStatus(text, isError = false) {
  statusEl.textContent = text;
  statusEl.className = isError ? "error" : "";
}

function decodeRle(rle) {  // COCO uncompressed RLE, column-major
  const [h, w] = rle.size, out = new Uint8Array(h * w);
  let pos = 0, on = false;
  for (const n of rle.counts) { if (on) out.fill(1, pos, pos + n); pos += n; on = !on; }
  return { h, w, at: (x, y) => out[x * h + y] };
}

function draw() {
  if (!img) return;
  ctx.drawImage(img, 0, 0, canvas.width, canvas.height);
  if (!look) return;
  const sx = canvas.width / look.image.width, sy = canvas.height / look.image.height;
  look.garments.forEach((g, i) => {
    const c = COLORS[g.index % COLORS.length];
    if (g.mask) {  // outline: mask pixels with an unmasked neighbour, sampled every 2 px
      const m = decodeRle(g.mask);
      ctx.fillStyle = c;
      for (let y = 1; y < m.h - 1; y += 2) for (let x = 1; x < m.w - 1; x += 2)
        if (m.at(x, y) && (!m.at(x - 2 < 0 ? 0 : x - 2, y) || !m.at(x + 1, y) || !m.at(x, y - 1) || !m.at(x, y + 1)))
          ctx.fillRect(x * sx, y * sy, 2, 2);
    }
    const [x0, y0, x1, y1] = g.box;
    ctx.strokeStyle = c; ctx.lineWidth = 3;
    ctx.strokeRect(x0 * sx, y0 * sy, (x1 - x0) * sx, (y1 - y0) * sy);
    ctx.fillStyle = c; ctx.font = "bold 14px system-ui";
    ctx.fillText(`${g.index} ${g.category}`, x0 * sx + 4, y0 * sy + 16);
  });
  if (drag && drag.x1 !== undefined) {
    ctx.setLineDash([6, 4]); ctx.strokeStyle = "#111";
    ctx.strokeRect(drag.x0, drag.y0, drag.x1 - drag.x0, drag.y1 - drag.y0); ctx.setLineDash([]);
  }
}

function render() {
  results.innerHTML = "";
  if (!look.garments.length) { results.textContent = "No garment found in this photo."; return; }
  for (const g of look.garments) {
    const div = document.createElement("div");
    div.className = "garment"; div.dataset.garment = g.index;
    div.style.setProperty("--c", COLORS[g.index % COLORS.length]);
    div.innerHTML = `<h2>${g.index}: ${g.category} <small>(${g.label}, detection ${g.scores.detection.toFixed(2)})</small></h2>`;
    const row = document.createElement("div"); row.className = "matches";
    for (const m of g.matches) {
      const card = document.createElement("div"); card.className = "match";
      const rr = m.rerank_score === null ? "–" : m.rerank_score.toFixed(3);
      card.innerHTML = `<img alt="" src="${m.image || ""}"><div class="score">${m.score.toFixed(3)}</div>
        <div>recall ${m.recall_score.toFixed(3)} · rerank ${rr}</div><div class="title"></div>`;
      card.querySelector(".title").textContent = m.title || m.product_id;
      row.appendChild(card);
    }
    div.appendChild(row); results.appendChild(div);
  }
}

async function search(params = {}) {
  if (!file) return;
  const form = new FormData(); form.append("image", file);
  const qs = new URLSearchParams({ k: 5, ...params });
  setStatus("Searching…");
  const t = performance.now();
  try {
    const resp = await fetch(`/v1/looks?${qs}`, { method: "POST", body: form });
    const body = await resp.json();
    if (!resp.ok) { setStatus(`${resp.status}: ${body.error.message}`, true); return; }
    if (params.garment !== undefined && look) {  // re-search of one garment: replace just it
      const g = body.garments[0];
      look.garments = look.garments.map((x) => (x.index === g.index ? g : x));
    } else { look = body; }
    setStatus(`${look.garments.length} garment(s), pose: ${look.pose.reason} (${Math.round(performance.now() - t)} ms)`);
    render(); draw();
  } catch (e) { setStatus(`request failed: ${e}`, true); }
}

function choose(f) {
  if (!f) return;
  file = f; look = null; results.innerHTML = "";
  const url = URL.createObjectURL(f);
  img = new Image();
  img.onload = () => {
    const scale = Math.min(1, 520 / img.naturalWidth);
    canvas.width = Math.round(img.naturalWidth * scale); canvas.height = Math.round(img.naturalHeight * scale);
    draw(); search();
  };
  img.onerror = () => { setStatus("this file cannot be shown as an image; the server will say why", true); search(); };
  img.src = url;
}

function toPhoto(e) {
  const r = canvas.getBoundingClientRect();
  return { x: (e.clientX - r.left) * (canvas.width / r.width), y: (e.clientY - r.top) * (canvas.height / r.height) };
}

canvas.addEventListener("mousedown", (e) => { const p = toPhoto(e); drag = { x0: p.x, y0: p.y }; });
canvas.addEventListener("mousemove", (e) => { if (drag) { const p = toPhoto(e); drag.x1 = p.x; drag.y1 = p.y; draw(); } });
canvas.addEventListener("mouseup", (e) => {
  const p = toPhoto(e), d = drag; drag = null;
  if (!look || !d) return;
  const sx = look.image.width / canvas.width, sy = look.image.height / canvas.height;
  if (Math.abs(p.x - d.x0) > 8 && Math.abs(p.y - d.y0) > 8) {  // a drawn region
    const box = [Math.min(d.x0, p.x) * sx, Math.min(d.y0, p.y) * sy, Math.max(d.x0, p.x) * sx, Math.max(d.y0, p.y) * sy];
    search({ box: box.map((v) => v.toFixed(1)).join(",") });
    return;
  }
  const hit = look.garments.find((g) => p.x * sx >= g.box[0] && p.x * sx <= g.box[2] && p.y * sy >= g.box[1] && p.y * sy <= g.box[3]);
  if (hit) search({ garment: hit.index, k: 10 });
  else draw();
});

document.getElementById("file").addEventListener("change", (e) => choose(e.target.files[0]));
const drop = document.getElementById("drop");
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => { e.preventDefault(); drop.classList.remove("over"); choose(e.dataTransfer.files[0]); });
