// zimage web UI: plain JavaScript against the server's A1111 API.
"use strict";

const $ = (id) => document.getElementById(id);

// Strings only the script shows; the page's own English is in the HTML.
const EN = {
  "st.queued": "In queue: position {0}", "st.text": "Text encoder", "st.denoise": "Denoise", "st.decode": "VAE decode",
  "st.done": "Done", "st.starting": "Starting…", "st.step": "step {0}/{1}", "st.image": "image {0}/{1}", "st.eta": "ETA {0}",
  "st.interrupted": "Interrupted", "err.network": "Network error: {0}", "copied": "Copied", "gallery.empty": "No images yet",
  "k.name": "Name", "k.arch": "Architecture", "k.params": "Parameters", "k.dtype": "Weights", "k.file": "Path", "k.hash": "Hash",
  "k.base": "Base size", "k.device": "Device", "k.type": "Type", "k.memory": "Memory", "k.budget": "Budget (--vram)",
  "k.offload": "Offload", "k.binding": "Binding limit", "k.driver": "Driver", "k.total": "Total", "k.peakdev": "Peak device memory",
  "k.peakrss": "Peak host memory", "k.size": "Settings", "k.outputs": "Outputs folder", "k.queue": "Queue", "k.version": "Version",
  "k.loading": "Loading", "k.error": "Error", "none": "none", "unlimited": "no limit", "no.run": "Nothing generated since the server started",
  "steps.short": "steps", "st.lora": "LoRA", "k.loras": "LoRAs", "st.encode": "VAE encode",
  "err.picture": "Not a picture this browser can read: {0}",
};

