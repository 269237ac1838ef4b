// PixelGrid browser SDK: launch through the orchestrator, WHEP client, input capture and stream
// statistics for one game session.
//
//   const p = new PixelGridPlayer(videoElement, { onStats });
//   const games = await PixelGridPlayer.listGames("/api"); // the grid's catalogue (also `listGames`)
//   await p.play("/api", { game: "arena", version: "", width: 1280, height: 720, fps: 60 }, onEvent);
//                                             // launch through the orchestrator, WHEP, and re-launch
//                                             // on another node by itself when the node dies
//   p.captureInput(window, videoElement);     // keyboard, mouse (pointer lock), gamepad
//   await p.close();                          // DELETE the WHEP resource
//
// Lower level: `PixelGridPlayer.launch(api, opts)` places a session; `p.connect(whepUrl, token)`
// plays any WHEP session (a lone node in dev mode, a third-party WHEP server).
// `opts.grant` is the player's launch grant from the studio's backend (which holds the API key
// and calls the orchestrator's CreateLaunchGrant / `POST /api/grants`): a function returning a
// fresh grant (called once per launch and per re-launch; a grant starts one launch, once), or a
// string (no re-launch then). Without it the SDK asks `POST ${api}/demo-grant`, which only a
// local grid's orchestrator (`--demo-studio`) answers. The API key never belongs in a browser.
// `opts.version` (optional, empty = any) pins the game's version; a launch the grid cannot serve
// (no ready node has the game, no capacity, …) rejects with an Error whose message is the
// orchestrator's reason and whose `status` is the HTTP status (404 for an unknown game).
// Events passed to `onEvent`: {type: "connected"|"node_lost"|"reconnected"|"ended", node, ...}.
//
// Glass-to-glass latency: the node announces `rtp_epoch` and `epoch_unix_ms` in its `hello`
// message, so a frame's RTP timestamp gives its capture time; requestVideoFrameCallback gives
// when it is shown; pings give the offset between the node's clock and ours.

const PROTOCOL = 1;
const GAMEPAD_AXIS_EPSILON = 0.02;

export class PixelGridPlayer {
  constructor(video, { onStats, audio = true, relayOnly = false } = {}) {
    this.video = video;
    this.onStats = onStats || (() => {});
    this.audio = audio;         // false: offer no audio m-line, the node sends no sound
    this.relayOnly = relayOnly; // true: reach the node only through the session's TURN relays
    this.stream = null;
    this.pc = null;
    this.dc = null;
    this.resource = null;
    this.token = null;
    this.hello = null;
    this.clockOffsetMs = 0;   // node clock − our clock
    this.rttMs = null;
    this.g2g = [];            // recent glass-to-glass samples (capture → expected on screen), ms
    this.g2p = [];            // capture → handed to the compositor, ms
    this.nodeFrames = new Map(); // rtp timestamp → node's per-frame timings
    this.timings = { firstFrameMs: null, offerSentAt: null };
    this.lastNodeStats = null;
    this.queue = [];
    this.listeners = [];
    this.timers = [];
  }

