// mmadapter's web page: CLIP + Multi-Modal Adapter classification in the browser with onnxruntime-web.
// Preprocessing mirrors mmadapter.runtime.preprocess (which mirrors open_clip): shortest side resized
// with Pillow's bicubic filter (ported from Pillow's Resample.c, 8-bit fixed point, so RGB and grey
// images give Pillow's pixels), centre crop with Python's rounding, float32 normalisation. New label
// sets run CLIP's BPE tokenizer (tokenizer.json), text_encoder, class_bank and adapter_head here.
// Every problem is a message on the page; nothing is written to the console.

const $ = (id) => document.getElementById(id);
const state = {
  config: null, ort: null, ep: null, sessions: {}, tokenizer: null,
  labels: null, bank: null, // null: the exported (folded) label set
  items: [], // {name, url, clipEmb, logits (folded), ms}
  results: [], messages: [],
};
const api = { state, results: state.results, messages: state.messages };
window.mmadapter = api;

function message(text) {
  state.messages.push(text);
  const p = document.createElement('p');
  p.textContent = text;
  $('messages').append(p);
}

function setStatus(text, kind = 'ok') {
  $('status').textContent = text;
  $('status').dataset.state = kind;
}

window.addEventListener('error', (e) => { message(`unexpected error: ${e.message}`); e.preventDefault(); });
window.addEventListener('unhandledrejection', (e) => {
  message(`unexpected error: ${e.reason && e.reason.message ? e.reason.message : e.reason}`);
  e.preventDefault();
});

// --- files and hashes -----------------------------------------------------------------------------------

async function fetchBytes(path, sha256) {
  const response = await fetch(path);
  if (!response.ok) throw new Error(`cannot load ${path}: HTTP ${response.status}`);
  const bytes = await response.arrayBuffer();
  // crypto.subtle exists in secure contexts only (https, localhost, 127.0.0.1); elsewhere unchecked.
  if (sha256 && window.crypto && crypto.subtle) {
    const digest = new Uint8Array(await crypto.subtle.digest('SHA-256', bytes));
    const hex = Array.from(digest, (b) => b.toString(16).padStart(2, '0')).join('');
    if (hex !== sha256) throw new Error(`${path} does not match its sha256 in model.json (a damaged or swapped file)`);
  }
  return bytes;
}

// --- onnxruntime-web ------------------------------------------------------------------------------------

function wantedBackend() {
  const asked = new URLSearchParams(location.search).get('backend');
  return asked === 'wasm' || asked === 'webgpu' ? asked : 'auto';
}

async function hasWebGPU() {
  if (!navigator.gpu) return false;
  try { return (await navigator.gpu.requestAdapter()) !== null; } catch { return false; }
}

async function createSession(graph) {
  const entry = state.config.graphs[graph];
  const bytes = await fetchBytes(`models/${entry.file}`, entry.sha256);
  const options = { executionProviders: [state.ep], graphOptimizationLevel: 'all' };
  return state.ort.InferenceSession.create(bytes, options);
}

async function session(graph) {
  if (!state.sessions[graph]) state.sessions[graph] = createSession(graph);
  return state.sessions[graph];
}

async function startRuntime() {
  const ort = await import('./ort/ort.webgpu.min.mjs');
  state.ort = ort;
  ort.env.logLevel = 'error';
  ort.env.wasm.wasmPaths = new URL('./ort/', location.href).href;
  // Threads need SharedArrayBuffer, which browsers give cross-origin isolated pages only (COOP/COEP headers).
  const threads = self.crossOriginIsolated ? Math.max(1, Math.min(4, navigator.hardwareConcurrency || 1)) : 1;
  ort.env.wasm.numThreads = threads;
  const wanted = wantedBackend();
  let backend = null;
  if (wanted !== 'wasm' && await hasWebGPU()) {
    state.ep = 'webgpu';
    try { await session('image_classifier'); backend = 'WebGPU'; } catch { state.sessions = {}; }
  }
  if (backend === null) {
    state.ep = 'wasm';
    await session('image_classifier');
    backend = `WebAssembly (SIMD, ${threads} thread${threads > 1 ? 's' : ''}` +
      (self.crossOriginIsolated ? ')' : '; more threads need a cross-origin isolated page)');
  }
  api.backend = backend;
  api.ep = state.ep;
  const g = state.config.graphs.image_classifier;
  $('backend').textContent = `backend: ${backend} · onnxruntime-web ${state.config.onnxruntime_web.version} · ` +
    `${g.file} (${g.precision}, ${(g.bytes / 1e6).toFixed(2)} MB)`;
}