const I18N = {
  "zh-CN": {
    "tab.generate": "生成", "tab.system": "系统", "tab.about": "关于", "model": "模型",
    "prompt": "提示词", "prompt.ph": "例如：黄昏时的灯塔，油画", "negative": "反向提示词", "negative.ph": "模糊，低质量",
    "generate": "生成", "interrupt": "中断", "size": "尺寸", "width": "宽度", "height": "高度",
    "steps": "采样步数", "steps.short": "步数", "cfg": "提示词引导系数 (CFG)",
    "guide.title": "步数和 CFG 有什么作用？", "guide.model": "模型", "guide.effect": "效果",
    "guide.turbo": "Turbo（SD-Turbo、SDXL-Turbo）", "guide.turbo.e": "一步即可出图；关闭引导（≤ 1）是训练时的设置，速度快一倍。",
    "guide.classic": "经典模型（SD 1.5、2.1、SDXL）", "guide.classic.e": "常用默认值：较好地遵循提示词。",
    "guide.low.e": "更宽松、柔和、多样。", "guide.high.e": "严格遵循提示词；颜色可能过饱和。",
    "seed": "随机种子", "seed.random": "随机 (-1)", "seed.reuse": "使用上次的种子", "batch": "单批数量", "iter": "生成批次",
    "sampler": "采样方法", "sampler.default": "模型默认", "scheduler": "调度类型",
    "pnginfo": "PNG 图片信息", "pnginfo.hint": "拖入 PNG（或点击选择），将其参数读入表单",
    "results.empty": "生成的图片会显示在这里", "download": "下载 PNG", "use": "使用这些设置", "copy": "复制参数",
    "history": "历史记录", "more": "更多", "gallery.empty": "还没有图片",
    "sys.model": "模型", "sys.device": "设备", "sys.last": "上次运行", "sys.server": "服务器", "sys.switch": "加载",
    "about.settings": "各项设置的作用", "about.keys": "快捷键", "about.api": "API",
    "about.api.text": "兼容 AUTOMATIC1111：现有客户端可直接连接此地址。",
    "help.prompt": "要画的内容。SD 模型对英文效果最好，也可以输入中文。",
    "help.negative": "要避免的内容。仅在 CFG 大于 1 时使用。",
    "help.size": "预设保持模型基础像素数（SD-Turbo 与 SD 1.5 为 512²，SDXL 为 1024²）。尺寸须为 8 的倍数：模型在图像 1/8 大小的潜空间中工作。",
    "help.steps": "步数越多越精细，也越慢。Turbo 模型：1–4；经典模型：20–30。",
    "help.cfg": "遵循提示词的强度。1 或更低会关闭引导，计算量减半。",
    "help.seed": "图片起始的噪声：相同的种子和设置得到相同的图片。-1 表示随机。同一批中的图片依次使用 种子、种子+1……",
    "help.sampler": "逐步去噪的方法。“模型默认”使用模型自带的调度器。",
    "keys.generate": "生成", "keys.interrupt": "中断",
    "lora.add": "在提示词中添加 LoRA…", "lora.weight": "权重", "st.lora": "应用 LoRA", "k.loras": "LoRA",
    "help.lora": "风格、角色或概念的附加模型，来自服务器的 LoRA 文件夹（--lora-dir）。选择后会在提示词中加入 <lora:名称:权重>（与 AUTOMATIC1111 相同，再次选择则移除）；权重 1 按训练效果应用，0.5 为一半强度。",
    "i2i": "从图片开始（图生图、局部重绘）", "i2i.pick": "添加图片", "i2i.hint": "把图片拖到这里或点击选择。在图上涂抹，只重绘涂过的地方。",
    "i2i.remove": "移除图片", "i2i.short": "图片", "mask.brush": "笔刷", "mask.erase": "橡皮擦", "mask.clear": "清除蒙版",
    "strength": "重绘幅度", "mask.blur": "蒙版模糊", "mask.fill": "蒙版区域内容",
    "fill.original": "原图", "fill.fill": "填充", "fill.noise": "潜空间噪声", "fill.nothing": "潜空间数值零",
    "mask.help": "涂抹需要改变的地方；不涂抹则按重绘幅度改变整张图。", "to.init": "用作起始图片",
    "help.i2i": "从一张图片而不是噪声开始（图生图）。重绘幅度决定能改变多少：0.3 接近原图，1 只保留构图；Turbo 模型需要 步数 × 幅度 ≥ 1（例如 2 步、0.5）。在图上涂抹则只改变涂抹部分（局部重绘）；蒙版模糊让边缘更柔和。",
    "st.encode": "VAE 编码", "err.picture": "浏览器无法读取此图片：{0}",
    "st.queued": "排队中：第 {0} 位", "st.text": "文本编码", "st.denoise": "去噪", "st.decode": "VAE 解码", "st.done": "完成",
    "st.starting": "开始…", "st.step": "步 {0}/{1}", "st.image": "图 {0}/{1}", "st.eta": "剩余 {0}",
    "st.interrupted": "已中断", "err.network": "网络错误：{0}", "copied": "已复制",
    "k.name": "名称", "k.arch": "架构", "k.params": "参数量", "k.dtype": "数据类型", "k.file": "文件", "k.hash": "哈希",
    "k.base": "基础尺寸", "k.device": "设备", "k.type": "类型", "k.memory": "显存", "k.budget": "显存预算",
    "k.offload": "卸载模式", "k.binding": "单次绑定上限", "k.driver": "驱动", "k.total": "总计", "k.peakdev": "设备峰值内存",
    "k.peakrss": "主机峰值内存", "k.size": "尺寸", "k.outputs": "输出文件夹", "k.queue": "队列", "k.version": "版本",
    "k.loading": "正在加载", "k.error": "错误", "none": "无", "unlimited": "不限", "no.run": "本次启动后还没有运行",
  },
};

const state = {
  lang: "en", info: null, task: null, polling: null, results: [], current: 0, lastSeed: null,
  galleryOffset: 0, base: 512, mult: 8, touched: false, busy: false, previewId: -1,
};

// The img2img picture and the painted mask: the visible canvas shows the
// strokes over the picture; an offscreen canvas of the picture's size holds
// the mask itself (white repaints, black keeps), as A1111 expects it.
const i2i = { src: null, w: 0, h: 0, mask: null, painted: false, drawing: false, last: null };

function t(key, ...args) {
  const dict = I18N[state.lang] || {};
  let s = dict[key];
  if (s === undefined) s = EN[key];
  if (s === undefined) {
    const el = document.querySelector(`[data-i18n="${key}"]`);
    s = (el && (el.dataset.en || el.textContent)) || key;
  }
  return s.replace(/\{(\d)\}/g, (_, i) => args[+i]);
}

// English strings live in the HTML; remember them before translating.
function applyLanguage(lang) {
  state.lang = lang;
  document.documentElement.lang = lang;
  const dict = I18N[lang] || {};
  for (const el of document.querySelectorAll("[data-i18n]")) {
    if (el.dataset.en === undefined) el.dataset.en = el.textContent;
    el.textContent = dict[el.dataset.i18n] || el.dataset.en;
  }
  for (const el of document.querySelectorAll("[data-i18n-ph]")) {
    if (el.dataset.enPh === undefined) el.dataset.enPh = el.placeholder;
    el.placeholder = dict[el.dataset.i18nPh] || el.dataset.enPh;
  }
  for (const el of document.querySelectorAll("[data-i18n-title]")) {
    if (el.dataset.enTitle === undefined) el.dataset.enTitle = el.title;
    el.title = dict[el.dataset.i18nTitle] || el.dataset.enTitle;
  }
  $("lang-switch").textContent = lang === "zh-CN" ? "English" : "中文";
  if (state.info) renderSystem();
}