  // `iceServers`: the TURN relays the orchestrator handed out with the session (per-session,
  // expiring credentials), for players behind NAT.
  async connect(whepUrl, token, iceServers = []) {
    this.token = token;
    const pc = new RTCPeerConnection({ iceServers, iceTransportPolicy: this.relayOnly ? "relay" : "all" });
    this.pc = pc;
    const transceiver = pc.addTransceiver("video", { direction: "recvonly" });
    this.receiver = transceiver.receiver;
    // The game's sound: Opus on the same stream as the pictures (the node stamps both on one
    // clock, and the browser lines them up with the RTCP sender reports).
    if (this.audio) pc.addTransceiver("audio", { direction: "recvonly" });
    if ("jitterBufferTarget" in this.receiver) this.receiver.jitterBufferTarget = 0;
    if ("playoutDelayHint" in this.receiver) this.receiver.playoutDelayHint = 0;
    this.dc = pc.createDataChannel("input", { ordered: true });
    this.dc.onmessage = (e) => this.onNodeMessage(JSON.parse(e.data));
    this.dc.onopen = () => this.ping();
    pc.ontrack = (e) => {
      if (!this.stream) this.stream = new MediaStream();
      this.stream.addTrack(e.track);
      if (this.video.srcObject !== this.stream) this.video.srcObject = this.stream;
      this.video.play().catch(() => {});
      if (e.track.kind === "video") this.watchFrames();
    };
    await pc.setLocalDescription(await pc.createOffer());
    await waitForGathering(pc, 1000);
    this.timings.offerSentAt = performance.now();
    const res = await fetch(whepUrl, {
      method: "POST",
      headers: { "Content-Type": "application/sdp", Authorization: `Bearer ${token}` },
      body: pc.localDescription.sdp,
    });
    if (res.status !== 201) throw new Error(`WHEP ${res.status}: ${await res.text()}`);
    this.resource = new URL(res.headers.get("Location"), whepUrl).href;
    await pc.setRemoteDescription({ type: "answer", sdp: await res.text() });
    this.timers.push(setInterval(() => this.ping(), 1000));
    this.timers.push(setInterval(() => this.collectStats(), 1000));
  }

  async close() {
    this.stream = null;
    this.timers.forEach(clearInterval);
    this.listeners.forEach(([t, ev, f]) => t.removeEventListener(ev, f));
    this.listeners = [];
    if (this.resource) {
      await fetch(this.resource, { method: "DELETE", headers: { Authorization: `Bearer ${this.token}` } }).catch(() => {});
    }
    if (this.pc) this.pc.close();
    this.pc = null;
  }

  send(obj) {
    if (this.dc && this.dc.readyState === "open") this.dc.send(JSON.stringify({ v: PROTOCOL, ...obj }));
  }

  ping() { this.send({ type: "ping", t: Date.now() }); }

  // What this player attests it received (frames decoded, play time since the first frame,
  // decoded size, measured frame rate), signed with the session's player key: the node forwards
  // it to the indexers, which credit the node's delivery only as far as receipts attest.
  async sendReceipt(sessionId, key) {
    const st = this.lastStats;
    if (!st || !st.framesDecoded || this.firstFrameAt === undefined || !this.dc || this.dc.readyState !== "open") return;
    const r = { seq: ++this.receiptSeq, frames: st.framesDecoded, played_ms: Math.round(performance.now() - this.firstFrameAt),
                width: st.frameWidth || 0, height: st.frameHeight || 0, fps: Math.round(st.fps || 0), at: Date.now() };
    const text = `pixelgrid/receipt/v1\n${sessionId}\n${r.seq}\n${r.frames}\n${r.played_ms}\n${r.width}\n${r.height}\n${r.fps}\n${r.at}\n`;
    const sig = new Uint8Array(await crypto.subtle.sign("Ed25519", key, new TextEncoder().encode(text)));
    this.send({ type: "receipt", ...r, sig: toHex(sig) });
    this.receiptsSent++;
  }

  // Input events are batched per animation frame.
  input(event) {
    this.queue.push({ t: performance.now(), ...event });
    if (this.queue.length === 1) requestAnimationFrame(() => this.flushInput());
  }

  flushInput() {
    while (this.queue.length) this.send({ type: "input", events: this.queue.splice(0, 64) });
  }