// --- preprocessing (mmadapter.runtime.preprocess, Pillow's resampling) --------------------------------------

const PRECISION_BITS = 32 - 8 - 2;

function bicubic(x) {
  const a = -0.5;
  if (x < 0) x = -x;
  if (x < 1) return ((a + 2) * x - (a + 3)) * x * x + 1;
  if (x < 2) return (((x - 5) * x + 8) * x - 4) * a;
  return 0;
}

// Pillow's precompute_coeffs + normalize_coeffs_8bpc.
function coefficients(inSize, outSize) {
  const scale = inSize / outSize;
  const filterscale = Math.max(scale, 1);
  const support = 2 * filterscale;
  const ksize = Math.ceil(support) * 2 + 1;
  const kk = new Float64Array(outSize * ksize);
  const bounds = new Int32Array(outSize * 2);
  for (let xx = 0; xx < outSize; xx++) {
    const center = (xx + 0.5) * scale;
    const ss = 1 / filterscale;
    let xmin = Math.trunc(center - support + 0.5);
    if (xmin < 0) xmin = 0;
    let xmax = Math.trunc(center + support + 0.5);
    if (xmax > inSize) xmax = inSize;
    xmax -= xmin;
    let ww = 0;
    for (let x = 0; x < xmax; x++) {
      const w = bicubic((x + xmin - center + 0.5) * ss);
      kk[xx * ksize + x] = w;
      ww += w;
    }
    for (let x = 0; x < xmax; x++) if (ww !== 0) kk[xx * ksize + x] /= ww;
    bounds[xx * 2] = xmin;
    bounds[xx * 2 + 1] = xmax;
  }
  const fixed = new Float64Array(kk.length);
  for (let i = 0; i < kk.length; i++) {
    fixed[i] = kk[i] < 0 ? Math.trunc(-0.5 + kk[i] * (1 << PRECISION_BITS)) : Math.trunc(0.5 + kk[i] * (1 << PRECISION_BITS));
  }
  return { ksize, bounds, kk: fixed };
}

function clip8(v) {
  if (v >= (1 << PRECISION_BITS) * 256) return 255;
  if (v <= 0) return 0;
  return Math.floor(v / (1 << PRECISION_BITS));
}

// Separable bicubic resize of interleaved 8-bit pixels (c channels), horizontal pass first (Pillow's order).
function resizeBicubic(src, w, h, c, outW, outH) {
  const hz = coefficients(w, outW);
  const vt = coefficients(h, outH);
  const first = vt.bounds[0];
  const last = vt.bounds[outH * 2 - 2] + vt.bounds[outH * 2 - 1];
  let tmp = src, tmpH = h, rowOffset = 0;
  if (outW !== w) {
    tmpH = last - first;
    tmp = new Uint8ClampedArray(outW * tmpH * c);
    for (let y = 0; y < tmpH; y++) {
      const row = (y + first) * w * c;
      for (let xx = 0; xx < outW; xx++) {
        const xmin = hz.bounds[xx * 2], n = hz.bounds[xx * 2 + 1], k = xx * hz.ksize;
        for (let ch = 0; ch < c; ch++) {
          let ss = 1 << (PRECISION_BITS - 1);
          for (let x = 0; x < n; x++) ss += src[row + (x + xmin) * c + ch] * hz.kk[k + x];
          tmp[(y * outW + xx) * c + ch] = clip8(ss);
        }
      }
    }
    rowOffset = first;
  }
  if (outH === h) return tmp;
  const out = new Uint8ClampedArray(outW * outH * c);
  for (let yy = 0; yy < outH; yy++) {
    const ymin = vt.bounds[yy * 2] - rowOffset, n = vt.bounds[yy * 2 + 1], k = yy * vt.ksize;
    for (let xx = 0; xx < outW; xx++) {
      for (let ch = 0; ch < c; ch++) {
        let ss = 1 << (PRECISION_BITS - 1);
        for (let y = 0; y < n; y++) ss += tmp[((y + ymin) * outW + xx) * c + ch] * vt.kk[k + y];
        out[(yy * outW + xx) * c + ch] = clip8(ss);
      }
    }
  }
  return out;
}