// ---- API helpers ----
async function api(path, body, method) {
  const opts = { method: method || (body === undefined ? "GET" : "POST"), headers: {} };
  if (body !== undefined) {
    opts.headers["Content-Type"] = "application/json";
    opts.body = JSON.stringify(body);
  }
  const r = await fetch(path, opts);
  const text = await r.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch (e) { data = { detail: text }; }
  if (!r.ok) {
    let msg = data && data.detail;
    if (Array.isArray(msg)) msg = msg.map((d) => `${(d.loc || []).slice(1).join(".")}: ${d.msg}`).join("\n");
    const err = new Error(msg || `HTTP ${r.status}`);
    err.status = r.status;
    throw err;
  }
  return data;
}

function fmtBytes(n) {
  if (!n) return "0";
  const u = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
  return `${n.toFixed(n < 10 && i ? 1 : 0)} ${u[i]}`;
}
function fmtCount(n) {
  if (n >= 1e9) return (n / 1e9).toFixed(2) + " B";
  if (n >= 1e6) return (n / 1e6).toFixed(1) + " M";
  if (n >= 1e3) return (n / 1e3).toFixed(1) + " K";
  return String(n);
}
function fmtSecs(s) {
  if (s < 60) return `${s.toFixed(s < 10 ? 1 : 0)} s`;
  return `${Math.floor(s / 60)} min ${Math.round(s % 60)} s`;
}

// ---- tabs ----
function showTab(name) {
  for (const b of document.querySelectorAll(".tabs button")) b.classList.toggle("active", b.dataset.tab === name);
  for (const p of document.querySelectorAll(".tab-panel")) p.classList.toggle("active", p.id === `tab-${name}`);
  if (name === "system") loadInfo();
}

// ---- info, defaults, presets ----
const PRESETS = [["1:1", 1, 1], ["4:3", 4, 3], ["3:4", 3, 4], ["3:2", 3, 2], ["2:3", 2, 3], ["16:9", 16, 9], ["9:16", 9, 16]];

function presetSize(a, b) {
  const r = Math.sqrt(a / b);
  const round = (v) => Math.max(64, Math.round(v / state.mult) * state.mult);
  return [round(state.base * r), round(state.base / r)];
}

function renderPresets() {
  const box = $("presets");
  box.textContent = "";
  for (const [name, a, b] of PRESETS) {
    const [w, h] = presetSize(a, b);
    const btn = document.createElement("button");
    btn.type = "button";
    btn.textContent = name;
    btn.title = `${w}×${h}`;
    btn.dataset.preset = name;
    btn.addEventListener("click", () => { setSize(w, h); markPreset(); });
    box.appendChild(btn);
  }
  markPreset();
}

function markPreset() {
  const w = +$("width").value, h = +$("height").value;
  for (const btn of $("presets").children) {
    const p = PRESETS.find((x) => x[0] === btn.dataset.preset);
    const [pw, ph] = presetSize(p[1], p[2]);
    btn.classList.toggle("active", pw === w && ph === h);
  }
}

function setSize(w, h) { $("width").value = w; $("height").value = h; }
function setSteps(v) { $("steps").value = v; $("steps-range").value = v; }
function setCFG(v) { $("cfg").value = v; $("cfg-range").value = v; }

async function loadInfo() {
  let info;
  try { info = await api("/zimage/v1/info"); } catch (e) { return; }
  state.info = info;
  if (info.defaults) {
    state.base = info.defaults.base_size || state.base;
    state.mult = info.defaults.size_multiple || 8;
    if (!state.touched) {
      setSize(info.defaults.width, info.defaults.height);
      setSteps(info.defaults.steps);
      setCFG(info.defaults.cfg_scale);
    }
    for (const id of ["width", "height"]) {
      $(id).step = state.mult;
      $(id).max = info.limits.max_side;
    }
  }
  const sel = $("sampler");
  if (sel.options.length <= 1) {
    for (const s of info.samplers) {
      const o = document.createElement("option");
      o.value = o.textContent = s;
      sel.appendChild(o);
    }
  }
  for (const id of ["model-select", "sys-model-select"]) {
    const ms = $(id);
    ms.textContent = "";
    for (const m of info.models) {
      const o = document.createElement("option");
      o.value = o.textContent = m;
      ms.appendChild(o);
    }
    ms.value = info.checkpoint || info.models[0] || "";
  }
  $("switch-row").hidden = info.models.length < 2;
  renderLoRAs(info.loras || []);
  $("version").textContent = info.version;
  renderPresets();
  renderSystem();
  if (!info.model && (info.loading || !info.load_error)) setTimeout(loadInfo, 1000);
}

