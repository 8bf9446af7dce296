/*
 * Voice bridge widget: an embeddable, dependency-free WebRTC voice panel.
 *
 *   <script src="https://HOST/static/widget.js"
 *           data-bridge-url="https://HOST"          (default: this script's origin)
 *           data-dialplan="customer-service"        (optional)
 *           data-audio-processing="off"             (optional; default on)
 *           data-ice-timeout-ms="3000"></script>    (optional)
 *
 * Renders into <div id="voice-bridge-widget"> when the page has one, otherwise into a
 * floating panel. Everything lives in an open shadow root so host-page CSS cannot leak in
 * (and ours cannot leak out). Scripting/test API: window.VoiceBridge.
 */
(function () {
  "use strict";

  // Loaded twice (e.g. by a CMS)? Keep the first instance; two widgets would fight over
  // the microphone.
  if (window.VoiceBridge && window.VoiceBridge.__widget) return;

  var HOST_ID = "voice-bridge-widget";
  var STATES = ["idle", "connecting", "connected", "ended", "error"];

  // document.currentScript is only set while this file runs synchronously, so read it now.
  var script = document.currentScript || findOwnScript();
  var config = readConfig(script);

  var ui = null; // DOM handles, created once the body exists
  var call = null; // the current Call, or null when idle
  var state = "idle";
  var detail = ""; // error text / hang-up reason shown next to the state
  var lastError = null;
  var botActivity = null; // "listening" | "speaking" as reported by the server
  var transcriptEntries = []; // in arrival order; entries are replaced by turn_id
  var transcriptByTurn = new Map();
  var micLevel = 0;

  // ---------------------------------------------------------------------------------
  // Configuration
  // ---------------------------------------------------------------------------------

  function findOwnScript() {
    var scripts = document.querySelectorAll("script[src]");
    for (var i = scripts.length - 1; i >= 0; i--) {
      if (/\/widget\.js(\?|#|$)/.test(scripts[i].src)) return scripts[i];
    }
    return null;
  }

  function readConfig(el) {
    var data = (el && el.dataset) || {};
    var origin = el && el.src ? new URL(el.src, location.href).origin : location.origin;
    var timeout = parseInt(data.iceTimeoutMs, 10);
    return Object.freeze({
      bridgeUrl: (data.bridgeUrl || origin).replace(/\/+$/, ""),
      dialplan: data.dialplan || null,
      audioProcessing: (data.audioProcessing || "on").toLowerCase() !== "off",
      iceTimeoutMs: isFinite(timeout) && timeout > 0 ? timeout : 3000,
      connectTimeoutMs: 20000,
    });
  }

  function audioConstraints() {
    // Echo cancellation etc. help on laptops with speakers, but some deployments
    // (headsets, bench tests with known signals) want the raw microphone.
    var on = config.audioProcessing;
    return { echoCancellation: on, noiseSuppression: on, autoGainControl: on, channelCount: 1 };
  }

  // ---------------------------------------------------------------------------------
  // Rendering
  // ---------------------------------------------------------------------------------

  var CSS = [
    ":host { all: initial; display: block; }",
    ":host([data-mode=floating]) { position: fixed; right: 20px; bottom: 20px; z-index: 2147483000; width: 320px; max-width: calc(100vw - 40px); }",
    ".vbw-panel { box-sizing: border-box; font: 14px/1.4 system-ui, -apple-system, 'Segoe UI', Roboto, sans-serif;",
    "  color: #1d2330; background: #fff; border: 1px solid #d9dde6; border-radius: 12px;",
    "  box-shadow: 0 6px 24px rgba(20, 30, 60, .14); padding: 14px; display: flex; flex-direction: column; gap: 10px; }",
    ".vbw-header { display: flex; align-items: center; justify-content: space-between; gap: 8px; }",
    ".vbw-title { font-weight: 600; white-space: nowrap; }",
    ".vbw-state { text-align: right; }",
    ".vbw-state { font-size: 12px; color: #5a6275; }",
    ".vbw-state[data-state=connected] { color: #137a3e; }",
    ".vbw-state[data-state=error] { color: #b3261e; }",
    ".vbw-controls { display: flex; gap: 8px; align-items: center; }",
    ".vbw-btn { all: unset; box-sizing: border-box; cursor: pointer; padding: 7px 14px; border-radius: 8px;",
    "  font-weight: 600; font-size: 13px; color: #fff; text-align: center; }",
    ".vbw-btn:focus-visible { outline: 2px solid #3b6fe0; outline-offset: 2px; }",
    ".vbw-btn[disabled] { opacity: .4; cursor: default; }",
    ".vbw-start { background: #1f8f4e; }",
    ".vbw-hangup { background: #c9372c; }",
    ".vbw-meter { flex: 1; height: 8px; background: #eceff4; border-radius: 4px; overflow: hidden; }",
    ".vbw-meter-bar { height: 100%; width: 0; background: linear-gradient(90deg, #3bb36b, #e0b43b); transition: width 60ms linear; }",
    ".vbw-transcript { max-height: 220px; min-height: 60px; overflow-y: auto; border-top: 1px solid #eceff4;",
    "  padding-top: 8px; display: flex; flex-direction: column; gap: 6px; }",
    ".vbw-empty { color: #8a91a3; font-size: 12px; }",
    ".vbw-line { padding: 5px 9px; border-radius: 10px; max-width: 88%; word-wrap: break-word; }",
    ".vbw-line[data-who=caller] { align-self: flex-end; background: #e3ecff; }",
    ".vbw-line[data-who=bot] { align-self: flex-start; background: #f1f2f5; }",
    ".vbw-line[data-who=system] { align-self: center; background: none; color: #5a6275; font-size: 12px; }",
    ".vbw-line[data-final=false] { opacity: .7; }",
    ".vbw-who { display: block; font-size: 11px; font-weight: 600; color: #5a6275; }",
    ".vbw-unheard { color: #8a91a3; }",
    ".vbw-flag { color: #b3261e; font-size: 11px; margin-left: 4px; }",
  ].join("\n");

  // Small element factory; text is always set via textContent (server text is untrusted).
  function el(tag, attrs, text) {
    var node = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (name) {
      node.setAttribute(name, attrs[name]);
    });
    if (text != null) node.textContent = text;
    return node;
  }

  function mount() {
    var host = document.getElementById(HOST_ID);
    var mode = "inline";
    if (!host) {
      host = el("div", { id: HOST_ID });
      mode = "floating";
      document.body.appendChild(host);
    }
    host.setAttribute("data-mode", mode);
    var root = host.shadowRoot || host.attachShadow({ mode: "open" });
    root.textContent = "";

    var style = el("style", {}, CSS);
    var panel = el("div", { class: "vbw-panel", part: "panel" });
    var header = el("div", { class: "vbw-header" });
    var title = el("span", { class: "vbw-title" }, "Voice assistant");
    var status = el("span", {
      class: "vbw-state", "data-testid": "call-state", "data-state": "idle",
      role: "status", "aria-live": "polite",
    });
    header.append(title, status);

    var controls = el("div", { class: "vbw-controls" });
    var start = el("button", { class: "vbw-btn vbw-start", type: "button", "data-testid": "start-call" }, "Call");
    var hangup = el("button", { class: "vbw-btn vbw-hangup", type: "button", "data-testid": "hang-up" }, "Hang up");
    var meter = el("div", {
      class: "vbw-meter", "data-testid": "mic-level", "data-level": "0", role: "meter",
      "aria-label": "Microphone level", "aria-valuemin": "0", "aria-valuemax": "1", "aria-valuenow": "0",
    });
    var bar = el("div", { class: "vbw-meter-bar" });
    meter.appendChild(bar);
    controls.append(start, hangup, meter);

    var transcript = el("div", {
      class: "vbw-transcript", "data-testid": "transcript", role: "log", "aria-live": "polite",
    });
    var empty = el("div", { class: "vbw-empty" }, "Press Call and start talking.");
    transcript.appendChild(empty);

    // Remote audio plays here; kept in the shadow root so the host page never sees it.
    var audio = el("audio", { autoplay: "", playsinline: "", "data-testid": "remote-audio" });
    audio.autoplay = true;

    panel.append(header, controls, transcript, audio);
    root.append(style, panel);

    start.addEventListener("click", function () { api.start(); });
    hangup.addEventListener("click", function () { api.hangup(); });

    ui = { host: host, root: root, status: status, start: start, hangup: hangup, meter: meter,
      bar: bar, transcript: transcript, empty: empty, audio: audio, lines: new Map() };
    renderState();
    renderLevel();
  }

  function renderState() {
    if (!ui) return;
    var labels = { idle: "Idle", connecting: "Connecting…", connected: "Connected",
      ended: "Call ended", error: "Error" };
    var text = labels[state];
    if (state === "connected" && botActivity) text += " · bot " + botActivity;
    if (detail) text += ": " + detail;
    ui.status.textContent = text;
    ui.status.setAttribute("data-state", state);
    if (botActivity) ui.status.setAttribute("data-bot", botActivity);
    else ui.status.removeAttribute("data-bot");
    var busy = state === "connecting" || state === "connected";
    ui.start.disabled = busy;
    ui.hangup.disabled = !busy;
    ui.host.setAttribute("data-state", state);
  }

  function renderLevel() {
    if (!ui) return;
    var value = micLevel.toFixed(3);
    ui.meter.setAttribute("data-level", value);
    ui.meter.setAttribute("aria-valuenow", value);
    ui.bar.style.width = Math.round(micLevel * 100) + "%";
  }

  // One DOM line per turn_id; a later message for the same turn replaces its content.
  function renderLine(entry) {
    if (!ui) return;
    var line = ui.lines.get(entry.turnId);
    if (!line) {
      line = el("div", { class: "vbw-line" });
      ui.lines.set(entry.turnId, line);
      if (ui.empty.parentNode) ui.empty.remove();
      ui.transcript.appendChild(line);
    }
    line.textContent = "";
    line.setAttribute("data-who", entry.who);
    line.setAttribute("data-turn-id", entry.turnId);
    line.setAttribute("data-final", String(entry.final));
    line.setAttribute("data-interrupted", String(entry.interrupted));
    var names = { caller: "You", bot: "Bot", system: "" };
    if (names[entry.who]) line.appendChild(el("span", { class: "vbw-who" }, names[entry.who]));
    line.appendChild(el("span", { class: "vbw-text" }, entry.text));
    if (entry.interrupted) {
      // Show what the bot meant to say but the caller never heard, struck through.
      var tail = unheardTail(entry.spokenText, entry.text);
      if (tail) line.appendChild(el("s", { class: "vbw-unheard", "data-testid": "unheard" }, tail));
      line.appendChild(el("span", { class: "vbw-flag" }, "(interrupted)"));
    }
    // Keep the newest line in view unless the user scrolled up to read history.
    var t = ui.transcript;
    if (t.scrollHeight - t.scrollTop - t.clientHeight < 80) t.scrollTop = t.scrollHeight;
  }

  function unheardTail(spoken, heard) {
    if (!spoken || spoken.length <= heard.length) return "";
    if (spoken.slice(0, heard.length) !== heard) return "";
    return spoken.slice(heard.length);
  }

  function clearTranscript() {
    transcriptEntries = [];
    transcriptByTurn.clear();
    if (!ui) return;
    ui.lines.clear();
    ui.transcript.textContent = "";
    ui.transcript.appendChild(ui.empty);
  }

  // ---------------------------------------------------------------------------------
  // State
  // ---------------------------------------------------------------------------------

  function setState(next, why) {
    if (STATES.indexOf(next) < 0) throw new Error("bad state " + next);
    state = next;
    detail = why || "";
    if (next !== "connected") botActivity = null;
    renderState();
    emit("statechange", { state: state, detail: detail });
  }

  // DOM events on the host element let pages react without polling.
  function emit(name, payload) {
    var target = ui ? ui.host : window;
    target.dispatchEvent(new CustomEvent("voicebridge:" + name, { detail: payload, bubbles: true, composed: true }));
  }

  // ---------------------------------------------------------------------------------
  // Server events (data channel "events")
  // ---------------------------------------------------------------------------------

  function handleServerMessage(raw) {
    var msg;
    try {
      msg = JSON.parse(raw);
    } catch (e) {
      console.warn("[voice-bridge] ignoring non-JSON event", raw);
      return;
    }
    emit("message", msg);
    switch (msg.type) {
      case "transcript": return onTranscript(msg);
      case "state":
        botActivity = msg.state === "speaking" || msg.state === "listening" ? msg.state : null;
        return renderState();
      case "hangup": return endCall("ended", msg.reason || "the bot hung up");
      case "transfer":
        return addSystemLine("Transferring to " + (msg.target || "another agent") + "…");
      default:
        console.debug("[voice-bridge] unknown event", msg.type);
    }
  }

  var localTurns = 0;

  function onTranscript(msg) {
    var who = msg.who === "bot" ? "bot" : "caller";
    var turnId = msg.turn_id != null ? String(msg.turn_id) : who + "-" + ++localTurns;
    var entry = upsertEntry(who, turnId, String(msg.text || ""), !!msg.final, !!msg.interrupted);
    // A bot turn starts (final=false) with the full text to be spoken; the final message
    // carries only what was heard. Remember the former to show the unheard tail.
    if (who === "bot" && !entry.final) entry.spokenText = entry.text;
    renderLine(entry);
  }

  // Notes from the widget itself (transfer, autoplay problems), shown centred.
  function addSystemLine(text) {
    renderLine(upsertEntry("system", "system-" + ++localTurns, text, true, false));
  }

  function upsertEntry(who, turnId, text, final, interrupted) {
    var entry = transcriptByTurn.get(turnId);
    if (!entry) {
      entry = { who: who, turnId: turnId, text: "", final: false, interrupted: false, spokenText: null };
      transcriptByTurn.set(turnId, entry);
      transcriptEntries.push(entry);
    }
    entry.text = text;
    entry.final = final;
    entry.interrupted = interrupted;
    return entry;
  }

  // ---------------------------------------------------------------------------------
  // Call lifecycle
  // ---------------------------------------------------------------------------------

  // Everything a call owns, so hang-up can release it all in one place.
  function Call() {
    this.closed = false;
    this.stream = null;
    this.pc = null;
    this.channel = null;
    this.audioContext = null;
    this.meterTimer = null;
    this.callId = null;
    this.connectTimer = null;
    // Set by waitConnected() while start() waits for ICE/DTLS to come up.
    this.onConnected = null;
    this.onFailed = null;
    this.rejectWait = null;
  }

  // Idempotent: also called again when an await finishes after hang-up, to release
  // whatever that await just produced (e.g. a microphone stream granted late).
  Call.prototype.close = function () {
    this.closed = true;
    clearInterval(this.meterTimer);
    clearTimeout(this.connectTimer);
    if (this.rejectWait) this.rejectWait(new Cancelled());
    if (this.channel) try { this.channel.close(); } catch (e) { /* already closed */ }
    if (this.pc) try { this.pc.close(); } catch (e) { /* already closed */ }
    if (this.stream) this.stream.getTracks().forEach(function (t) { t.stop(); });
    if (this.audioContext && this.audioContext.state !== "closed") {
      this.audioContext.close().catch(function () {});
    }
    if (ui && call === this) {
      ui.audio.pause();
      ui.audio.srcObject = null;
    }
    if (call === this || !call) {
      micLevel = 0;
      renderLevel();
    }
  };

  // Thrown when the user hung up while we were still awaiting something.
  function Cancelled() {}

  function checkOpen(c) {
    if (!c.closed && c === call) return;
    c.close();
    throw new Cancelled();
  }

  function start() {
    if (call) return Promise.resolve(state); // already connecting/connected
    var c = (call = new Call());
    lastError = null;
    clearTranscript();
    setState("connecting");
    return connect(c).then(
      function () { return state; },
      function (err) {
        // After a hang-up, awaits may fail because we closed things; that is not an error.
        if (err instanceof Cancelled || c.closed) return state;
        lastError = describeError(err);
        console.error("[voice-bridge]", err);
        endCall("error", lastError, c);
        return state;
      }
    );
  }

  async function connect(c) {
    c.stream = await navigator.mediaDevices.getUserMedia({ audio: audioConstraints(), video: false });
    checkOpen(c);
    startMeter(c);

    var iceServers = await fetchIceServers();
    checkOpen(c);
    var pc = (c.pc = new RTCPeerConnection({ iceServers: iceServers }));
    watchConnection(c, pc);

    // The page creates the channel (before the offer) so it is negotiated in the SDP.
    c.channel = pc.createDataChannel("events");
    c.channel.onmessage = function (ev) { if (!c.closed) handleServerMessage(ev.data); };

    c.stream.getAudioTracks().forEach(function (track) { pc.addTrack(track, c.stream); });
    pc.ontrack = function (ev) { playRemote(ev); };

    await pc.setLocalDescription(await pc.createOffer());
    await waitForIceGathering(pc, config.iceTimeoutMs);
    checkOpen(c);

    var answer = await postOffer(pc.localDescription.sdp);
    checkOpen(c);
    c.callId = answer.call_id || null;
    await pc.setRemoteDescription({ type: "answer", sdp: answer.sdp });
    checkOpen(c);

    await waitConnected(c, pc);
  }

  async function fetchIceServers() {
    // A missing config endpoint should not block local/LAN calls; the offer will surface
    // real server problems with a proper error message.
    try {
      var res = await fetchWithTimeout(config.bridgeUrl + "/api/webrtc/config", { method: "GET" }, 8000);
      if (!res.ok) throw new Error("HTTP " + res.status);
      var body = await res.json();
      return Array.isArray(body.iceServers) ? body.iceServers : [];
    } catch (err) {
      console.warn("[voice-bridge] no ICE config, using none:", describeError(err));
      return [];
    }
  }

  async function postOffer(sdp) {
    var payload = { sdp: sdp, type: "offer" };
    if (config.dialplan) payload.dialplan = config.dialplan;
    var res = await fetchWithTimeout(config.bridgeUrl + "/api/webrtc/offer", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(payload),
    }, 15000);
    var body = null;
    try { body = await res.json(); } catch (e) { /* non-JSON error page */ }
    if (!res.ok) throw new Error((body && body.error) || "offer rejected (HTTP " + res.status + ")");
    if (!body || body.type !== "answer" || !body.sdp) throw new Error("malformed answer from bridge");
    return body;
  }

  function fetchWithTimeout(url, options, ms) {
    var ctrl = new AbortController();
    var timer = setTimeout(function () { ctrl.abort(); }, ms);
    options.signal = ctrl.signal;
    options.mode = "cors";
    return fetch(url, options).catch(function (err) {
      if (err && err.name === "AbortError") throw new Error("bridge did not answer in " + ms / 1000 + "s");
      // fetch() only says "Failed to fetch"; name the likely causes.
      throw new Error("cannot reach bridge at " + config.bridgeUrl + " (offline or CORS)");
    }).finally(function () { clearTimeout(timer); });
  }

  // Non-trickle ICE: the server gets one offer with all candidates. Without STUN servers
  // gathering is near-instant; with unreachable ones we stop waiting after a timeout and
  // send what we have.
  function waitForIceGathering(pc, ms) {
    if (pc.iceGatheringState === "complete") return Promise.resolve();
    return new Promise(function (resolve) {
      var timer = setTimeout(done, ms);
      function check() { if (pc.iceGatheringState === "complete") done(); }
      function done() {
        clearTimeout(timer);
        pc.removeEventListener("icegatheringstatechange", check);
        resolve();
      }
      pc.addEventListener("icegatheringstatechange", check);
    });
  }

  function waitConnected(c, pc) {
    return new Promise(function (resolve, reject) {
      c.connectTimer = setTimeout(function () {
        reject(new Error("connection timed out"));
      }, config.connectTimeoutMs);
      c.rejectWait = reject;
      c.onConnected = function () { clearTimeout(c.connectTimer); resolve(); };
      c.onFailed = function (why) { clearTimeout(c.connectTimer); reject(new Error(why)); };
      if (pc.connectionState === "connected") c.onConnected();
    });
  }

  function watchConnection(c, pc) {
    pc.addEventListener("connectionstatechange", function () {
      if (c.closed) return;
      switch (pc.connectionState) {
        case "connected":
          if (state === "connecting") setState("connected");
          if (c.onConnected) c.onConnected();
          break;
        case "failed":
          if (c.onFailed && state === "connecting") c.onFailed("connection failed");
          else endCall("error", "connection lost", c);
          break;
        case "closed":
          endCall("ended", "connection closed", c);
          break;
        // "disconnected" is often transient (network blip); ICE either recovers or
        // moves to "failed", which we handle above.
      }
    });
  }

  function playRemote(ev) {
    if (!ui) return;
    var stream = (ev.streams && ev.streams[0]) || new MediaStream([ev.track]);
    if (ui.audio.srcObject !== stream) ui.audio.srcObject = stream;
    // Autoplay can still be refused on some sites; the call keeps working, just silent,
    // so say so instead of failing.
    var played = ui.audio.play();
    if (played) played.catch(function (err) {
      console.warn("[voice-bridge] remote audio blocked:", describeError(err));
      addSystemLine("Audio playback was blocked by the browser; click the page to enable it.");
      document.addEventListener("click", function () { ui.audio.play().catch(function () {}); }, { once: true });
    });
  }

  // Mic level from an AnalyserNode: RMS of the waveform mapped from -60..0 dBFS to 0..1.
  // setInterval rather than requestAnimationFrame so the level keeps updating in
  // background tabs (rAF is paused there).
  function startMeter(c) {
    var Ctx = window.AudioContext || window.webkitAudioContext;
    if (!Ctx) return;
    var ctx = (c.audioContext = new Ctx());
    if (ctx.state === "suspended") ctx.resume().catch(function () {});
    var analyser = ctx.createAnalyser();
    analyser.fftSize = 1024;
    var mute = ctx.createGain();
    mute.gain.value = 0;
    // Route through a silent gain to the destination so every browser actually pulls
    // audio through the analyser; the caller must not hear themselves.
    ctx.createMediaStreamSource(c.stream).connect(analyser);
    analyser.connect(mute);
    mute.connect(ctx.destination);
    var samples = new Float32Array(analyser.fftSize);
    c.meterTimer = setInterval(function () {
      analyser.getFloatTimeDomainData(samples);
      var sum = 0;
      for (var i = 0; i < samples.length; i++) sum += samples[i] * samples[i];
      var rms = Math.sqrt(sum / samples.length);
      var db = rms > 0 ? 20 * Math.log10(rms) : -100;
      micLevel = Math.max(0, Math.min(1, (db + 60) / 60));
      renderLevel();
    }, 50);
  }

  // Ends the current call (if `only` is given, only when it is still that call).
  function endCall(nextState, why, only) {
    if (only && call !== only) return;
    if (call) call.close();
    call = null;
    if (nextState === "error") lastError = why;
    setState(nextState, why);
  }

  function hangup() {
    if (!call) return;
    endCall("ended", "you hung up");
  }

  function describeError(err) {
    if (!err) return "unknown error";
    if (err.name === "NotAllowedError") return "microphone permission denied";
    if (err.name === "NotFoundError") return "no microphone found";
    return err.message || String(err);
  }

  // ---------------------------------------------------------------------------------
  // Public API
  // ---------------------------------------------------------------------------------

  var api = {
    __widget: true,
    version: "1",
    /** Start a call; resolves with the resulting state ("connected", "error", ...). */
    start: start,
    /** Hang up and release microphone, peer connection and audio. */
    hangup: hangup,
    /** Copy of the transcript: [{who, text, final, turnId, interrupted, spokenText}]. */
    transcript: function () {
      return transcriptEntries.map(function (e) { return Object.assign({}, e); });
    },
  };
  Object.defineProperties(api, {
    state: { get: function () { return state; }, enumerable: true },
    detail: { get: function () { return detail; }, enumerable: true },
    error: { get: function () { return lastError; }, enumerable: true },
    botState: { get: function () { return botActivity; }, enumerable: true },
    callId: { get: function () { return call ? call.callId : null; }, enumerable: true },
    micLevel: { get: function () { return micLevel; }, enumerable: true },
    config: { get: function () { return config; }, enumerable: true },
    // For diagnostics (getStats) and tests; null when no call is active.
    peerConnection: { get: function () { return call ? call.pc : null; }, enumerable: true },
    root: { get: function () { return ui ? ui.root : null; }, enumerable: true },
  });
  window.VoiceBridge = api;

  if (document.body) mount();
  else document.addEventListener("DOMContentLoaded", mount, { once: true });
})();