// Pillow resizes palette images with nearest neighbour (ImagingScaleAffine's accumulated coordinates).
function resizeNearest(src, w, h, c, outW, outH) {
  const out = new Uint8ClampedArray(outW * outH * c);
  const sx = w / outW, sy = h / outH;
  const xin = new Int32Array(outW);
  let xo = sx * 0.5;
  for (let x = 0; x < outW; x++) { xin[x] = Math.min(w - 1, Math.trunc(xo)); xo += sx; }
  let yo = sy * 0.5;
  for (let y = 0; y < outH; y++) {
    const yi = Math.min(h - 1, Math.trunc(yo));
    yo += sy;
    for (let x = 0; x < outW; x++) {
      for (let ch = 0; ch < c; ch++) out[(y * outW + x) * c + ch] = src[(yi * w + xin[x]) * c + ch];
    }
  }
  return out;
}

// torchvision's Resize(int): short side to size, long side scaled and truncated.
function resizedSize(w, h, short) {
  return w <= h ? [short, Math.trunc(short * h / w)] : [Math.trunc(short * w / h), short];
}

function pyRound(x) { // Python's round(): halves to even
  const f = Math.floor(x), d = x - f;
  if (d > 0.5) return f + 1;
  if (d < 0.5) return f;
  return f % 2 === 0 ? f : f + 1;
}

function sizeProblem(w, h, short) {
  const lim = state.config.limits;
  if (w < 1 || h < 1) return `it has no pixels (${w}x${h})`;
  if (w * h > lim.max_pixels) {
    return `${w}x${h} is ${Math.round(w * h / 1e6)} megapixels, over the ${lim.max_pixels / 1e6}-megapixel limit`;
  }
  const long = Math.max(w, h), s = Math.min(w, h);
  if (long > lim.max_aspect_ratio * s) {
    return `${w}x${h} has an aspect ratio of ${Math.round(long / s)}:1, over the ${lim.max_aspect_ratio}:1 limit`;
  }
  const [nw, nh] = resizedSize(w, h, short);
  if (nw * nh > lim.max_resized_pixels) return `${w}x${h} resized to ${nw}x${nh} is over the pixel limit`;
  return null;
}

function loadImageElement(url) {
  return new Promise((resolve, reject) => {
    const img = new Image();
    img.onload = () => resolve(img);
    img.onerror = () => reject(new Error('not an image this browser can read'));
    img.src = url;
  });
}

async function isPalette(file) {
  // Pillow keeps palette images (PNG colour type 3, GIF) in mode P and resizes them with nearest neighbour.
  const head = new Uint8Array(await file.slice(0, 26).arrayBuffer());
  const png = head.length >= 26 && head[0] === 0x89 && head[1] === 0x50 && head[2] === 0x4e && head[3] === 0x47;
  const gif = head.length >= 3 && head[0] === 0x47 && head[1] === 0x49 && head[2] === 0x46;
  return gif || (png && head[25] === 3);
}