// ---- LoRA picker: inserts A1111's <lora:ALIAS:WEIGHT> tag ----
function renderLoRAs(loras) {
  const sel = $("lora-select");
  const keep = sel.options[0];
  sel.textContent = "";
  sel.appendChild(keep);
  for (const l of loras) {
    const o = document.createElement("option");
    o.value = l.alias || l.name;
    o.textContent = l.alias && l.alias !== l.name ? `${l.alias} (${l.name})` : l.name;
    sel.appendChild(o);
  }
  $("lora-row").hidden = loras.length === 0;
}

function escapeRe(s) { return s.replace(/[.*+?^${}()|[\]\\]/g, "\\$&"); }

// toggleLoRA adds the tag at the end of the prompt, or removes the LoRA's
// tag when the prompt has one (as A1111's extra-networks cards do).
function toggleLoRA(name, weight) {
  const p = $("prompt");
  const re = new RegExp(`\\s*<lora:${escapeRe(name)}(:[^>]*)?>`);
  if (re.test(p.value)) {
    p.value = p.value.replace(re, "");
  } else {
    const w = Number.isFinite(weight) ? weight : 1;
    const sep = p.value && !/\s$/.test(p.value) ? " " : "";
    p.value = `${p.value}${sep}<lora:${name}:${w}>`;
  }
  p.dispatchEvent(new Event("input"));
}

function dl(el, rows) {
  el.textContent = "";
  for (const [k, v] of rows) {
    const dt = document.createElement("dt"); dt.textContent = k;
    const dd = document.createElement("dd"); dd.textContent = v;
    el.append(dt, dd);
  }
}

function renderSystem() {
  const i = state.info;
  if (!i) return;
  const m = i.model;
  if (m) {
    dl($("sys-model"), [[t("k.name"), m.name], [t("k.arch"), `${m.arch}${m.turbo ? " (turbo)" : ""}`],
      [t("k.params"), fmtCount(m.params)], [t("k.dtype"), (m.dtypes || []).join(", ")], [t("k.base"), `${m.base_size}²`],
      [t("k.hash"), m.hash || "—"], [t("k.file"), m.path]]);
  } else {
    dl($("sys-model"), [[t("k.loading"), i.loading || "—"], [t("k.error"), i.load_error || "—"]]);
  }
  const d = i.device;
  if (d) {
    dl($("sys-device"), [[t("k.device"), d.name], [t("k.type"), d.type || "—"], [t("k.driver"), d.driver || "—"],
      [t("k.memory"), d.memory_bytes ? fmtBytes(d.memory_bytes) : "—"],
      [t("k.budget"), d.budget_bytes ? fmtBytes(d.budget_bytes) : t("unlimited")], [t("k.offload"), d.offload],
      [t("k.binding"), d.max_binding_bytes ? fmtBytes(d.max_binding_bytes) : "—"]]);
  } else {
    dl($("sys-device"), []);
  }
  const l = i.last_run;
  if (l) {
    const rows = [[t("k.size"), `${l.width}×${l.height}, ${l.steps} ${t("steps.short")}, ${l.sampler}`]];
    for (const s of l.stages || []) rows.push([t("st." + s.name), `${fmtSecs(s.seconds)} · ${fmtBytes(s.peak_device)}`]);
    rows.push([t("k.total"), fmtSecs(l.total_seconds)], [t("k.peakdev"), fmtBytes(l.peak_device)], [t("k.peakrss"), fmtBytes(l.peak_host_rss)]);
    dl($("sys-last"), rows);
  } else {
    dl($("sys-last"), [["", t("no.run")]]);
  }
  dl($("sys-server"), [[t("k.outputs"), i.outputs], [t("k.queue"), `${i.queue.waiting} / ${i.queue.capacity}${i.queue.running ? " (+1)" : ""}`],
    [t("k.loras"), i.lora_dir ? `${(i.loras || []).length} · ${i.lora_dir}` : t("none")], [t("k.version"), i.version]]);
}

