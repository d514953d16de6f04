// Soniq dashboard: live refresh (server-sent events, polling fallback, paused while hidden)
// and the write buttons. No build step, no inline script, no HTML from strings.
(() => {
  "use strict";
  const body = document.body;
  const root = body.dataset.root || "";
  const live = document.getElementById("live");
  const flash = document.getElementById("flash");
  const KEY = "soniq-dashboard-key";
  const POLL_MS = 5000;
  let source = null;
  let pollTimer = null;
  let failures = 0;
  let refreshing = false;
  let again = false;

  function setLive(state) {
    live.dataset.state = state;
    live.textContent = state;
  }

  function say(text, bad) {
    flash.textContent = text;
    flash.className = bad ? "bad" : "";
  }

  // Someone is typing or has rows selected: don't swap the page under them.
  function busy() {
    const main = document.getElementById("main");
    const active = document.activeElement;
    if (active && main.contains(active) && /^(INPUT|SELECT|TEXTAREA)$/.test(active.tagName)) {
      return true;
    }
    return main.querySelector("input[type=checkbox]:checked") !== null;
  }

  async function refresh(force) {
    if (refreshing) { again = true; return; }
    if (!force && busy()) return;
    refreshing = true;
    try {
      const response = await fetch(location.href, { headers: { "X-Soniq-Refresh": "1" } });
      if (!response.ok) return;
      const doc = new DOMParser().parseFromString(await response.text(), "text/html");
      const fresh = doc.getElementById("main");
      const current = document.getElementById("main");
      if (fresh && current) current.replaceWith(document.adoptNode(fresh));
    } catch (err) {
      setLive("offline");
    } finally {
      refreshing = false;
      if (again) { again = false; refresh(false); }
    }
  }

  function startPolling() {
    if (pollTimer === null) {
      pollTimer = setInterval(() => refresh(false), POLL_MS);
      setLive("polling");
    }
  }

  function start() {
    if (document.hidden) return;
    if (!("EventSource" in window) || failures >= 3) { startPolling(); return; }
    source = new EventSource(root + "/api/events");
    let first = true;
    source.addEventListener("change", () => {
      failures = 0;
      setLive("live");
      if (first) { first = false; return; }  // the snapshot sent on connect
      refresh(false);
    });
    source.onerror = () => {
      failures += 1;
      if (failures >= 3) { stop(); startPolling(); }
      else setLive("reconnecting");
    };
  }

  function stop() {
    if (source !== null) { source.close(); source = null; }
    if (pollTimer !== null) { clearInterval(pollTimer); pollTimer = null; }
  }

  // A running job's page: its progress changes without changing any count, so the page asks
  // (data-refresh) to be refreshed every 2 s while it is shown.
  setInterval(() => {
    const marker = document.querySelector("#main [data-refresh]");
    if (marker && !document.hidden) refresh(false);
  }, 2000);

  document.addEventListener("visibilitychange", () => {
    if (document.hidden) { stop(); setLive("paused"); }
    else { refresh(false); start(); }
  });

  function headers(json) {
    const h = json ? { "Content-Type": "application/json" } : {};
    const key = sessionStorage.getItem(KEY);
    if (key) h["X-Soniq-Key"] = key;
    return h;
  }

  async function act(button) {
    const ask = button.dataset.confirm;
    if (ask && !window.confirm(ask)) return;
    let payload = null;
    if (button.dataset.bulk) {
      const ids = Array.from(document.querySelectorAll(
        `input[data-select="${button.dataset.bulk}"]:checked`)).map((box) => box.value);
      if (ids.length === 0) { say("Select some jobs first.", true); return; }
      payload = { ids };
    } else if (button.dataset.body) {
      payload = JSON.parse(button.dataset.body);
    }
    button.disabled = true;
    try {
      const response = await fetch(root + button.dataset.url, {
        method: button.dataset.action,
        headers: headers(payload !== null),
        body: payload === null ? undefined : JSON.stringify(payload),
      });
      const data = await response.json().catch(() => ({}));
      if (!response.ok) {
        say(`${response.status}: ${data.detail || response.statusText}`, true);
        if (response.status === 401) askKey();
        return;
      }
      say(`Done: ${JSON.stringify(data)}`, false);
      if (button.dataset.then) { location.assign(button.dataset.then); return; }
      document.querySelectorAll("input[data-select]:checked").forEach((box) => { box.checked = false; });
      await refresh(true);
    } catch (err) {
      say(String(err), true);
    } finally {
      button.disabled = false;
    }
  }

  function askKey() {
    const key = window.prompt("API key for changes (kept in this tab only; empty to forget):",
      sessionStorage.getItem(KEY) || "");
    if (key === null) return;
    if (key) sessionStorage.setItem(KEY, key); else sessionStorage.removeItem(KEY);
  }

  document.addEventListener("click", (event) => {
    const button = event.target.closest("button[data-action]");
    if (button) { event.preventDefault(); act(button); return; }
    if (event.target.id === "key-button") askKey();
  });

  document.addEventListener("change", (event) => {
    const all = event.target.closest("input[data-select-all]");
    if (all) {
      document.querySelectorAll(`input[data-select="${all.dataset.selectAll}"]`)
        .forEach((box) => { box.checked = all.checked; });
    }
  });

  start();
})();