async function preprocess(file, url) {
  const pre = state.config.preprocessing;
  const [cropH, cropW] = pre.image_size;
  const short = Math.max(cropH, cropW);
  const img = await loadImageElement(url);
  const w = img.naturalWidth, h = img.naturalHeight;
  const problem = sizeProblem(w, h, short);
  if (problem) throw new Error(problem);
  const bitmap = await createImageBitmap(file, { colorSpaceConversion: 'none', premultiplyAlpha: 'none' });
  const canvas = new OffscreenCanvas(w, h);
  const ctx = canvas.getContext('2d', { willReadFrequently: true });
  ctx.drawImage(bitmap, 0, 0);
  bitmap.close();
  let px = ctx.getImageData(0, 0, w, h).data; // RGBA
  let hasAlpha = false;
  for (let i = 3; i < px.length; i += 4) if (px[i] !== 255) { hasAlpha = true; break; }
  const [nw, nh] = resizedSize(w, h, short);
  if (nw !== w || nh !== h) {
    if (await isPalette(file)) {
      px = resizeNearest(px, w, h, 4, nw, nh);
    } else if (hasAlpha) {
      // Pillow resizes RGBA premultiplied (RGBa) and converts back after.
      const pm = new Uint8ClampedArray(px.length);
      for (let i = 0; i < px.length; i += 4) {
        const a = px[i + 3];
        for (let ch = 0; ch < 3; ch++) { const t = px[i + ch] * a + 128; pm[i + ch] = ((t >> 8) + t) >> 8; }
        pm[i + 3] = a;
      }
      px = resizeBicubic(pm, w, h, 4, nw, nh);
      for (let i = 0; i < px.length; i += 4) {
        const a = px[i + 3];
        if (a !== 0 && a !== 255) for (let ch = 0; ch < 3; ch++) px[i + ch] = Math.min(255, Math.trunc(255 * px[i + ch] / a));
      }
    } else {
      px = resizeBicubic(px, w, h, 4, nw, nh);
    }
  }
  const left = pyRound((nw - cropW) / 2), top = pyRound((nh - cropH) / 2);
  const out = new Float32Array(3 * cropH * cropW);
  const mean = pre.mean.map(Math.fround), std = pre.std.map(Math.fround);
  const plane = cropH * cropW;
  for (let y = 0; y < cropH; y++) {
    for (let x = 0; x < cropW; x++) {
      const sy = y + top, sx = x + left;
      const inside = sy >= 0 && sy < nh && sx >= 0 && sx < nw; // Pillow's crop pads with black
      for (let ch = 0; ch < 3; ch++) {
        const v = inside ? px[(sy * nw + sx) * 4 + ch] : 0;
        out[ch * plane + y * cropW + x] = Math.fround(Math.fround(Math.fround(v / 255) - mean[ch]) / std[ch]);
      }
    }
  }
  return out;
}

// --- the tokenizer (mmadapter.runtime.tokenizer: CLIP's byte-level BPE) -----------------------------------

function bytesToUnicode() {
  const bs = [];
  for (let i = 33; i <= 126; i++) bs.push(i);
  for (let i = 161; i <= 172; i++) bs.push(i);
  for (let i = 174; i <= 255; i++) bs.push(i);
  const cs = bs.slice();
  let n = 0;
  for (let b = 0; b < 256; b++) if (!bs.includes(b)) { bs.push(b); cs.push(256 + n); n++; }
  const map = new Array(256);
  bs.forEach((b, i) => { map[b] = String.fromCodePoint(cs[i]); });
  return map;
}

const WORDS = /<start_of_text>|<end_of_text>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+/giu;

function htmlUnescape(text) {
  const t = document.createElement('textarea'); // RCDATA: entities decoded, no markup parsed
  t.innerHTML = text;
  return t.value;
}

// open_clip's _clean_lower. ftfy.fix_text is approximated by what it does to ordinary text: NFC,
// curly quotes straightened; mojibake repair is not reproduced.
function cleanText(text) {
  let t = text.normalize('NFC').replace(/[\u2018\u2019\u201a\u201b]/g, "'").replace(/[\u201c\u201d\u201e\u201f]/g, '"');
  t = htmlUnescape(htmlUnescape(t)).trim();
  return t.split(/\s+/).filter(Boolean).join(' ').trim().toLowerCase();
}

class ClipTokenizer {
  constructor(json, fields) {
    this.vocab = new Map(Object.entries(json.model.vocab));
    this.ranks = new Map();
    json.model.merges.forEach((m, i) => this.ranks.set(Array.isArray(m) ? `${m[0]} ${m[1]}` : m, i));
    this.byteMap = bytesToUnicode();
    this.encoder = new TextEncoder();
    this.contextLength = fields.context_length;
    this.sot = fields.sot_token_id;
    this.eot = fields.eot_token_id;
    this.special = new Map(Object.entries(fields.special_tokens || {}));
    this.cache = new Map();
  }