// ---- img2img picture and mask painter ----
function setInit(src) {
  const img = new Image();
  img.onload = () => {
    i2i.src = src;
    i2i.w = img.naturalWidth;
    i2i.h = img.naturalHeight;
    $("init-image").src = src;
    const c = $("mask-canvas");
    c.width = i2i.w;
    c.height = i2i.h;
    i2i.mask = document.createElement("canvas");
    i2i.mask.width = i2i.w;
    i2i.mask.height = i2i.h;
    clearMask();
    $("init-box").hidden = false;
    $("init-drop").hidden = true;
    fitSizeToPicture();
  };
  img.onerror = () => showError(t("err.picture", ""));
  img.src = src;
}

// fitSizeToPicture sets the size to the picture's, within the server's
// limit, rounded down to the model's multiple (as the server's default).
function fitSizeToPicture() {
  const max = (state.info && state.info.limits.max_side) || 2048;
  const k = Math.min(1, max / Math.max(i2i.w, i2i.h));
  const round = (v) => Math.max(state.mult, Math.floor((v * k) / state.mult) * state.mult);
  setSize(round(i2i.w), round(i2i.h));
  state.touched = true;
  markPreset();
}

function removeInit() {
  i2i.src = null;
  i2i.mask = null;
  i2i.painted = false;
  $("init-box").hidden = true;
  $("init-drop").hidden = false;
}

function clearMask() {
  const c = $("mask-canvas");
  c.getContext("2d").clearRect(0, 0, c.width, c.height);
  const m = i2i.mask.getContext("2d");
  m.fillStyle = "#000";
  m.fillRect(0, 0, i2i.w, i2i.h);
  i2i.painted = false;
  $("mask-opts").hidden = true;
}

function canvasPoint(e) {
  const c = $("mask-canvas");
  const r = c.getBoundingClientRect();
  return { x: ((e.clientX - r.left) * c.width) / r.width, y: ((e.clientY - r.top) * c.height) / r.height, scale: c.width / r.width };
}

// stroke paints (or erases) a round line on the visible canvas and the mask.
function stroke(a, b) {
  const erase = $("mask-erase").checked;
  const width = +$("brush").value * a.scale;
  const draw = (ctx, color) => {
    ctx.lineCap = ctx.lineJoin = "round";
    ctx.lineWidth = width;
    ctx.strokeStyle = color;
    ctx.beginPath();
    ctx.moveTo(a.x, a.y);
    ctx.lineTo(b.x + 0.01, b.y);
    ctx.stroke();
  };
  const v = $("mask-canvas").getContext("2d");
  v.globalCompositeOperation = erase ? "destination-out" : "source-over";
  draw(v, "#ff7a2f");
  draw(i2i.mask.getContext("2d"), erase ? "#000" : "#fff");
  if (!erase) {
    i2i.painted = true;
    $("mask-opts").hidden = false;
  }
}

function bindPainter() {
  const c = $("mask-canvas");
  c.addEventListener("pointerdown", (e) => {
    e.preventDefault();
    c.setPointerCapture(e.pointerId);
    i2i.drawing = true;
    i2i.last = canvasPoint(e);
    stroke(i2i.last, i2i.last);
  });
  c.addEventListener("pointermove", (e) => {
    if (!i2i.drawing) return;
    e.preventDefault();
    const p = canvasPoint(e);
    stroke(i2i.last, p);
    i2i.last = p;
  });
  const end = () => { i2i.drawing = false; };
  c.addEventListener("pointerup", end);
  c.addEventListener("pointercancel", end);
  $("mask-clear").addEventListener("click", clearMask);
  $("init-remove").addEventListener("click", removeInit);
  const dz = $("init-drop");
  const pick = async (f) => {
    if (!f) return;
    showError("");
    try { setInit(await readAsBase64(f)); } catch (e) { showError(t("err.picture", e.message)); }
  };
  dz.addEventListener("click", () => $("init-file").click());
  dz.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); $("init-file").click(); } });
  $("init-file").addEventListener("change", () => { pick($("init-file").files[0]); $("init-file").value = ""; });
  dz.addEventListener("dragover", (e) => { e.preventDefault(); dz.classList.add("over"); });
  dz.addEventListener("dragleave", () => dz.classList.remove("over"));
  dz.addEventListener("drop", (e) => { e.preventDefault(); dz.classList.remove("over"); pick(e.dataTransfer.files[0]); });
  $("strength-range").addEventListener("input", () => { $("strength").value = $("strength-range").value; });
  $("strength").addEventListener("input", () => { $("strength-range").value = $("strength").value; });
  $("to-init").addEventListener("click", () => {
    const im = state.results[state.current];
    if (im) setInit(im.src);
  });
}