  onNodeMessage(m) {
    // A node that still talks is alive, even while its game holds the pictures back.
    this.lastHeardAt = performance.now();
    this.heardAny = true;
    switch (m.type) {
      case "hello": this.hello = m; break;
      case "pong": {
        const now = Date.now();
        this.rttMs = now - m.t;
        this.clockOffsetMs = m.node_unix_ms - (m.t + now) / 2;
        break;
      }
      case "frame":
        this.nodeFrames.set(m.rtp, m);
        if (this.nodeFrames.size > 600) this.nodeFrames.delete(this.nodeFrames.keys().next().value);
        break;
      case "stats": this.lastNodeStats = m; break;
      // The node ended the session itself (the game exited): say why, and do not re-launch.
      case "ended":
        this.timers.forEach(clearInterval);
        this.timers = [];
        if (this.onEvent) this.onEvent({ type: "ended", reason: `the node ended the session: ${m.reason}` });
        break;
    }
  }

  watchFrames() {
    const v = this.video;
    if (!v.requestVideoFrameCallback) return;
    const onFrame = (_now, meta) => {
      this.lastFrameAt = performance.now();
      this.heardAny = true;
      if (this.firstFrameAt === undefined) this.firstFrameAt = this.lastFrameAt;
      if (this.timings.firstFrameMs === null && this.timings.offerSentAt !== null) {
        this.timings.firstFrameMs = meta.presentationTime - this.timings.offerSentAt;
      }
      if (this.hello && meta.rtpTimestamp !== undefined) {
        const elapsed = ((meta.rtpTimestamp - this.hello.rtp_epoch) >>> 0) / 90;
        const captureNode = this.hello.epoch_unix_ms + elapsed;
        const shownNode = performance.timeOrigin + meta.expectedDisplayTime + this.clockOffsetMs;
        const g2g = shownNode - captureNode;
        const g2p = performance.timeOrigin + meta.presentationTime + this.clockOffsetMs - captureNode;
        if (g2g > -50 && g2g < 5000) {
          this.g2g.push(g2g);
          this.g2p.push(g2p);
          if (this.g2g.length > 2000) { this.g2g.shift(); this.g2p.shift(); }
        }
      }
      v.requestVideoFrameCallback(onFrame);
    };
    v.requestVideoFrameCallback(onFrame);
  }

  async collectStats() {
    if (!this.pc) return null;
    const report = await this.pc.getStats();
    const s = { g2g: percentiles(this.g2g), g2p: percentiles(this.g2p), rttMs: this.rttMs, node: this.lastNodeStats,
                ttffMs: this.timings.firstFrameMs, encoder: this.hello && this.hello.encoder };
    report.forEach((r) => {
      if (r.type === "inbound-rtp" && r.kind === "video") {
        s.framesDecoded = r.framesDecoded;
        s.framesDropped = r.framesDropped;
        s.fps = r.framesPerSecond;
        s.frameWidth = r.frameWidth;
        s.frameHeight = r.frameHeight;
        s.packetsLost = r.packetsLost;
        s.jitterBufferMs = r.jitterBufferEmittedCount ? 1000 * r.jitterBufferDelay / r.jitterBufferEmittedCount : null;
        const now = r.timestamp;
        if (this.prevBytes) s.bitrateKbps = (8 * (r.bytesReceived - this.prevBytes.bytes)) / (now - this.prevBytes.at);
        this.prevBytes = { bytes: r.bytesReceived, at: now };
        s.codecId = r.codecId;
      }
      if (r.type === "inbound-rtp" && r.kind === "audio") {
        s.audioPackets = r.packetsReceived;
        s.audioLost = r.packetsLost;
        s.audioLevel = r.audioLevel;
        s.audioJitterBufferMs = r.jitterBufferEmittedCount ? 1000 * r.jitterBufferDelay / r.jitterBufferEmittedCount : null;
      }
      if (r.type === "candidate-pair" && r.nominated && r.currentRoundTripTime !== undefined) {
        s.iceRttMs = 1000 * r.currentRoundTripTime;
        const local = report.get(r.localCandidateId);
        if (local) s.localCandidateType = local.candidateType;
      }
    });
    if (s.codecId) { const c = report.get(s.codecId); s.codec = c && c.mimeType; }
    this.lastStats = s;
    this.onStats(s);
    return s;
  }