  bpe(token) {
    if (this.cache.has(token)) return this.cache.get(token);
    let word = Array.from(token);
    word[word.length - 1] += '</w>';
    while (word.length > 1) {
      let best = -1, bestRank = Infinity;
      for (let i = 0; i < word.length - 1; i++) {
        const r = this.ranks.get(`${word[i]} ${word[i + 1]}`);
        if (r !== undefined && r < bestRank) { bestRank = r; best = i; }
      }
      if (best < 0) break;
      const a = word[best], b = word[best + 1], merged = [];
      for (let i = 0; i < word.length;) {
        if (i < word.length - 1 && word[i] === a && word[i + 1] === b) { merged.push(a + b); i += 2; } else { merged.push(word[i]); i += 1; }
      }
      word = merged;
    }
    const ids = word.map((w) => {
      const id = this.vocab.get(w);
      if (id === undefined) throw new Error(`the tokenizer has no entry for ${JSON.stringify(w)}`);
      return id;
    });
    this.cache.set(token, ids);
    return ids;
  }

  encode(text) {
    const ids = [];
    for (const match of cleanText(text).matchAll(WORDS)) {
      const word = match[0];
      if (this.special.has(word)) { ids.push(this.special.get(word)); continue; }
      const mapped = Array.from(this.encoder.encode(word), (b) => this.byteMap[b]).join('');
      ids.push(...this.bpe(mapped));
    }
    return ids;
  }

  // [n, context_length] ids as in ClipTokenizer.__call__: start, ids, end, zero padding, end kept last.
  call(texts) {
    const L = this.contextLength;
    const out = new Array(texts.length);
    texts.forEach((text, row) => {
      let tokens = [this.sot, ...this.encode(text), this.eot];
      if (tokens.length > L) { tokens = tokens.slice(0, L); tokens[L - 1] = this.eot; }
      const padded = new Array(L).fill(0);
      tokens.forEach((t, i) => { padded[i] = t; });
      out[row] = padded;
    });
    return out;
  }
}

async function tokenizer() {
  if (!state.tokenizer) {
    const fields = state.config.tokenizer;
    const bytes = await fetchBytes(`models/${fields.file}`, fields.sha256);
    state.tokenizer = new ClipTokenizer(JSON.parse(new TextDecoder().decode(bytes)), fields);
  }
  return state.tokenizer;
}
api.tokenize = async (texts) => (await tokenizer()).call(texts);

// --- label sets (mmadapter.runtime.labels, mmadapter.runtime.open_vocab) -----------------------------------------

function promptName(name) { return name.replaceAll('_', ' '); }

function checkLabels(text) {
  const names = text.split(',').map((s) => s.trim()).filter((s) => s.length > 0);
  if (names.length === 0) throw new Error('the label list is empty: give class names separated by commas');
  const seen = new Map();
  for (const name of names) {
    const key = promptName(name).toLowerCase().split(/\s+/).filter(Boolean).join(' ');
    if (seen.has(key)) {
      const other = seen.get(key);
      throw new Error(other === name ? `the label list names ${JSON.stringify(name)} twice`
        : `the labels ${JSON.stringify(other)} and ${JSON.stringify(name)} give the same prompt (${JSON.stringify(key)})`);
    }
    seen.set(key, name);
  }
  return names;
}

function inputType(graph, name) {
  const io = state.config.graphs[graph].io.inputs.find((t) => t.name === name);
  return io ? io.dtype : 'float32';
}

