/* The gateway's session monitor: keeps a page honest about its session.
 *
 * - Looks at GET <prefix>/api/session (which does not extend the session)
 *   every `interval` seconds, one tab for all: each tab shares what it learns
 *   over a BroadcastChannel, and a tab that has just heard skips its turn.
 * - Before the session ends, warns with "Stay signed in" (or, near the
 *   absolute end, "Sign in again").
 * - When it has ended, covers the page with the reason and "Sign in again",
 *   which opens the sign-in page in a small window; once signed in there,
 *   the window closes and the page carries on as it was, unsaved work and
 *   all. Signed in as someone else, the page reloads instead.
 * - Shows each security alert (new device, new place, ...) once per browser.
 * - With `activity: interaction`, tells the gateway, at most every
 *   `ping_interval`, that the person typed or clicked.
 * - Holds the page's own fetch() calls that the gateway refused for want of
 *   a session, and sends them again once signed in again, so an app that
 *   takes a 401 for "gone for good" (JupyterLab: "Kernel died") carries on.
 *   Only the gateway's refusals (marked `Gateway-Refusal: session`, which an
 *   upstream cannot send), which the app never saw, so sending them again
 *   does nothing twice; only bodies that can be sent twice, at most 100.
 *
 * Everything it draws lives in a shadow root, styled there, so the app's CSS
 * and the monitor's cannot touch each other. No inline script, no eval.
 */
