/* rtdecode viewer: websocket protocol v1 client (docs/protocol.md), no dependencies.
 *
 * One binary message = 4-byte big-endian header length, UTF-8 JSON header, image bytes.
 * Text messages are JSON: hello, status, gap, rate, pong, error.
 *
 * window.rtdecodeViewer exposes counters for tests and for the curious (devtools).
 */
"use strict";

(function () {
  const PROTOCOL_VERSION = 1;
  const STAGE_ORDER = ["queue", "preprocess", "encode", "retrieve", "wait", "generate", "encode_image", "total", "image_total"];
  const PALETTE = ["#58a6ff", "#3fb950", "#d29922", "#f778ba", "#a371f7", "#39c5cf", "#f0f6fc", "#ff7b72"];
  const LATENCY_WINDOW_S = 30;
  const RANK_WINDOW_S = 60;
  const IMAGE_STALE_S = 3; // no generated image for this long: show the top-1 retrieved one
  const BACKOFF_MIN_S = 0.5;
  const BACKOFF_MAX_S = 10;
  const NO_RETRY_CODES = new Set([4401, 4403]); // unauthorized, forbidden origin

  const $ = (id) => document.getElementById(id);
  const params = new URLSearchParams(window.location.search);
  const token = params.get("token");

  const state = {
    connection: "connecting",
    clientId: null,
    framesReceived: 0,
    framesRendered: 0,
    imagesDecoded: 0,
    lastSeq: null,
    missedSeq: 0,
    droppedByServer: 0,
    reconnects: 0,
    latencyPoints: 0,
    rankPoints: 0,
    lastError: null,
    closeCode: null,
    fps: 0,
    namesLoaded: 0,
  };
  window.rtdecodeViewer = state;

  // ------------------------------------------------------------------ URLs
  function withToken(url) {
    if (token) url.searchParams.set("token", token);
    return url;
  }
  function wsUrl() {
    const url = withToken(new URL("ws", window.location.href));
    url.protocol = window.location.protocol === "https:" ? "wss:" : "ws:";
    url.hash = "";
    return url.toString();
  }
  function thumbUrl(id) {
    return withToken(new URL("api/gallery/" + encodeURIComponent(id), window.location.href)).toString();
  }

  // Concept names of the gallery's images (/api/names, fetched once per connection);
  // an id without a name is shown as it is.
  let names = {};
  async function loadNames() {
    try {
      const res = await fetch(withToken(new URL("api/names", window.location.href)).toString());
      if (!res.ok) return;
      const body = await res.json();
      names = body.names || {};
      state.namesLoaded = Object.keys(names).length;
    } catch (err) {
      state.lastError = "names: " + err;
    }
  }
  function conceptOf(id) {
    return (id && names[id]) || id || "–";
  }

  // ------------------------------------------------------------------ protocol
  const textDecoder = new TextDecoder("utf-8");

  function parseFrame(buffer) {
    if (buffer.byteLength < 4) throw new Error("frame message shorter than 4 bytes");
    const n = new DataView(buffer).getUint32(0, false);
    if (4 + n > buffer.byteLength) throw new Error("frame header length exceeds the message");
    const header = JSON.parse(textDecoder.decode(new Uint8Array(buffer, 4, n)));
    if (header.v !== PROTOCOL_VERSION) throw new Error("unsupported protocol version " + header.v);
    const image = buffer.byteLength > 4 + n
      ? new Blob([new Uint8Array(buffer, 4 + n)], { type: header.mime || "image/jpeg" })
      : null;
    return { header, image };
  }

  // ------------------------------------------------------------------ connection
  let socket = null;
  let backoffS = BACKOFF_MIN_S;
  let retryTimer = null;
  let countdownTimer = null;

  function setConnection(kind, text) {
    state.connection = kind;
    const el = $("conn");
    el.dataset.state = kind;
    el.textContent = text;
  }

  function connect() {
    clearTimeout(retryTimer);
    clearInterval(countdownTimer);
    setConnection(state.reconnects ? "reconnecting" : "connecting", "connecting…");
    let ws;
    try {
      ws = new WebSocket(wsUrl());
    } catch (err) {
      state.lastError = String(err);
      scheduleReconnect();
      return;
    }
    ws.binaryType = "arraybuffer";
    socket = ws;
    ws.onmessage = (event) => {
      try {
        if (typeof event.data === "string") onText(JSON.parse(event.data));
        else {
          const frame = parseFrame(event.data);
          onFrame(frame);
          // Flow control: the server keeps at most two unacknowledged frames in flight,
          // so a slow screen gets fresh frames (older ones are dropped and counted).
          if (ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify({ type: "ack", seq: frame.header.seq }));
        }
      } catch (err) {
        state.lastError = String(err);
        console.warn("rtdecode: bad message:", err);
      }
    };
    ws.onclose = (event) => {
      if (socket !== ws) return;
      socket = null;
      state.closeCode = event.code;
      if (NO_RETRY_CODES.has(event.code)) {
        const why = event.code === 4401
          ? "unauthorized: open this page with ?token=…"
          : "refused: open the viewer from the server's own address";
        setConnection("closed", why);
        return;
      }
      scheduleReconnect();
    };
  }

  function scheduleReconnect() {
    // Exponential backoff with jitter, so a restarted server is not hit by every screen at once.
    const delayS = backoffS * (0.8 + 0.4 * Math.random());
    backoffS = Math.min(BACKOFF_MAX_S, backoffS * 2);
    state.reconnects += 1;
    const until = performance.now() + delayS * 1000;
    const tick = () => {
      const left = Math.max(0, (until - performance.now()) / 1000);
      setConnection("reconnecting", "reconnecting in " + left.toFixed(0) + " s");
    };
    tick();
    countdownTimer = setInterval(tick, 250);
    retryTimer = setTimeout(connect, delayS * 1000);
  }

  function send(obj) {
    if (socket && socket.readyState === WebSocket.OPEN) socket.send(JSON.stringify(obj));
  }

  function requestRate() {
    const v = $("rate").value;
    send({ type: "set_rate", max_fps: v ? Number(v) : null });
  }
  $("rate").addEventListener("change", requestRate);
  if (params.get("fps")) {
    const opt = [...$("rate").options].find((o) => o.value === params.get("fps"));
    if (opt) $("rate").value = opt.value;
  }

  // ------------------------------------------------------------------ text messages
  function onText(msg) {
    switch (msg.type) {
      case "hello":
        state.clientId = msg.client_id;
        backoffS = BACKOFF_MIN_S;
        setConnection("live", "live");
        $("client-info").textContent = "viewer " + msg.client_id + " · rtdecode " + msg.version +
          " · protocol v" + msg.protocol;
        if ($("rate").value) requestRate();
        loadNames();
        break;
      case "status":
        onStatus(msg);
        break;
      case "gap":
        state.droppedByServer = msg.dropped_total;
        $("dropped").textContent = fmtInt(state.droppedByServer);
        break;
      case "error":
        state.lastError = msg.code + ": " + msg.message;
        console.warn("rtdecode server:", msg.message);
        break;
      default:
        break; // rate, pong: nothing to show
    }
  }

  function findNumber(obj, keys, depth = 0) {
    // The service nests its counters (reader, windower, worker...): find them by name.
    if (!obj || typeof obj !== "object" || depth > 4) return null;
    for (const k of keys) if (typeof obj[k] === "number") return obj[k];
    for (const v of Object.values(obj)) {
      const found = findNumber(v, keys, depth + 1);
      if (found !== null) return found;
    }
    return null;
  }
  function nameOf(v) {
    if (!v) return "";
    if (typeof v === "string") return v;
    return v.name || "";
  }

  function onStatus(msg) {
    const src = msg.source || {};
    $("stream-name").textContent = nameOf(src.stream) ? "stream " + nameOf(src.stream) : "no stream";
    $("model-name").textContent = nameOf(src.model) ? "model " + nameOf(src.model).split("/").pop() : "";
    const gaps = findNumber(src, ["gaps"]);
    const skipped = findNumber(src, ["windows_skipped", "skipped"]);
    $("gaps").textContent = gaps === null ? "–" : fmtInt(gaps);
    $("skipped").textContent = skipped === null ? "–" : fmtInt(skipped);
    if (msg.client) {
      state.droppedByServer = msg.client.dropped;
      $("dropped").textContent = fmtInt(msg.client.dropped);
    }
    const h = msg.health || {};
    const el = $("health");
    el.dataset.state = h.state || "";
    el.textContent = h.state || "–";
    el.title = (h.reasons || []).join("; ");
    $("health-reasons").textContent = (h.reasons || []).join(" · ");
    if (src.online_eval) {
      state.onlineEval = src.online_eval;
      dirty = true;
    }
  }

  // ------------------------------------------------------------------ frames
  const frameTimes = []; // retrieval (or single-lane) frames, last 2 s
  const imageTimes = []; // frames with an image, last 2 s
  let lastImageAt = -Infinity;
  let pendingImage = null; // latest-wins: at most one decode in flight, newest waits
  let decoding = false;
  let shownSeq = -1;
  const top1Image = new Image();
  let top1Id = null;

  // Image frames of the two-lane worker (lane "image") carry a generated image at up to
  // max_fps; retrieval frames (lane "retrieval") come every hop. Each updates its own part
  // of the page at its own rate. Frames of the single-lane worker (lane null) carry both.
  const IMAGE_STAGES = ["wait", "generate", "encode_image"];

  function onFrame({ header, image }) {
    const now = performance.now() / 1000;
    state.framesReceived += 1;
    if (state.lastSeq !== null && header.seq > state.lastSeq + 1) state.missedSeq += header.seq - state.lastSeq - 1;
    state.lastSeq = header.seq;
    $("seq").textContent = fmtInt(header.seq);
    const lat = header.latencies_ms || {};

    if (header.lane === "image") {
      // Only the image and the image lane's timings: the strip already showed this
      // window's retrieval when its retrieval frame came.
      imageTimes.push(now);
      const imageLat = {};
      for (const s of IMAGE_STAGES) if (typeof lat[s] === "number") imageLat[s] = lat[s];
      if (typeof lat.total === "number") {
        imageLat.image_total = lat.total;
        $("image-latency").textContent = lat.total.toFixed(0);
      }
      recordLatencies(now, imageLat);
    } else {
      frameTimes.push(now);
      const total = lat.total;
      $("latency-total").textContent = typeof total === "number" ? total.toFixed(0) : "–";
      $("first-sample").textContent = fmtInt(header.first_sample);
      $("t-last").textContent = typeof header.t_last === "number" ? header.t_last.toFixed(2) : "–";
      $("flagged").hidden = !(header.extra && header.extra.flagged);
      recordLatencies(now, lat);
      recordRank(now, header.true_rank);
      showTruth(header.true_id, header.true_rank);
      showTopk(header.topk || [], header.true_id);
      if (image) imageTimes.push(now);
    }

    if (image) {
      lastImageAt = now;
      pendingImage = { blob: image, seq: header.seq };
      pumpDecode();
    } else if (now - lastImageAt > IMAGE_STALE_S && header.topk && header.topk.length) {
      showTop1(header.topk[0][0], header.seq);
    }
    dirty = true;
  }

  async function pumpDecode() {
    if (decoding) return;
    decoding = true;
    try {
      while (pendingImage) {
        const { blob, seq } = pendingImage;
        pendingImage = null;
        try {
          const bitmap = await createImageBitmap(blob);
          state.imagesDecoded += 1;
          if (seq > shownSeq) {
            drawImage(bitmap, "Decoded image (generated)");
            shownSeq = seq;
          }
          bitmap.close();
        } catch (err) {
          state.lastError = "image decode failed: " + err;
        }
      }
    } finally {
      decoding = false;
    }
  }

  function showTop1(id, seq) {
    if (id === top1Id) {
      if (top1Image.complete && top1Image.naturalWidth) drawImage(top1Image, "Top-1 retrieved (no generator)");
      return;
    }
    top1Id = id;
    top1Image.onload = () => {
      if (top1Id === id && seq >= shownSeq) {
        drawImage(top1Image, "Top-1 retrieved (no generator)");
        shownSeq = seq;
      }
    };
    top1Image.src = thumbUrl(id);
  }

  function drawImage(source, title) {
    const canvas = $("frame");
    fitCanvas(canvas);
    const ctx = canvas.getContext("2d");
    const w = source.width || source.naturalWidth;
    const h = source.height || source.naturalHeight;
    const scale = Math.min(canvas.width / w, canvas.height / h);
    const dw = w * scale, dh = h * scale;
    ctx.fillStyle = "#0b0e13";
    ctx.fillRect(0, 0, canvas.width, canvas.height);
    ctx.imageSmoothingQuality = "high";
    ctx.drawImage(source, (canvas.width - dw) / 2, (canvas.height - dh) / 2, dw, dh);
    state.framesRendered += 1;
    $("frame-placeholder").hidden = true;
    $("decoded-title").textContent = title;
  }

  // Thumbnails: <img> elements are reused; the browser caches /api/gallery responses.
  function thumbImg(container, id) {
    let img = container.querySelector("img");
    if (!id) {
      container.innerHTML = '<span class="muted">not known</span>';
      return;
    }
    if (!img) {
      container.innerHTML = "";
      img = document.createElement("img");
      img.alt = id;
      img.decoding = "async";
      container.appendChild(img);
    }
    if (img.dataset.id !== id) {
      img.dataset.id = id;
      img.alt = id;
      img.src = thumbUrl(id);
    }
  }

  function showTruth(trueId, trueRank) {
    thumbImg($("true-thumb"), trueId || null);
    $("true-name").textContent = trueId ? conceptOf(trueId) : "–";
    $("true-id").textContent = trueId || "–";
    $("true-rank").textContent = typeof trueRank === "number" ? "#" + trueRank : "–";
  }

  function showTopk(topk, trueId) {
    const list = $("topk");
    while (list.children.length < topk.length) {
      const li = document.createElement("li");
      li.innerHTML = '<div class="thumb"></div><div class="name"></div><div class="score"></div>' +
        '<div class="scorebar"><div></div></div><div class="id mono"></div>';
      list.appendChild(li);
    }
    while (list.children.length > topk.length) list.lastChild.remove();
    const best = topk.length ? Math.max(...topk.map((t) => t[1])) : 1;
    topk.forEach(([id, score], i) => {
      const li = list.children[i];
      li.classList.toggle("is-true", id === trueId);
      thumbImg(li.querySelector(".thumb"), id);
      li.querySelector(".score").textContent = (i + 1) + ". " + score.toFixed(3);
      li.querySelector(".name").textContent = conceptOf(id);
      li.querySelector(".name").title = conceptOf(id);
      li.querySelector(".id").textContent = id;
      li.querySelector(".id").title = id;
      const frac = best > 0 ? Math.max(0, Math.min(1, score / best)) : 0;
      li.querySelector(".scorebar > div").style.width = (100 * frac).toFixed(1) + "%";
    });
  }

  // ------------------------------------------------------------------ chart data
  const latency = new Map(); // stage -> [[t, ms], ...]
  const ranks = []; // [[t, rank], ...]
  let dirty = false;

  function recordLatencies(t, lat) {
    for (const [stage, ms] of Object.entries(lat)) {
      if (typeof ms !== "number" || !isFinite(ms)) continue;
      if (!latency.has(stage)) latency.set(stage, []);
      const series = latency.get(stage);
      series.push([t, ms]);
      while (series.length && series[0][0] < t - LATENCY_WINDOW_S) series.shift();
    }
    state.latencyPoints += 1;
  }

  function recordRank(t, rank) {
    if (typeof rank === "number" && rank >= 1) {
      ranks.push([t, rank]);
      state.rankPoints += 1;
    }
    while (ranks.length && ranks[0][0] < t - RANK_WINDOW_S) ranks.shift();
  }

  function stagesInOrder() {
    const known = STAGE_ORDER.filter((s) => latency.has(s));
    const other = [...latency.keys()].filter((s) => !STAGE_ORDER.includes(s)).sort();
    return known.concat(other);
  }
  function colorOf(stage) {
    const i = STAGE_ORDER.indexOf(stage);
    if (i >= 0) return PALETTE[i % PALETTE.length];
    return PALETTE[(STAGE_ORDER.length + [...latency.keys()].indexOf(stage)) % PALETTE.length];
  }

  // ------------------------------------------------------------------ drawing
  function fitCanvas(canvas) {
    const dpr = window.devicePixelRatio || 1;
    const w = Math.max(1, Math.round(canvas.clientWidth * dpr));
    const h = Math.max(1, Math.round(canvas.clientHeight * dpr));
    if (canvas.width !== w || canvas.height !== h) {
      canvas.width = w;
      canvas.height = h;
    }
    return dpr;
  }

  function niceMax(v) {
    if (!(v > 0)) return 1;
    const p = Math.pow(10, Math.floor(Math.log10(v)));
    for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= v) return m * p;
    return 10 * p;
  }

  function axes(ctx, dpr, box, windowS, yTicks) {
    ctx.font = 12 * dpr + "px system-ui, sans-serif";
    ctx.strokeStyle = "#30363d";
    ctx.fillStyle = "#8b949e";
    ctx.lineWidth = 1;
    ctx.textAlign = "right";
    ctx.textBaseline = "middle";
    for (const [y, label] of yTicks) {
      ctx.beginPath();
      ctx.moveTo(box.x0, y);
      ctx.lineTo(box.x1, y);
      ctx.stroke();
      ctx.fillText(label, box.x0 - 6 * dpr, y);
    }
    ctx.textAlign = "center";
    ctx.textBaseline = "top";
    const step = windowS >= 60 ? 15 : 10;
    for (let s = 0; s <= windowS; s += step) {
      const x = box.x1 - (s / windowS) * (box.x1 - box.x0);
      ctx.fillText(s === 0 ? "now" : "−" + s + " s", x, box.y1 + 6 * dpr);
    }
  }

  function drawLatency(now) {
    const canvas = $("latency-chart");
    const dpr = fitCanvas(canvas);
    const ctx = canvas.getContext("2d");
    ctx.clearRect(0, 0, canvas.width, canvas.height);
    const box = { x0: 48 * dpr, x1: canvas.width - 10 * dpr, y0: 8 * dpr, y1: canvas.height - 22 * dpr };
    let maxMs = 0;
    for (const series of latency.values()) for (const [, ms] of series) maxMs = Math.max(maxMs, ms);
    const top = niceMax(maxMs * 1.1);
    const y = (ms) => box.y1 - (ms / top) * (box.y1 - box.y0);
    const x = (t) => box.x1 - ((now - t) / LATENCY_WINDOW_S) * (box.x1 - box.x0);
    const ticks = [0, 0.25, 0.5, 0.75, 1].map((f) => {
      const v = f * top;
      return [y(v), Number.isInteger(v) ? String(v) : v.toFixed(v < 10 ? 2 : 1)];
    });
    axes(ctx, dpr, box, LATENCY_WINDOW_S, ticks);
    const legend = [];
    for (const stage of stagesInOrder()) {
      const series = latency.get(stage);
      if (!series.length) continue;
      ctx.strokeStyle = colorOf(stage);
      ctx.lineWidth = (stage === "total" ? 2.5 : 1.6) * dpr;
      ctx.beginPath();
      series.forEach(([t, ms], i) => (i ? ctx.lineTo(x(t), y(ms)) : ctx.moveTo(x(t), y(ms))));
      ctx.stroke();
      const last = series[series.length - 1][1];
      legend.push('<span class="key"><span class="dot" style="background:' + colorOf(stage) + '"></span>' +
        stage + " <b>" + last.toFixed(last < 10 ? 1 : 0) + "</b></span>");
    }
    $("latency-legend").innerHTML = legend.join("");
  }

  function drawRank(now) {
    const canvas = $("rank-chart");
    const dpr = fitCanvas(canvas);
    const ctx = canvas.getContext("2d");
    ctx.clearRect(0, 0, canvas.width, canvas.height);
    const box = { x0: 48 * dpr, x1: canvas.width - 10 * dpr, y0: 8 * dpr, y1: canvas.height - 22 * dpr };
    const maxRank = niceMax(Math.max(10, ...ranks.map((r) => r[1])));
    // Log scale, rank 1 at the top: good ranks are what matter and they are small numbers.
    const y = (r) => box.y0 + (Math.log(r) / Math.log(maxRank)) * (box.y1 - box.y0);
    const x = (t) => box.x1 - ((now - t) / RANK_WINDOW_S) * (box.x1 - box.x0);
    const ticks = [1, 5, 10, 50, 100, 500, 1000, 5000].filter((r) => r <= maxRank).map((r) => [y(r), String(r)]);
    ctx.fillStyle = "rgba(63, 185, 80, 0.10)"; // top-5 band
    ctx.fillRect(box.x0, y(1), box.x1 - box.x0, y(5) - y(1));
    axes(ctx, dpr, box, RANK_WINDOW_S, ticks);
    ctx.fillStyle = "#58a6ff";
    for (const [t, r] of ranks) {
      ctx.beginPath();
      ctx.arc(x(t), y(r), 2.6 * dpr, 0, 2 * Math.PI);
      ctx.fill();
    }
    const recent = ranks.filter(([t]) => t >= now - LATENCY_WINDOW_S).map((r) => r[1]);
    if (recent.length) {
      const sorted = [...recent].sort((a, b) => a - b);
      const median = sorted[Math.floor(sorted.length / 2)];
      const top5 = recent.filter((r) => r <= 5).length / recent.length;
      $("topk-rate").textContent = (100 * top5).toFixed(0) + " %";
      $("rank-legend").innerHTML = "median rank (30 s) <b>" + median + "</b> · top-5 <b>" +
        (100 * top5).toFixed(0) + " %</b> · n = " + recent.length;
    }
  }

  // The session's time-resolved decoding (online_eval on /api/status): top-5 per 50 ms lag
  // bin, the chance line, and the 500 ms the image is on screen, as in the paper's Fig. 3.
  function drawCurve() {
    const curve = state.onlineEval;
    const canvas = $("curve-chart");
    if (!canvas) return;
    const dpr = fitCanvas(canvas);
    const ctx = canvas.getContext("2d");
    ctx.clearRect(0, 0, canvas.width, canvas.height);
    const rows = (curve && curve.per_lag) || [];
    const maxLag = Math.max(1.5, ...rows.map((r) => r.lag_s + (curve.bin_s || 0.05) / 2));
    const box = { x0: 48 * dpr, x1: canvas.width - 10 * dpr, y0: 8 * dpr, y1: canvas.height - 22 * dpr };
    const x = (lag) => box.x0 + (lag / maxLag) * (box.x1 - box.x0);
    const y = (p) => box.y1 - (p / 100) * (box.y1 - box.y0);
    ctx.fillStyle = "rgba(139, 148, 158, 0.12)"; // image on screen
    ctx.fillRect(x(0), box.y0, x(0.5) - x(0), box.y1 - box.y0);
    ctx.font = 12 * dpr + "px system-ui, sans-serif";
    ctx.strokeStyle = "#30363d";
    ctx.fillStyle = "#8b949e";
    ctx.lineWidth = 1;
    ctx.textAlign = "right";
    ctx.textBaseline = "middle";
    for (const p of [0, 25, 50, 75, 100]) {
      ctx.beginPath();
      ctx.moveTo(box.x0, y(p));
      ctx.lineTo(box.x1, y(p));
      ctx.stroke();
      ctx.fillText(p + " %", box.x0 - 6 * dpr, y(p));
    }
    ctx.textAlign = "center";
    ctx.textBaseline = "top";
    for (let ms = 0; ms <= maxLag * 1000 + 1; ms += 250) {
      ctx.fillText(ms === 0 ? "onset" : "+" + ms + " ms", x(ms / 1000), box.y1 + 6 * dpr);
    }
    if (!rows.length) return;
    // among 5 candidates or fewer (categories: face or house) top-5 is always 100 %: top-1
    const k = curve.n_candidates <= 5 ? 1 : 5;
    const acc = (r) => r["top" + k];
    const chance = 100 * (curve["chance_top" + k] ?? curve.chance_top5);
    ctx.setLineDash([6 * dpr, 4 * dpr]);
    ctx.strokeStyle = "#d29922";
    ctx.beginPath();
    ctx.moveTo(box.x0, y(chance));
    ctx.lineTo(box.x1, y(chance));
    ctx.stroke();
    ctx.setLineDash([]);
    ctx.strokeStyle = "#3fb950";
    ctx.lineWidth = 2 * dpr;
    ctx.beginPath();
    rows.forEach((r, i) => (i ? ctx.lineTo(x(r.lag_s), y(100 * acc(r))) : ctx.moveTo(x(r.lag_s), y(100 * acc(r)))));
    ctx.stroke();
    ctx.fillStyle = "#3fb950";
    for (const r of rows) {
      ctx.beginPath();
      ctx.arc(x(r.lag_s), y(100 * acc(r)), 2.4 * dpr, 0, 2 * Math.PI);
      ctx.fill();
    }
    const best = rows.reduce((a, b) => (acc(b) > acc(a) ? b : a));
    const n = rows.reduce((a, r) => a + r.n, 0);
    state.curveBins = rows.length;
    $("curve-legend").innerHTML = "peak top-" + k + " <b>" + (100 * acc(best)).toFixed(0) + " %</b> at <b>+" +
      Math.round(1000 * best.lag_s) + " ms</b> (median rank " + best.median_rank + " of " +
      curve.n_candidates + ") · chance <b>" + chance.toFixed(1) + " %</b> · " + fmtInt(n) + " windows";
  }

  function fmtInt(v) {
    return typeof v === "number" ? v.toLocaleString("en-US") : "–";
  }

  function render() {
    const now = performance.now() / 1000;
    // Frames over the last 2 s; measured up to now, so the rate decays when frames stop.
    while (frameTimes.length && frameTimes[0] < now - 2) frameTimes.shift();
    const fps = frameTimes.length >= 2 ? (frameTimes.length - 1) / Math.max(0.5, now - frameTimes[0]) : 0;
    state.fps = fps;
    $("fps").textContent = fps.toFixed(1);
    while (imageTimes.length && imageTimes[0] < now - 2) imageTimes.shift();
    const ips = imageTimes.length >= 2 ? (imageTimes.length - 1) / Math.max(0.5, now - imageTimes[0]) : 0;
    $("ips").textContent = ips.toFixed(1);
    // Redraw on new data, and once a second anyway so the time axis keeps moving.
    if (dirty || Math.floor(now) !== render.lastSecond) {
      drawLatency(now);
      drawRank(now);
      drawCurve();
      dirty = false;
      render.lastSecond = Math.floor(now);
    }
    requestAnimationFrame(render);
  }

  connect();
  requestAnimationFrame(render);
})();