  // Launches through the orchestrator at `api` and keeps playing: when no frame has been shown
  // for `nodeLostAfterMs` (or the connection failed) the node is taken as lost and the session
  // is launched again — the dead node fails its probe, so another is chosen.
  async play(api, options = {}, onEvent = () => {}) {
    this.api = api;
    this.launchOptions = options;
    // Every event is also kept in `this.events` (re-launches pass the wrapped callback back in).
    this.events = this.events || [];
    if (!onEvent.wrapped) {
      const user = onEvent;
      onEvent = (e) => { this.events.push(e); user(e); };
      onEvent.wrapped = true;
    }
    this.onEvent = onEvent;
    const s = await PixelGridPlayer.launch(api, options);
    this.firstFrameAt = undefined;
    await this.connect(s.whep_url, s.token, s.ice_servers || []);
    this.session = s;
    // Delivery receipts, signed with the key registered for this session, once a second.
    this.receiptSeq = 0;
    this.receiptsSent = 0;
    if (s.playerKey) this.timers.push(setInterval(() => this.sendReceipt(s.session_id, s.playerKey), 1000));
    this.lastFrameAt = performance.now();
    this.heardAny = false;
    // Nodes say they are alive every 100 ms: 500 ms of nothing is five missed in a row.
    this.timers.push(setInterval(() => this.watchdog(options.nodeLostAfterMs || 500), 50));
    this.onEvent({ type: "connected", node: s.node_id, session: s.session_id });
    return s;
  }

  watchdog(limitMs) {
    if (this.reconnecting || !this.pc) return;
    // Until the first packet, ICE and DTLS may still be connecting (seconds through a relay);
    // a node that does not announce keep-alives (older ones) only sends stats once a second.
    if (!this.heardAny) limitMs = Math.max(limitMs, 3000);
    else if (!(this.hello && this.hello.keepalive_ms)) limitMs = Math.max(limitMs, 1500);
    const silent = performance.now() - Math.max(this.lastFrameAt || 0, this.lastHeardAt || 0);
    if (silent > limitMs || this.pc.connectionState === "failed") this.reconnect(`nothing from the node for ${Math.round(silent)} ms`);
  }

  async reconnect(reason) {
    this.reconnecting = true;
    const lostAt = performance.now();
    this.onEvent({ type: "node_lost", node: this.session && this.session.node_id, reason });
    this.timers.forEach(clearInterval);
    this.timers = [];
    if (this.pc) this.pc.close();
    this.pc = null;
    for (let attempt = 0; attempt < 60; attempt++) {
      try {
        await this.play(this.api, this.launchOptions, this.onEvent);
        this.onEvent({ type: "reconnected", node: this.session.node_id, afterMs: performance.now() - lostAt });
        this.reconnecting = false;
        return;
      } catch (_) {
        if (this.pc) this.pc.close();
        this.pc = null;
        await new Promise((r) => setTimeout(r, 500));
      }
    }
    this.onEvent({ type: "ended", reason: "node lost and no other node took the session" });
  }