// ---- generation ----
function formBody() {
  const sampler = $("sampler").value;
  return {
    prompt: $("prompt").value, negative_prompt: $("negative").value,
    width: +$("width").value, height: +$("height").value, steps: +$("steps").value, cfg_scale: +$("cfg").value,
    seed: +$("seed").value, batch_size: +$("batch").value, n_iter: +$("iter").value,
    sampler_name: sampler, scheduler: $("scheduler").value, save_images: true, send_images: true,
  };
}

function showError(msg) {
  $("error").textContent = msg;
  $("error").hidden = !msg;
}

async function generate() {
  if (state.busy) return;
  state.busy = true;
  showError("");
  const task = `task(${Math.random().toString(36).slice(2)}${Date.now().toString(36)})`;
  state.task = task;
  const body = formBody();
  body.force_task_id = task;
  let route = "/sdapi/v1/txt2img";
  if (i2i.src) {
    route = "/sdapi/v1/img2img";
    const s = Math.min(Math.max(+$("strength").value || 0.75, 0.01), 1);
    body.init_images = [i2i.src];
    body.denoising_strength = s;
    // steps x strength must keep one step (turbo models default to 1).
    if (Math.floor(body.steps * s) < 1) {
      body.steps = Math.ceil(1 / s);
      if (Math.floor(body.steps * s) < 1) body.steps++;
      setSteps(body.steps);
    }
    if (i2i.painted) {
      body.mask = i2i.mask.toDataURL("image/png");
      body.mask_blur = +$("mask-blur").value;
      body.inpainting_fill = +$("inpaint-fill").value;
      body.inpaint_full_res = false;
    }
  }
  state.previewId = -1;
  $("generate").disabled = true;
  $("interrupt").hidden = false;
  $("progress").hidden = false;
  setProgress(0, t("st.starting"));
  state.polling = setInterval(poll, 500);
  try {
    const res = await api(route, body);
    const info = JSON.parse(res.info);
    state.lastSeed = info.seed;
    const imgs = res.images.map((b64, k) => ({ src: `data:image/png;base64,${b64}`, info: info.infotexts[k], seed: info.all_seeds[k] }));
    if (imgs.length) showResults(imgs);
    else if (state.interrupted) showError(t("st.interrupted"));
    loadGallery(true);
    loadInfo();
  } catch (e) {
    showError(e.status ? e.message : t("err.network", e.message));
  } finally {
    clearInterval(state.polling);
    state.busy = false;
    state.task = null;
    state.interrupted = false;
    $("generate").disabled = false;
    $("interrupt").hidden = true;
    $("progress").hidden = true;
  }
}

function setProgress(frac, text) {
  $("progress-fill").style.width = `${Math.round(frac * 100)}%`;
  $("progress-text").textContent = text;
}

async function poll() {
  if (!state.task) return;
  let p;
  try { p = await api("/internal/progress", { id_task: state.task, id_live_preview: state.previewId }); } catch (e) { return; }
  if (p.live_preview && state.busy) {
    // The server's TAESD picture of the latents (zimage serve --preview).
    state.previewId = p.id_live_preview;
    const box = $("results");
    box.classList.remove("empty");
    let el = $("live-preview");
    if (!el) {
      box.textContent = "";
      el = document.createElement("img");
      el.id = "live-preview";
      el.className = "live";
      el.alt = "preview";
      box.appendChild(el);
    }
    el.src = p.live_preview;
  }
  if (p.queued) {
    setProgress(0, t("st.queued", p.queue_position));
  } else if (p.active) {
    const parts = [t("st." + (p.stage || "text"))];
    if (p.stage === "denoise") parts.push(t("st.step", p.step, p.steps));
    if (p.images > 1) parts.push(t("st.image", Math.min(p.image + 1, p.images), p.images));
    if (p.eta !== null && p.progress > 0) parts.push(t("st.eta", fmtSecs(p.eta)));
    setProgress(p.progress || 0, parts.join(" · "));
  }
}

async function interrupt() {
  if (!state.task) return;
  state.interrupted = true;
  try { await api("/sdapi/v1/interrupt", { id_task: state.task }); } catch (e) { /* the job ends anyway */ }
}