async function buildBank(names) {
  const templates = state.config.label_set.templates;
  const prompts = templates.flatMap((t) => names.map((c) => t.replace('{}', promptName(c)).replaceAll('{{', '{').replaceAll('}}', '}')));
  const ids = await api.tokenize(prompts);
  const L = ids[0].length;
  const flat = ids.flat();
  const dtype = inputType('text_encoder', 'input_ids');
  const data = dtype === 'int32' ? Int32Array.from(flat) : BigInt64Array.from(flat, (v) => BigInt(v));
  const text = await session('text_encoder');
  const emb = (await text.run({ input_ids: new state.ort.Tensor(dtype, data, [prompts.length, L]) })).text_embedding;
  const C = emb.dims[1], N = names.length, T = templates.length;
  const mean = new Float32Array(N * C);
  for (let n = 0; n < N; n++) {
    let norm = 0;
    for (let c = 0; c < C; c++) {
      let s = 0;
      for (let t = 0; t < T; t++) s += emb.data[(t * N + n) * C + c];
      mean[n * C + c] = s / T;
      norm += (s / T) ** 2;
    }
    norm = Math.max(Math.sqrt(norm), 1e-12);
    for (let c = 0; c < C; c++) mean[n * C + c] /= norm;
  }
  const bank = await session('class_bank');
  const out = await bank.run({ class_embedding: new state.ort.Tensor('float32', mean, [N, C]) });
  return { text_emb: out.text_emb, keys: out.keys, values: out.values };
}

async function applyLabels(text) {
  if (!state.config.tokenizer || !state.config.graphs.text_encoder) {
    throw new Error('this export has no tokenizer and text graphs, so it classifies only its own label set');
  }
  const names = checkLabels(text);
  setStatus(`Preparing ${names.length} labels…`, 'busy');
  const bank = await buildBank(names);
  state.labels = names;
  state.bank = bank;
  await rescoreAll();
  $('label-info').textContent = `labels: ${names.join(', ')} (new label set, through the text encoder)`;
}

async function resetLabels() {
  state.labels = null;
  state.bank = null;
  $('labels').value = state.config.label_set.class_names.join(', ');
  await rescoreAll();
  $('label-info').textContent = `labels: the exported label set (${state.config.label_set.class_names.length} classes)`;
}

// --- classification ---------------------------------------------------------------------------------------

function softmax(logits) {
  const m = Math.max(...logits);
  const e = logits.map((v) => Math.exp(v - m));
  const s = e.reduce((a, b) => a + b, 0);
  return e.map((v) => v / s);
}

async function logitsFor(item) {
  if (!state.bank) return { names: state.config.label_set.class_names, logits: item.logits };
  const head = await session('adapter_head');
  const C = item.clipEmb.length;
  const out = await head.run({ image_emb: new state.ort.Tensor('float32', item.clipEmb, [1, C]), ...state.bank });
  return { names: state.labels, logits: Array.from(out.logits.data) };
}

async function score(item) {
  const { names, logits } = await logitsFor(item);
  const probs = softmax(logits);
  const order = probs.map((p, i) => [p, i]).sort((a, b) => b[0] - a[0] || a[1] - b[1]).slice(0, 5);
  return { name: item.name, ms: item.ms, preprocess_ms: item.preMs, class_names: names, logits, probabilities: probs,
    top: order.map(([p, i]) => [names[i], p]) };
}

function render() {
  const root = $('results');
  root.replaceChildren();
  state.results.forEach((r, k) => {
    const card = document.createElement('article');
    card.className = 'card';
    card.dataset.name = r.name;
    const head = document.createElement('header');
    const img = document.createElement('img');
    img.src = state.items[k].url;
    img.alt = r.name;
    const meta = document.createElement('div');
    meta.innerHTML = '<div class="name"></div><div class="time"></div>';
    meta.querySelector('.name').textContent = r.name;
    meta.querySelector('.time').textContent = `${r.ms.toFixed(1)} ms model + ${r.preprocess_ms.toFixed(1)} ms preprocessing`;
    head.append(img, meta);
    card.append(head);
    r.top.forEach(([label, p], i) => {
      const row = document.createElement('div');
      row.className = i === 0 ? 'row top' : 'row';
      row.innerHTML = '<span class="label"></span><span class="bar"><span></span></span><span class="p"></span>';
      row.querySelector('.label').textContent = label;
      row.querySelector('.label').title = label;
      row.querySelector('.bar span').style.width = `${(100 * p).toFixed(1)}%`;
      row.querySelector('.p').textContent = p.toFixed(3);
      card.append(row);
    });
    root.append(card);
  });
}

async function rescoreAll() {
  const scored = [];
  for (const item of state.items) scored.push(await score(item));
  state.results.splice(0, state.results.length, ...scored);
  render();
  setStatus(`Ready: ${state.items.length} image${state.items.length === 1 ? '' : 's'} classified.`);
}