  // Two-step launch through the orchestrator's JSON gateway at `api`: get candidates, measure
  // the round trip to each node's probe (best of three), let the orchestrator place the session.
  // `version` is sent only when given (empty = any version the grid offers).
  static async launch(api, { game = "arena", version = "", width = 1280, height = 720, fps = 60, region = "", grant } = {}) {
    const credential = await PixelGridPlayer.grantFor(api, grant);
    const post = async (url, body) => {
      const res = await fetch(url, { method: "POST", body: JSON.stringify(body),
        headers: { "Content-Type": "application/json", Authorization: `Bearer ${credential}` } });
      if (!res.ok) throw await httpError(res);
      return res.json();
    };
    const launch = await post(`${api}/sessions`, { game, ...(version ? { version } : {}), width, height, fps, region });
    const rtt = {};
    await Promise.all(launch.candidates.map(async (c) => {
      let best = Infinity;
      for (let i = 0; i < 3; i++) {
        const t = performance.now();
        try {
          await fetch(c.probe_url, { cache: "no-store" });
          best = Math.min(best, performance.now() - t);
        } catch (_) { /* unreachable candidates are left out */ }
      }
      if (best < Infinity) rtt[c.node_id] = Math.max(1, Math.round(best));
    }));
    // A key pair for this session only (WebCrypto Ed25519; the private half never leaves the
    // browser): its public half goes with the launch, and it signs delivery receipts.
    let keys = null;
    try {
      keys = await crypto.subtle.generateKey({ name: "Ed25519" }, false, ["sign", "verify"]);
    } catch (_) { /* no Ed25519 in this browser: it plays without receipts */ }
    const player_key = keys ? toHex(new Uint8Array(await crypto.subtle.exportKey("raw", keys.publicKey))) : "";
    const chosen = await post(`${api}/sessions/${launch.launch_id}/choose`, { rtt_ms: rtt, ...(player_key ? { player_key } : {}) });
    return { ...chosen, rtt_ms: rtt, playerKey: keys && keys.privateKey };
  }

  // A launch grant: from the studio's function, as given, or the local grid's demo grant.
  static async grantFor(api, grant) {
    if (typeof grant === "function") return String(await grant());
    if (typeof grant === "string" && grant) return grant;
    const res = await fetch(`${api}/demo-grant`, { method: "POST" });
    if (!res.ok) throw await httpError(res);
    return (await res.json()).grant;
  }

  // The grid's game catalogue from the orchestrator's gateway at `api` (`GET ${api}/games`):
  // [{id, version, name, modes: ["1280x720@30", …], ready_nodes, free_slots}]. Empty `modes`
  // means the game plays in any mode; `ready_nodes` 0 means no node can launch it right now.
  static async listGames(api = "/api") {
    const res = await fetch(`${api}/games`, { cache: "no-store" });
    if (!res.ok) throw await httpError(res);
    const body = await res.json();
    return (body.games || []).map((g) => ({
      id: String(g.id), version: g.version || "", name: g.name || String(g.id), modes: Array.isArray(g.modes) ? g.modes : [],
      ready_nodes: g.ready_nodes || 0, free_slots: g.free_slots || 0,
    }));
  }

  // "1280x720@30" → {width: 1280, height: 720, fps: 30}, or null when it is not a mode.
  static parseMode(text) {
    const m = /^(\d+)x(\d+)@(\d+)$/.exec(String(text || "").trim());
    return m ? { width: Number(m[1]), height: Number(m[2]), fps: Number(m[3]) } : null;
  }

  static formatStats(s) {
    const f = (v, d = 0) => (v === null || v === undefined || Number.isNaN(v) ? "–" : Number(v).toFixed(d));
    return [
      `${f(s.frameWidth)}x${f(s.frameHeight)} ${s.codec || ""} ${s.encoder || ""}`,
      `fps ${f(s.fps)}  decoded ${f(s.framesDecoded)}  lost ${f(s.packetsLost)}`,
      `bitrate ${f(s.bitrateKbps)} kbps  link estimate ${f(s.node && s.node.estimate_kbps)} kbps  encoder ${f(s.node && s.node.target_kbps)} kbps @ ${f(s.node && s.node.fps)} fps`,
      `rtt ${f(s.rttMs, 1)} ms  jitter buffer ${f(s.jitterBufferMs, 1)} ms`,
      `glass-to-glass p50 ${f(s.g2g.p50, 1)}  p99 ${f(s.g2g.p99, 1)} ms`,
      `audio packets ${f(s.audioPackets)}  lost ${f(s.audioLost)}  level ${f(s.audioLevel, 3)}  buffer ${f(s.audioJitterBufferMs, 1)} ms`,
      `first frame ${f(s.ttffMs)} ms after offer`,
    ].join("\n");
  }