function showResults(imgs) {
  state.results = imgs;
  const thumbs = $("thumbs");
  thumbs.textContent = "";
  if (imgs.length > 1) {
    imgs.forEach((im, k) => {
      const el = document.createElement("img");
      el.src = im.src;
      el.alt = `seed ${im.seed}`;
      el.addEventListener("click", () => selectResult(k));
      thumbs.appendChild(el);
    });
  }
  selectResult(0);
}

function selectResult(k) {
  const im = state.results[k];
  state.current = k;
  const box = $("results");
  box.classList.remove("empty");
  box.textContent = "";
  const el = document.createElement("img");
  el.id = "result-image";
  el.src = im.src;
  el.alt = im.info ? im.info.split("\n")[0] : "";
  el.addEventListener("load", () => el.classList.toggle("pixel", el.naturalWidth < 256));
  box.appendChild(el);
  [...$("thumbs").children].forEach((c, i) => c.classList.toggle("active", i === k));
  $("infotext").textContent = im.info || "";
  $("result-info").hidden = false;
  const a = $("download");
  a.href = im.src;
  a.download = im.name || `zimage-${im.seed ?? "image"}.png`;
}

// ---- infotext (A1111 "parameters") ----
function parseInfotext(text) {
  const out = {};
  const lines = (text || "").trim().split("\n");
  const last = lines[lines.length - 1] || "";
  const re = /\s*([\w][\w \-/]*):\s*("(?:\\.|[^\\"])*"|[^,]*)(?:,|$)/g;
  const pairs = [...last.matchAll(re)];
  const body = pairs.length >= 3 ? lines.slice(0, -1) : lines;
  const prompt = [], neg = [];
  let inNeg = false;
  for (let l of body) {
    if (!inNeg && l.startsWith("Negative prompt:")) { inNeg = true; l = l.slice(16).trim(); }
    (inNeg ? neg : prompt).push(l);
  }
  out.Prompt = prompt.join("\n");
  out["Negative prompt"] = neg.join("\n");
  if (pairs.length >= 3) {
    for (const m of pairs) {
      let v = m[2].trim();
      if (v.startsWith('"')) { try { v = JSON.parse(v); } catch (e) { /* keep */ } }
      out[m[1].trim()] = v;
    }
  }
  return out;
}

function applyParams(p) {
  state.touched = true;
  if (p.Prompt !== undefined) $("prompt").value = p.Prompt;
  if (p["Negative prompt"] !== undefined) $("negative").value = p["Negative prompt"];
  if (p.Steps) setSteps(+p.Steps);
  if (p["CFG scale"] !== undefined) setCFG(+p["CFG scale"]);
  if (p.Seed !== undefined) $("seed").value = p.Seed;
  if (p.Size) {
    const [w, h] = String(p.Size).split("x").map(Number);
    if (w && h) setSize(w, h);
  }
  if (p.Sampler) {
    let name = String(p.Sampler);
    let karras = false;
    if (name.endsWith(" Karras")) { name = name.slice(0, -7); karras = true; }
    if ([...$("sampler").options].some((o) => o.value === name)) $("sampler").value = name;
    $("scheduler").value = karras || p["Schedule type"] === "Karras" ? "karras" : "automatic";
  }
  markPreset();
}

// ---- PNG info ----
function readAsBase64(blob) {
  return new Promise((resolve, reject) => {
    const r = new FileReader();
    r.onload = () => resolve(String(r.result));
    r.onerror = () => reject(r.error);
    r.readAsDataURL(blob);
  });
}

async function pngInfo(blob, name) {
  showError("");
  try {
    const data = await readAsBase64(blob);
    const res = await api("/sdapi/v1/png-info", { image: data });
    state.results = [{ src: data, info: res.info, seed: res.parameters.Seed, name }];
    $("thumbs").textContent = "";
    selectResult(0);
    if (res.info) applyParams(res.parameters);
  } catch (e) {
    showError(e.message);
  }
}