(function () {
  "use strict";
  var me = document.currentScript;
  var prefix = me ? new URL(me.src, location.href).pathname.replace(/\/monitor\.js$/, "") : "/_gateway";
  var channel = typeof BroadcastChannel === "function" ? new BroadcastChannel("gateway-session-monitor") : null;

  // The sign-in window's last page: tell the page that opened it, and close.
  if (me && me.hasAttribute("data-signed-in")) {
    if (channel) channel.postMessage({ type: "signed-in" });
    if (window.opener) {
      try { window.opener.postMessage({ gatewayMonitor: "signed-in" }, location.origin); } catch (e) { /* gone */ }
    }
    setTimeout(function () { window.close(); }, 50);
    return;
  }
  if (window.__gatewayMonitor) return;   // added twice: once is enough
  window.__gatewayMonitor = true;
  var send = window.fetch.bind(window);   // the monitor's own requests are never held

  var SEEN_KEY = "gateway-monitor-alerts-seen";
  var settings = { interval: 30, expiring_soon: 120, activity: "requests", ping_interval: 30 };
  var state = null;          // the last session body, and when it was asked for
  var learntAt = 0;
  var username = null;
  var ended = false, endedAt = 0;
  var timer = null, ticker = null, inflight = false, again = false;
  var failures = 0;          // answers that told nothing (503, network), in a row
  var lastPing = 0;
  var returnFocus = null, madeInert = [];
  var waiting = [];          // held requests, resumed once signed in again

  // -- drawing ------------------------------------------------------------------
  var host = document.createElement("div");
  host.setAttribute("data-gateway-monitor", "");
  var root = host.attachShadow ? host.attachShadow({ mode: "open" }) : host;
  var css = [
    ":host { all: initial; }",
    "* { box-sizing: border-box; font: 15px/1.45 system-ui, -apple-system, 'Segoe UI', Roboto, sans-serif; }",
    ".bar, .dialog, .toast { --fg: #1b1d21; --bg: #fff; --border: #c9ced6; --accent: #2557d6; --on-accent: #fff; --muted: #555b66; color: var(--fg); background: var(--bg); border: 1px solid var(--border); border-radius: 10px; box-shadow: 0 6px 24px rgba(0,0,0,.18); }",
    "@media (prefers-color-scheme: dark) { .bar, .dialog, .toast { --fg: #eceef2; --bg: #22252a; --border: #454b54; --accent: #8ab0ff; --on-accent: #0d1b36; --muted: #b5bbc5; } }",
    ".bar { position: fixed; z-index: 2147483646; left: 50%; bottom: 1rem; transform: translateX(-50%); width: min(34rem, calc(100vw - 2rem)); padding: .8rem 1rem; display: flex; flex-wrap: wrap; gap: .6rem 1rem; align-items: center; }",
    ".bar p { margin: 0; flex: 1 1 14rem; }",
    ".toast { position: fixed; z-index: 2147483646; right: 1rem; top: 1rem; width: min(26rem, calc(100vw - 2rem)); padding: .8rem 1rem; }",
    ".toast p { margin: 0 0 .5rem; }",
    ".backdrop { position: fixed; z-index: 2147483647; inset: 0; background: rgba(10,12,16,.55); display: flex; align-items: center; justify-content: center; padding: 1rem; }",
    ".dialog { width: min(28rem, 100%); padding: 1.4rem 1.5rem; }",
    "h2 { margin: 0 0 .6rem; font-size: 1.2rem; font-weight: 650; }",
    ".dialog p { margin: 0 0 .8rem; }",
    ".muted { color: var(--muted); }",
    ".row { display: flex; flex-wrap: wrap; gap: .6rem 1rem; align-items: center; }",
    "button { font-weight: 600; color: var(--on-accent); background: var(--accent); border: 0; border-radius: 8px; padding: .55rem 1rem; cursor: pointer; }",
    "button.plain { color: var(--accent); background: transparent; border: 1px solid var(--border); }",
    "a { color: var(--accent); }",
    "button:focus-visible, a:focus-visible { outline: 3px solid var(--accent); outline-offset: 2px; }",
    ".sr { position: absolute; width: 1px; height: 1px; overflow: hidden; clip: rect(0 0 0 0); white-space: nowrap; }"
  ].join("\n");
  try {
    var sheet = new CSSStyleSheet();
    sheet.replaceSync(css);
    root.adoptedStyleSheets = [sheet];   // not inline style: the app's CSP does not apply
  } catch (e) {
    var style = document.createElement("style");
    style.textContent = css;
    root.appendChild(style);
  }
  var live = el("p", { "class": "sr", "aria-live": "assertive" });
  root.appendChild(live);
  var bar = null, overlay = null, toast = null;

  function el(tag, attrs, text) {
    var node = document.createElement(tag);
    for (var k in attrs || {}) node.setAttribute(k, attrs[k]);
    if (text) node.textContent = text;
    return node;
  }
  function attach() {
    if (!host.isConnected) (document.body || document.documentElement).appendChild(host);
  }
  function announce(text) { live.textContent = ""; setTimeout(function () { live.textContent = text; }, 30); }
  function sessionsLink() { return el("a", { href: prefix + "/sessions", target: "_blank", rel: "noopener" }, "Your sessions"); }
  function clock(seconds) {
    seconds = Math.max(0, Math.round(seconds));
    var m = Math.floor(seconds / 60), s = seconds % 60;
    return m + ":" + (s < 10 ? "0" : "") + s;
  }

  // -- what the session says --------------------------------------------------------
  function left() {
    // Seconds to the session's end, counted from when the gateway said it:
    // the browser's clock need not agree with the gateway's.
    if (!state) return Infinity;
    return state.session.remaining_seconds - (Date.now() - learntAt) / 1000;
  }
  function bindingIsAbsolute() {
    return state && state.session.idle_expires_at === state.session.expires_at;
  }

  // `asked`: when the request that got this answer was sent. An answer to a
  // question asked before the session was seen to end says nothing now.
  function apply(body, asked) {
    if (!body || !body.session || asked < learntAt || (ended && asked < endedAt)) return;
    var who = body.user ? body.user.username : null;
    // Someone else now (or, after an end, someone the page never knew): the
    // page and its unsaved work are not theirs. Nothing held is sent.
    if (username !== null ? who !== username : ended) {
      waiting = [];
      location.reload();
      return;
    }
    username = who;
    state = body;
    learntAt = asked;
    if (body.monitor) settings = body.monitor;
    if (ended) hideOverlay();
    ended = false;
    // Held requests go again, those refused before this answer was asked.
    var still = [];
    waiting.forEach(function (held) { if (held.at <= asked) held.resume(); else still.push(held); });
    waiting = still;
    if (body.alerts) showAlerts(body.alerts);
    render();
    schedule();
  }

  function end(body, asked) {
    if (asked < learntAt) return;      // a later answer said it was alive
    schedule();                        // keep looking, whatever happens
    if (ended) return;
    ended = true;
    endedAt = asked;
    state = null;
    hideBar();
    showOverlay(body && body.reason_text);
    schedule();
  }

  function render() {
    if (ended || !state) return hideBar();
    var remaining = left();
    if (remaining > settings.expiring_soon) return hideBar();
    if (remaining <= 0) { hideBar(); schedule(1); return; }   // look once it is over
    showBar(remaining);
  }

  // -- looking ---------------------------------------------------------------------------
  // The alerts this browser has shown (storage may be refused: then shown again).
  function seenAlerts() {
    try {
      var ids = JSON.parse(localStorage.getItem(SEEN_KEY) || "[]");
      return Array.isArray(ids) ? ids : [];
    } catch (e) { return []; }
  }
  function markSeen(ids) {
    try { localStorage.setItem(SEEN_KEY, JSON.stringify(ids.slice(-200))); } catch (e) { /* shown again, at worst */ }
  }
  // Alerts of the last day; older ones are on the "your sessions" page.
  function since() { return Date.now() / 1000 - 86400; }

  function check() {
    clearTimeout(timer);
    timer = null;
    if (inflight) { again = true; return; }   // once this one answers, look again
    inflight = true;
    var asked = Date.now();
    var url = prefix + "/api/session?alerts=" + since().toFixed(3);
    var options = { credentials: "same-origin", cache: "no-store", headers: { Accept: "application/json" } };
    if (AbortSignal.timeout) options.signal = AbortSignal.timeout(15000);
    send(url, options)
      .then(function (r) {
        return r.json().catch(function () { return null; }).then(function (body) {
          return [r.status, body];
        });
      }, function () { return [0, null]; })
      .then(function (result) {
        inflight = false;
        answered(result[0], result[1], asked);
        if (again) { again = false; check(); }
      });
  }

  function answered(status, body, asked) {
    if (status === 200) {
      failures = 0;
      share({ type: "state", body: body, asked: asked });
      apply(body, asked);
      if (!timer) schedule();     // an answer it could not use: keep looking
    } else if (status === 401) {
      failures = 0;
      share({ type: "ended", body: body, asked: asked });
      end(body, asked);
    } else {
      // The gateway could not tell (503 while its store is down, or no
      // answer): ask again, less and less often, up to the usual interval.
      failures += 1;
      schedule(Math.min(settings.interval, 5 * Math.pow(2, failures - 1)));
    }
  }

  function schedule(seconds) {
    clearTimeout(timer);
    var wait = seconds || settings.interval;
    if (!ended && state) {
      var remaining = left();
      // Wake in time to warn, and at the end itself.
      if (remaining > settings.expiring_soon) wait = Math.min(wait, remaining - settings.expiring_soon + 0.5);
      else wait = Math.min(wait, Math.max(remaining + 0.5, 1));
    }
    // A little jitter, so tabs that heard the same news do not all ask at once.
    timer = setTimeout(check, Math.max(1, wait) * 1000 + Math.random() * 500);
  }

  function share(message) { if (channel) channel.postMessage(message); }

  if (channel) {
    channel.onmessage = function (event) {
      var m = event.data || {};
      if (m.type === "state") apply(m.body, m.asked);
      else if (m.type === "ended") end(m.body, m.asked || Date.now());
      else if (m.type === "signed-in") check();
    };
  }
  window.addEventListener("message", function (event) {
    if (event.origin === location.origin && event.data && event.data.gatewayMonitor === "signed-in") check();
  });
  document.addEventListener("visibilitychange", function () {
    if (document.visibilityState === "visible") check();
  });

  // -- staying signed in ---------------------------------------------------------------
  function refresh() {
    var asked = lastPing = Date.now();
    send(prefix + "/api/session/refresh", { method: "POST", credentials: "same-origin", headers: { Accept: "application/json" } })
      .then(function (r) {
        return r.json().catch(function () { return null; }).then(function (body) {
          if (r.status === 200 || r.status === 401) answered(r.status, body, asked);
        });
      })
      .catch(function () { /* the next check will tell */ });
  }

  function interacted() {
    if (settings.activity !== "interaction" || ended || !state) return;
    if (Date.now() - lastPing < settings.ping_interval * 1000) return;
    refresh();
  }
  document.addEventListener("keydown", interacted, { capture: true, passive: true });
  document.addEventListener("pointerdown", interacted, { capture: true, passive: true });

  function signIn() {
    var url = prefix + "/login?rd=" + encodeURIComponent(prefix + "/monitor/signed-in");
    var popup = window.open(url, "gateway-sign-in", "popup,width=480,height=680");
    if (!popup && overlay) {
      var note = overlay.querySelector("[data-blocked]");
      note.hidden = false;
      note.querySelector("a").focus();
    }
  }

  // -- the warning bar -------------------------------------------------------------------
  function showBar(remaining) {
    attach();
    var absolute = bindingIsAbsolute();
    if (!bar) {
      bar = el("div", { "class": "bar", role: "region", "aria-label": "Session" });
      bar.appendChild(el("p", {}));
      var act = el("button", { type: "button" });
      act.addEventListener("click", function () { if (bindingIsAbsolute()) signIn(); else refresh(); });
      bar.appendChild(act);
      bar.appendChild(sessionsLink());
      root.appendChild(bar);
      announce(absolute ? "Your session ends in about " + Math.ceil(remaining / 60) + " minutes. Sign in again to keep working."
                        : "You will be signed out in about " + Math.ceil(remaining / 60) + " minutes because of inactivity.");
    }
    bar.querySelector("p").textContent = absolute
      ? "Your session ends in " + clock(remaining) + ". Sign in again to keep working."
      : "You will be signed out in " + clock(remaining) + " because of inactivity.";
    bar.querySelector("button").textContent = absolute ? "Sign in again" : "Stay signed in";
    if (!ticker) ticker = setInterval(render, 1000);
  }
  function hideBar() {
    if (ticker) { clearInterval(ticker); ticker = null; }
    if (bar) { bar.remove(); bar = null; }
  }

  // -- the overlay -----------------------------------------------------------------------
  function showOverlay(reason) {
    attach();
    hideOverlay();
    returnFocus = document.activeElement;
    // The page behind is out of reach (keyboard, pointer, screen readers)
    // while the dialog is up.
    Array.prototype.forEach.call(document.body ? document.body.children : [], function (node) {
      if (node !== host && !node.inert) { node.inert = true; madeInert.push(node); }
    });
    overlay = el("div", { "class": "backdrop" });
    var dialog = el("div", { "class": "dialog", role: "alertdialog", "aria-modal": "true",
                             "aria-labelledby": "gm-title", "aria-describedby": "gm-reason" });
    dialog.appendChild(el("h2", { id: "gm-title" }, "You have been signed out"));
    dialog.appendChild(el("p", { id: "gm-reason" }, reason || "Your session has ended."));
    dialog.appendChild(el("p", { "class": "muted" }, "Your work on this page is still here. Sign in again in the window that opens, then carry on."));
    var row = el("div", { "class": "row" });
    var again = el("button", { type: "button" }, "Sign in again");
    again.addEventListener("click", signIn);
    row.appendChild(again);
    row.appendChild(sessionsLink());
    dialog.appendChild(row);
    var blocked = el("p", { "data-blocked": "", "class": "muted" }, "Your browser blocked the sign-in window. ");
    blocked.hidden = true;
    blocked.appendChild(el("a", { href: prefix + "/login?rd=" + encodeURIComponent(prefix + "/monitor/signed-in"),
                                  target: "_blank", rel: "opener" }, "Open the sign-in page in a new tab"));
    dialog.appendChild(blocked);
    overlay.appendChild(dialog);
    // Keep the keyboard inside the dialog while it is up.
    overlay.addEventListener("keydown", function (event) {
      if (event.key !== "Tab") return;
      var stops = Array.prototype.filter.call(dialog.querySelectorAll("button, a"), function (n) { return !n.closest("[hidden]"); });
      var first = stops[0], last = stops[stops.length - 1];
      var active = root.activeElement || document.activeElement;
      if (event.shiftKey && active === first) { last.focus(); event.preventDefault(); }
      else if (!event.shiftKey && active === last) { first.focus(); event.preventDefault(); }
    });
    root.appendChild(overlay);
    again.focus();
  }
  function hideOverlay() {
    if (!overlay) return;
    overlay.remove();
    overlay = null;
    madeInert.forEach(function (node) { node.inert = false; });
    madeInert = [];
    if (returnFocus && returnFocus.focus) returnFocus.focus();
    returnFocus = null;
  }

  // -- security alerts ---------------------------------------------------------------------
  function showAlerts(alerts) {
    var seen = seenAlerts();
    var unseen = alerts.filter(function (a) { return seen.indexOf(a.id) < 0; });
    if (!unseen.length) return;
    markSeen(seen.concat(unseen.map(function (a) { return a.id; })));
    // A sign-in's own alerts are not news on the device that signed in.
    var fresh = unseen.filter(function (a) { return !a.current; });
    if (!fresh.length) return;
    attach();
    if (toast) toast.remove();
    toast = el("div", { "class": "toast", role: "status" });
    toast.appendChild(el("h2", {}, "Security alert"));
    fresh.slice(0, 3).forEach(function (a) { toast.appendChild(el("p", {}, a.message)); });
    var row = el("div", { "class": "row" });
    var ok = el("button", { type: "button", "class": "plain" }, "Dismiss");
    ok.addEventListener("click", function () { toast.remove(); toast = null; });
    row.appendChild(ok);
    var review = sessionsLink();
    review.textContent = "Not you? Review your sessions";
    row.appendChild(review);
    toast.appendChild(row);
    root.appendChild(toast);
  }

  // -- holding the page's requests while signed out -----------------------------------------
  var HELD_MAX = 100;
  function signedInAgain(signal) {
    return new Promise(function (resume, fail) {
      if (signal && signal.aborted) { fail(signal.reason); return; }
      var held = { at: Date.now(), resume: resume };
      waiting.push(held);
      if (signal) signal.addEventListener("abort", function () {
        var i = waiting.indexOf(held);
        if (i >= 0) waiting.splice(i, 1);
        fail(signal.reason);
      }, { once: true });
    });
  }
  // A body that can be sent twice: none, or data (not a stream).
  function replayable(input, init) {
    var body = init && init.body;
    if (body === undefined || body === null) {
      return !(input instanceof Request) || input.body === null;
    }
    return typeof body === "string" || body instanceof Blob || body instanceof FormData ||
      body instanceof URLSearchParams || body instanceof ArrayBuffer || ArrayBuffer.isView(body);
  }
  function sameOrigin(input) {
    try {
      return new URL(input instanceof Request ? input.url : String(input), location.href).origin === location.origin;
    } catch (e) { return false; }
  }
  window.fetch = function (input, init) {
    // Decided before anything touches the request: building a Request from
    // one with a body uses that body up.
    if (!sameOrigin(input) || !replayable(input, init) || waiting.length >= HELD_MAX) {
      return send(input, init);          // exactly as the app asked
    }
    var request;
    try { request = new Request(input, init); } catch (e) { return send(input, init); }
    var retry = request.clone();         // before sending reads the body
    if (ended) return signedInAgain(request.signal).then(function () { return send(retry); });
    return send(request).then(function (response) {
      // Only the gateway's own refusal: the upstream never saw the request.
      if (response.status !== 401 || response.headers.get("Gateway-Refusal") !== "session") {
        return response;
      }
      check();                           // see the end now, not at the next look
      return signedInAgain(request.signal).then(function () { return send(retry); });
    });
  };

  check();
})();