  captureInput(target, video) {
    const on = (t, ev, f, opts) => { t.addEventListener(ev, f, opts); this.listeners.push([t, ev, f]); };
    const gameKeys = /^(Arrow|Key[WASD]$|Space$|Shift)/;
    on(target, "keydown", (e) => { if (gameKeys.test(e.code)) e.preventDefault(); if (!e.repeat) this.input({ kind: "key", code: e.code, down: true }); });
    on(target, "keyup", (e) => this.input({ kind: "key", code: e.code, down: false }));
    on(video, "mousemove", (e) => {
      if (document.pointerLockElement === video) {
        this.input({ kind: "pointer_motion", dx: e.movementX, dy: e.movementY });
      } else {
        const r = video.getBoundingClientRect();
        const x = (e.clientX - r.left) / r.width, y = (e.clientY - r.top) / r.height;
        if (x >= 0 && x <= 1 && y >= 0 && y <= 1) this.input({ kind: "pointer_move", x, y });
      }
    });
    on(video, "mousedown", (e) => this.input({ kind: "mouse_button", button: e.button, down: true }));
    on(video, "mouseup", (e) => this.input({ kind: "mouse_button", button: e.button, down: false }));
    on(video, "click", () => { if (video.requestPointerLock) video.requestPointerLock(); });
    on(video, "wheel", (e) => { e.preventDefault(); this.input({ kind: "wheel", dx: Math.sign(e.deltaX), dy: Math.sign(e.deltaY) }); }, { passive: false });
    on(video, "contextmenu", (e) => e.preventDefault());
    const pads = new Map();
    const poll = () => {
      if (!this.pc) return;
      for (const pad of (navigator.getGamepads ? navigator.getGamepads() : [])) {
        if (!pad) continue;
        const prev = pads.get(pad.index) || { axes: [], buttons: [] };
        pad.axes.slice(0, 8).forEach((value, index) => {
          if (Math.abs((prev.axes[index] || 0) - value) > GAMEPAD_AXIS_EPSILON) this.input({ kind: "gamepad_axis", index, value: Math.max(-1, Math.min(1, value)) });
        });
        pad.buttons.slice(0, 32).forEach((b, index) => {
          if (!!prev.buttons[index] !== b.pressed) this.input({ kind: "gamepad_button", index, pressed: b.pressed });
        });
        pads.set(pad.index, { axes: [...pad.axes], buttons: pad.buttons.map((b) => b.pressed) });
      }
      requestAnimationFrame(poll);
    };
    requestAnimationFrame(poll);
  }

  // Centre of the arena player's gold pixels in the decoded video, or null.
  playerCentroid() {
    const v = this.video, w = v.videoWidth, h = v.videoHeight;
    if (!w || !h) return null;
    const c = this.canvas || (this.canvas = document.createElement("canvas"));
    c.width = w; c.height = h;
    const g = c.getContext("2d", { willReadFrequently: true });
    g.drawImage(v, 0, 0, w, h);
    const d = g.getImageData(0, 0, w, h).data;
    let sx = 0, sy = 0, n = 0;
    for (let i = 0; i < d.length; i += 4) {
      if (d[i] > 200 && d[i + 1] > 170 && d[i + 1] < 240 && d[i + 2] < 80) { const p = i / 4; sx += p % w; sy += Math.floor(p / w); n++; }
    }
    return n > 30 ? { x: sx / n, y: sy / n, pixels: n } : null;
  }

