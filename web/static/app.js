// pgrelay demo page: sign in, stream templates over EventSource or
// WebSocket, and share templates. Plain browser JavaScript, no build step.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const TOPIC = "templates";
  const CREDENTIAL_KEY = "pgrelay.credential";
  const TRANSPORT_KEY = "pgrelay.transport";

  const state = {
    credential: null,   // {token} or {user} (insecure-dev)
    me: null,           // /api/me
    transport: sessionStorage.getItem(TRANSPORT_KEY) || "sse",
    lastId: "",         // resume point, carried across reconnects and transport switches
    conn: null,         // {close()} of the current connection
    retry: 0,
    retryTimer: null,
  };

  // ---- credentials -------------------------------------------------------

  // A token arrives in the fragment (never sent to a server, never logged);
  // it is kept for this tab only and removed from the address bar.
  function readFragment() {
    const params = new URLSearchParams(location.hash.slice(1));
    const token = params.get("access_token");
    if (token) {
      sessionStorage.setItem(CREDENTIAL_KEY, JSON.stringify({ token }));
      history.replaceState(null, "", location.pathname + location.search);
    }
  }

  function loadCredential() {
    try { return JSON.parse(sessionStorage.getItem(CREDENTIAL_KEY) || "null"); } catch { return null; }
  }

  function authParams() {
    const p = new URLSearchParams();
    if (state.credential.token) p.set("access_token", state.credential.token);
    else p.set("user", state.credential.user);
    return p;
  }

  function apiFetch(path, options = {}) {
    const headers = Object.assign({ "Accept": "application/json" }, options.headers || {});
    let url = path;
    if (state.credential.token) headers["Authorization"] = "Bearer " + state.credential.token;
    else url += "?" + authParams().toString();
    return fetch(url, Object.assign({}, options, { headers }));
  }

  async function errorOf(resp) {
    try { return (await resp.json()).error || resp.statusText; } catch { return resp.statusText; }
  }

  // ---- sign in -----------------------------------------------------------

  async function signIn(credential) {
    state.credential = credential;
    const resp = await apiFetch("/api/me");
    if (!resp.ok) {
      const msg = await errorOf(resp);
      sessionStorage.removeItem(CREDENTIAL_KEY);
      state.credential = null;
      showSignIn(`Could not sign in (${resp.status}): ${msg}`);
      return;
    }
    sessionStorage.setItem(CREDENTIAL_KEY, JSON.stringify(credential));
    state.me = await resp.json();
    renderMe();
    $("signin").hidden = true;
    $("app").hidden = false;
    connect();
  }

  async function showSignIn(error) {
    $("app").hidden = true;
    $("signin").hidden = false;
    $("signin-error").hidden = !error;
    $("signin-error").textContent = error || "";
    setState("idle", "not connected");
    // Only a relay in --insecure-dev mode lists its users.
    const resp = await fetch("/api/users").catch(() => null);
    if (!resp || !resp.ok) return;
    const users = await resp.json();
    const list = $("picker-list");
    list.replaceChildren(...users.map((u) => {
      const li = document.createElement("li");
      const b = document.createElement("button");
      b.type = "button";
      b.textContent = `${u.name} — ${u.user_type}, ${u.org_name} (${u.id})`;
      b.addEventListener("click", () => signIn({ user: u.id }));
      li.append(b);
      return li;
    }));
    $("picker").hidden = users.length === 0;
  }

  const RULES = {
    ZOLO: "You receive templates shared with your location.",
    ZELO: "You receive templates shared with your location.",
    ZEWI: "You receive templates shared with any location of your organisation.",
    ZOWI: "You receive templates shared with any location of your organisation, and every template created in it.",
  };

  function renderMe() {
    const { user, locations } = state.me;
    $("me-avatar").textContent = initials(user.name);
    $("me-name").textContent = user.name;
    const loc = locations.find((l) => l.id === user.location_id);
    $("me-detail").textContent = `${user.user_type} · ${user.org_name}${loc ? " · " + loc.name : ""} · ${user.id}`;
    $("me-rule").textContent = RULES[user.user_type] + " Never your own.";
    $("relay-host").textContent = location.host;
    // Creating templates is the application's job; a relay offers it only
    // when started with --write-api (relay demo does).
    $("create-card").hidden = !state.me.write_api;
    $("create-locations").replaceChildren(...locations.map((l) => {
      const label = document.createElement("label");
      const box = document.createElement("input");
      box.type = "checkbox";
      box.name = "loc";
      box.value = l.id;
      label.append(box, l.name);
      return label;
    }));
  }

  function initials(name) {
    return name.split(/\s+/).map((w) => w[0] || "").join("").slice(0, 2).toUpperCase();
  }

  // ---- streaming ---------------------------------------------------------

  function setState(name, text) {
    const el = $("state");
    el.dataset.state = name;
    el.textContent = text;
  }

  function streamURL(path) {
    const p = authParams();
    p.set("topic", TOPIC);
    if (state.lastId) p.set("last_event_id", state.lastId);
    return path + "?" + p.toString();
  }

  function connect() {
    disconnect();
    setState("connecting", "connecting…");
    state.conn = state.transport === "ws" ? openWebSocket() : openEventSource();
  }

  function disconnect() {
    clearTimeout(state.retryTimer);
    if (state.conn) state.conn.close();
    state.conn = null;
  }

  function openEventSource() {
    const es = new EventSource(streamURL("/events"));
    const transport = "EventSource";
    es.onopen = () => { state.retry = 0; setState("live", `live · ${transport}`); };
    es.addEventListener(TOPIC, (e) => onEvent(e.lastEventId, JSON.parse(e.data)));
    es.addEventListener("reset", (e) => onReset(e.lastEventId, JSON.parse(e.data)));
    es.onerror = () => {
      if (es.readyState === EventSource.CLOSED) {
        // The relay refused (401/403) or the stream could not be opened:
        // EventSource gives up; try again later with the last id.
        setState("closed", "disconnected");
        scheduleReconnect();
      } else {
        // EventSource reconnects by itself, sending Last-Event-ID.
        setState("reconnecting", "reconnecting…");
      }
    };
    return { close: () => es.close() };
  }

  function openWebSocket() {
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    const ws = new WebSocket(scheme + "//" + location.host + streamURL("/ws"));
    let closedByUs = false;
    ws.onopen = () => { state.retry = 0; setState("live", "live · WebSocket"); };
    ws.onmessage = (m) => {
      const msg = JSON.parse(m.data);
      if (msg.type === "reset") onReset(msg.id, msg.data);
      else if (msg.topic === TOPIC) onEvent(msg.id, msg.data);
    };
    ws.onclose = (e) => {
      if (closedByUs) return;
      const why = e.reason ? `${e.code}: ${e.reason}` : `code ${e.code}`;
      if (e.code === 4403 || e.code === 4401) {
        setState("closed", "closed");
        notice(`The relay closed the stream (${why}).`, "warn");
        return;
      }
      setState("reconnecting", "reconnecting…");
      if (e.code !== 1006) notice(`Stream closed (${why}); resuming from the last event id.`, "info");
      scheduleReconnect();
    };
    return { close: () => { closedByUs = true; ws.close(1000, "bye"); } };
  }

  function scheduleReconnect() {
    clearTimeout(state.retryTimer);
    const delay = Math.min(10000, 500 * 2 ** state.retry++);
    state.retryTimer = setTimeout(connect, delay);
  }

  // ---- feed --------------------------------------------------------------

  function setLastId(id) {
    if (!id) return;
    state.lastId = id;
    $("last-id").textContent = id;
  }

  function onEvent(id, row) {
    setLastId(id);
    const { locations, people } = state.me;
    const creator = people.find((p) => p.id === row.created_by);
    const li = document.createElement("li");
    li.className = "item";
    li.dataset.name = row.name;
    li.dataset.id = id;
    const title = document.createElement("div");
    title.className = "title";
    title.textContent = row.name;
    const meta = document.createElement("div");
    meta.className = "meta";
    meta.append(
      span(`by ${creator ? creator.name + " (" + creator.id + ")" : row.created_by}`),
      span(new Date(row.created_at).toLocaleTimeString()),
      code(id),
    );
    const chips = document.createElement("div");
    chips.className = "chips";
    const shared = row.share_location_ids || [];
    if (shared.length === 0) chips.append(chip("not shared with any location", "none"));
    for (const locId of shared) {
      const loc = locations.find((l) => l.id === locId);
      chips.append(chip(loc ? loc.name : locId));
    }
    li.append(title, meta, chips);
    prepend(li);
  }

  function onReset(id, data) {
    setLastId(id);
    notice(`Reset: ${data && data.reason ? data.reason : "events were missed"}.`, "warn");
  }

  function notice(text, kind) {
    const li = document.createElement("li");
    li.className = "item notice" + (kind === "info" ? " info" : "");
    li.textContent = text;
    prepend(li);
  }

  function prepend(li) {
    $("feed-empty").hidden = true;
    $("feed").prepend(li);
  }

  function span(text) { const s = document.createElement("span"); s.textContent = text; return s; }
  function code(text) { const c = document.createElement("code"); c.textContent = text; return c; }
  function chip(text, extra) {
    const c = document.createElement("span");
    c.className = "chip" + (extra ? " " + extra : "");
    c.textContent = text;
    return c;
  }

  // ---- create ------------------------------------------------------------

  async function createTemplate(ev) {
    ev.preventDefault();
    const name = $("create-name").value.trim();
    const share = [...document.querySelectorAll("#create-locations input:checked")].map((b) => b.value);
    const result = $("create-result");
    $("create-submit").disabled = true;
    try {
      const resp = await apiFetch("/api/templates", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ name, share_location_ids: share }),
      });
      if (resp.ok) {
        const row = await resp.json();
        result.className = "result ok";
        result.textContent = `Shared “${row.name}”. Others receive it now — you never receive your own.`;
        $("create-form").reset();
      } else {
        result.className = "result bad";
        result.textContent = `${resp.status}: ${await errorOf(resp)}`;
      }
    } catch (e) {
      result.className = "result bad";
      result.textContent = String(e);
    } finally {
      $("create-submit").disabled = false;
    }
  }

  // ---- wiring ------------------------------------------------------------

  function setTransport(t) {
    state.transport = t;
    sessionStorage.setItem(TRANSPORT_KEY, t);
    for (const b of document.querySelectorAll(".toggle button")) {
      b.setAttribute("aria-pressed", String(b.dataset.transport === t));
    }
  }

  document.addEventListener("DOMContentLoaded", () => {
    setTransport(state.transport);
    for (const b of document.querySelectorAll(".toggle button")) {
      b.addEventListener("click", () => {
        if (b.dataset.transport === state.transport) return;
        setTransport(b.dataset.transport);
        if (state.me) connect();
      });
    }
    $("token-form").addEventListener("submit", (e) => {
      e.preventDefault();
      signIn({ token: $("token-input").value.trim() });
    });
    $("signout").addEventListener("click", () => {
      disconnect();
      sessionStorage.removeItem(CREDENTIAL_KEY);
      state.me = null;
      state.lastId = "";
      $("feed").replaceChildren();
      $("feed-empty").hidden = false;
      showSignIn();
    });
    $("create-form").addEventListener("submit", createTemplate);
    readFragment();
    const credential = loadCredential();
    if (credential) signIn(credential); else showSignIn();
  });
})();