async function classifyFile(file) {
  const url = URL.createObjectURL(file);
  try {
    const t0 = performance.now();
    const pixels = await preprocess(file, url);
    const t1 = performance.now();
    const [h, w] = state.config.preprocessing.image_size;
    const sess = await session('image_classifier');
    const out = await sess.run({ pixels: new state.ort.Tensor('float32', pixels, [1, 3, h, w]) });
    const t2 = performance.now();
    const logits = Array.from(out.logits.data);
    if (!logits.every(Number.isFinite)) throw new Error('the model gave non-finite logits');
    const clipEmb = out.clip_image_embedding ? Float32Array.from(out.clip_image_embedding.data) : null;
    if (state.bank && !clipEmb) throw new Error('this image classifier has no clip_image_embedding output');
    const item = { name: file.name, url, logits, clipEmb, ms: t2 - t1, preMs: t1 - t0 };
    state.items.push(item);
    state.results.push(await score(item));
  } catch (e) {
    URL.revokeObjectURL(url);
    message(`${file.name}: skipped (${e.message})`);
  }
}

async function classifyFiles(files) {
  const list = Array.from(files);
  if (list.length === 0) return;
  setStatus(`Classifying ${list.length} image${list.length === 1 ? '' : 's'}…`, 'busy');
  for (const file of list) await classifyFile(file);
  render();
  api.done = (api.done || 0) + list.length;
  setStatus(`Ready: ${state.items.length} image${state.items.length === 1 ? '' : 's'} classified.`);
}
api.classifyFiles = classifyFiles;

// Timing for the benchmark: the image classifier alone on preprocessed pixels, batch 1.
api.timeModel = async (repeats, warmup) => {
  const [h, w] = state.config.preprocessing.image_size;
  const sess = await session('image_classifier');
  const pixels = new Float32Array(3 * h * w).map((_, i) => Math.sin(i) * 1.5);
  const feed = { pixels: new state.ort.Tensor('float32', pixels, [1, 3, h, w]) };
  for (let i = 0; i < warmup; i++) await sess.run(feed);
  const times = [];
  for (let i = 0; i < repeats; i++) { const t = performance.now(); await sess.run(feed); times.push(performance.now() - t); }
  return times;
};

// --- wiring -----------------------------------------------------------------------------------------------

function guarded(fn) {
  return async (...args) => {
    try { await fn(...args); } catch (e) {
      message(e.message || String(e));
      setStatus(`Ready: ${state.items.length} image${state.items.length === 1 ? '' : 's'} classified.`);
    }
  };
}

async function main() {
  const response = await fetch('model.json');
  if (!response.ok) throw new Error(`cannot load model.json: HTTP ${response.status}`);
  state.config = await response.json();
  const labels = state.config.label_set.class_names;
  $('labels').value = labels.join(', ');
  const open = state.config.tokenizer && state.config.graphs.text_encoder;
  $('label-info').textContent = `labels: the exported label set (${labels.length} classes)` +
    (open ? '' : '; this export serves only its own label set');
  if (!open) { $('labels').disabled = true; $('apply-labels').disabled = true; }
  await startRuntime();
  $('files').addEventListener('change', guarded(async (e) => { await classifyFiles(e.target.files); e.target.value = ''; }));
  const drop = $('drop');
  drop.addEventListener('dragover', (e) => { e.preventDefault(); drop.classList.add('over'); });
  drop.addEventListener('dragleave', () => drop.classList.remove('over'));
  drop.addEventListener('drop', guarded(async (e) => {
    e.preventDefault();
    drop.classList.remove('over');
    await classifyFiles(e.dataTransfer.files);
  }));
  $('label-form').addEventListener('submit', guarded(async (e) => { e.preventDefault(); await applyLabels($('labels').value); }));
  $('reset-labels').addEventListener('click', guarded(resetLabels));
  api.applyLabels = applyLabels;
  setStatus('Ready: pick or drop images.');
}

api.ready = main().then(() => true, (e) => {
  setStatus(`The model could not be loaded: ${e.message || e}`, 'error');
  message(`The model could not be loaded: ${e.message || e}`);
  return false;
});