// ---- gallery ----
async function loadGallery(reset) {
  if (reset) { state.galleryOffset = 0; $("gallery").textContent = ""; }
  let g;
  try { g = await api(`/zimage/v1/gallery?offset=${state.galleryOffset}&limit=48`); } catch (e) { return; }
  $("history-count").textContent = g.total ? `(${g.total})` : "";
  if (!g.total && reset) {
    const p = document.createElement("div");
    p.className = "gallery-empty";
    p.textContent = t("gallery.empty");
    $("gallery").appendChild(p);
  }
  for (const it of g.items) {
    const el = document.createElement("img");
    el.src = it.url;
    el.loading = "lazy";
    el.alt = el.title = it.name;
    el.addEventListener("click", async () => {
      const r = await fetch(it.url);
      if (r.ok) pngInfo(await r.blob(), it.name);
    });
    $("gallery").appendChild(el);
  }
  state.galleryOffset += g.items.length;
  $("gallery-more").hidden = state.galleryOffset >= g.total;
}

// ---- wiring ----
function bind() {
  bindPainter();
  for (const b of document.querySelectorAll(".tabs button")) b.addEventListener("click", () => showTab(b.dataset.tab));
  $("lang-switch").addEventListener("click", () => {
    const next = state.lang === "zh-CN" ? "en" : "zh-CN";
    localStorage.setItem("zimage-lang", next);
    applyLanguage(next);
  });
  $("gen-form").addEventListener("submit", (e) => { e.preventDefault(); generate(); });
  $("interrupt").addEventListener("click", interrupt);
  document.addEventListener("keydown", (e) => {
    if ((e.ctrlKey || e.metaKey) && e.key === "Enter") { e.preventDefault(); generate(); }
    if (e.key === "Escape" && state.busy) interrupt();
  });
  $("steps-range").addEventListener("input", () => { $("steps").value = $("steps-range").value; state.touched = true; });
  $("steps").addEventListener("input", () => { $("steps-range").value = $("steps").value; state.touched = true; });
  $("cfg-range").addEventListener("input", () => { $("cfg").value = $("cfg-range").value; state.touched = true; });
  $("cfg").addEventListener("input", () => { $("cfg-range").value = $("cfg").value; state.touched = true; });
  for (const id of ["width", "height"]) $(id).addEventListener("input", () => { state.touched = true; markPreset(); });
  $("swap").addEventListener("click", () => { setSize(+$("height").value, +$("width").value); markPreset(); });
  $("seed-random").addEventListener("click", () => { $("seed").value = -1; });
  $("seed-reuse").addEventListener("click", () => { if (state.lastSeed !== null) $("seed").value = state.lastSeed; });
  $("use-settings").addEventListener("click", () => {
    const im = state.results[state.current];
    if (im && im.info) applyParams(parseInfotext(im.info));
  });
  $("copy-info").addEventListener("click", async () => {
    const im = state.results[state.current];
    if (im && im.info && navigator.clipboard) {
      try { await navigator.clipboard.writeText(im.info); $("copy-info").textContent = t("copied"); } catch (e) { /* not allowed */ }
      setTimeout(() => { $("copy-info").textContent = t("copy"); }, 1200);
    }
  });
  const dz = $("dropzone");
  dz.addEventListener("click", () => $("pnginfo-file").click());
  dz.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); $("pnginfo-file").click(); } });
  $("pnginfo-file").addEventListener("change", () => {
    const f = $("pnginfo-file").files[0];
    if (f) pngInfo(f, f.name);
    $("pnginfo-file").value = "";
  });
  dz.addEventListener("dragover", (e) => { e.preventDefault(); dz.classList.add("over"); });
  dz.addEventListener("dragleave", () => dz.classList.remove("over"));
  dz.addEventListener("drop", (e) => {
    e.preventDefault();
    dz.classList.remove("over");
    const f = e.dataTransfer.files[0];
    if (f) pngInfo(f, f.name);
  });
  $("gallery-more").addEventListener("click", () => loadGallery(false));
  $("lora-select").addEventListener("change", () => {
    const name = $("lora-select").value;
    if (name) toggleLoRA(name, parseFloat($("lora-weight").value));
    $("lora-select").value = "";
    $("prompt").focus();
  });
  const switchModel = async (name) => {
    showError("");
    try {
      await api("/sdapi/v1/options", { sd_model_checkpoint: name });
      state.touched = false;
    } catch (e) { showError(e.message); }
    loadInfo();
  };
  $("model-select").addEventListener("change", () => switchModel($("model-select").value));
  $("sys-switch").addEventListener("click", () => switchModel($("sys-model-select").value));
}

document.addEventListener("DOMContentLoaded", () => {
  bind();
  const saved = localStorage.getItem("zimage-lang");
  applyLanguage(saved || (document.documentElement.lang === "zh-CN" ? "zh-CN" : "en"));
  loadInfo();
  loadGallery(true);
});