  static async autotest(player, scenario, seconds) {
    const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
    const until = async (pred, ms) => { const end = performance.now() + ms; while (performance.now() < end) { if (await pred()) return true; await sleep(100); } return false; };
    const stats = () => player.collectStats();
    if (scenario === "play") {
      await until(async () => ((await stats()).framesDecoded || 0) >= 60, 5000);
      // Launched through an orchestrator: a couple of signed receipts reach the node too.
      if (player.session) await until(async () => player.receiptsSent >= 3, 6000);
      return { scenario, receiptsSent: player.receiptsSent || 0, ...(await stats()) };
    }
    if (scenario === "input") {
      await until(async () => ((await stats()).framesDecoded || 0) >= 30 && player.playerCentroid(), 8000);
      const before = player.playerCentroid();
      // Through the page's own keyboard handler, as a key press would arrive.
      window.dispatchEvent(new KeyboardEvent("keydown", { code: "ArrowRight", key: "ArrowRight" }));
      await sleep(700);
      window.dispatchEvent(new KeyboardEvent("keyup", { code: "ArrowRight", key: "ArrowRight" }));
      await sleep(500);
      const after = player.playerCentroid();
      return { scenario, before, after, ...(await stats()) };
    }
    if (scenario === "abuse") {
      // Garbled, oversized and foreign messages on the input channel: each must be dropped and
      // counted by the node while the picture keeps coming.
      await until(async () => ((await stats()).framesDecoded || 0) >= 30, 8000);
      const before = (await stats()).framesDecoded;
      const junk = ["not json", "x".repeat(5000), JSON.stringify({ v: 1, type: "reboot" }), JSON.stringify({ v: 9, type: "ping", t: 1 }),
        JSON.stringify({ v: 1, type: "input", events: [{ t: 0, kind: "teleport" }, { t: 0, kind: "gamepad_axis", index: 99, value: 5 }] })];
      for (const j of junk) player.dc.send(j);
      await sleep(Math.max(2500, seconds * 1000));
      const after = await stats();
      return { scenario, before, sent: junk.length, ...after };
    }
    if (scenario === "reconnect") {
      // The test kills the serving node; the player must move to the other one by itself.
      await until(async () => ((await stats()).framesDecoded || 0) >= 30, 8000);
      const firstNode = player.session.node_id;
      const moved = await until(async () => player.events.some((e) => e.type === "reconnected"), 20000);
      const after = moved && await until(async () => ((await stats()).framesDecoded || 0) >= 30, 8000);
      return { scenario, firstNode, node: player.session.node_id, moved, after, events: player.events, ...(await stats()) };
    }
    if (scenario === "bench") {
      await until(async () => ((await stats()).framesDecoded || 0) >= 30, 8000);
      player.g2g = [];
      player.g2p = [];
      await sleep(seconds * 1000);
      return { scenario, seconds, ...(await stats()) };
    }
    throw new Error(`unknown scenario ${scenario}`);
  }
}

/** The grid's game catalogue; see `PixelGridPlayer.listGames`. */
export function listGames(api = "/api") { return PixelGridPlayer.listGames(api); }

// An Error for a failed gateway call: the message is the orchestrator's reason (its plain-text
// or JSON `error` body), with the status in `status`.
function toHex(bytes) {
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

async function httpError(res) {
  let text = (await res.text().catch(() => "")).trim();
  try { const j = JSON.parse(text); if (j && typeof j === "object") text = String(j.error || j.message || text); } catch (_) { /* plain text */ }
  const e = new Error(text ? `${res.status}: ${text}` : `HTTP ${res.status}`);
  e.status = res.status;
  e.body = text;
  return e;
}

function waitForGathering(pc, ms) {
  if (pc.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => { if (pc.iceGatheringState === "complete") resolve(); };
    pc.addEventListener("icegatheringstatechange", done);
    setTimeout(resolve, ms);
  });
}

function percentiles(samples) {
  if (!samples.length) return { p50: null, p99: null, n: 0 };
  const s = [...samples].sort((a, b) => a - b);
  const at = (p) => s[Math.min(s.length - 1, Math.max(0, Math.ceil(p * s.length) - 1))];
  return { p50: at(0.5), p99: at(0.99), n: s.length };
}
