// Device page: the preview refreshed about once a second, the figures every two seconds,
// the self-test on demand. Talks only to this device.
"use strict";
(function () {
  function el(tag, text, cls) {
    var e = document.createElement(tag);
    if (text !== undefined && text !== null) e.textContent = String(text);
    if (cls) e.className = cls;
    return e;
  }
  function rows(table, pairs) {
    table.textContent = "";
    pairs.forEach(function (p) {
      var tr = el("tr");
      tr.appendChild(el("th", p[0]));
      tr.appendChild(el("td", p[1]));
      table.appendChild(tr);
    });
  }
  function getJSON(url, done) {
    var x = new XMLHttpRequest();
    x.open("GET", url);
    x.onload = function () {
      if (x.status === 200) done(JSON.parse(x.responseText));
      else if (x.status === 401) window.location.href = "/login";
    };
    x.send();
  }

  var img = document.getElementById("preview");
  var frames = 0;
  if (img) {
    var next = function () { window.setTimeout(load, 1000); };
    var load = function () { img.src = "/preview.jpg?n=" + Date.now(); };
    img.addEventListener("load", function () {
      frames += 1;
      img.setAttribute("data-frames", String(frames));
      next();
    });
    img.addEventListener("error", next);
    load();  // the first picture may have loaded before this script ran
  }

  function fixed(v, n) { return (typeof v === "number") ? v.toFixed(n) : "-"; }
  function status(s) {
    var gps = s.gps;
    var g = document.getElementById("gps");
    if (gps) {
      var f = gps.fix || {};
      rows(g, [
        ["state", gps.state],
        ["position", (f.lat !== undefined) ? fixed(f.lat, 6) + ", " + fixed(f.lon, 6) : "no position"],
        ["time", f.time || "-"],
        ["speed", (f.speed !== undefined) ? fixed(f.speed * 3.6, 1) + " km/h" : "-"],
        ["fixes", "seen " + gps.seen + ", kept " + gps.kept]
      ]);
    } else {
      rows(g, [["gps", "not configured"]]);
    }
    var h = [["device", s.device + " (" + s.profile + ")"], ["uptime", fixed(s.uptime_s, 0) + " s"]];
    if (s.clock) h.push(["clock", s.clock.source + (s.clock.offset_s !== null && s.clock.offset_s !== undefined ? ", offset " + fixed(s.clock.offset_s, 3) + " s" : "")]);
    if (s.uplink) h.push(["uplink", s.uplink.connected ? "connected" : "DISCONNECTED"]);
    if (s.video) h.push(["camera", (s.video.recording ? "RECORDING" : "standby") + ", frames " + s.video.frames_captured + ", dropped " + s.video.frames_dropped]);
    if (s.audio) h.push(["microphone", s.audio.state + (s.audio.reason ? " (" + s.audio.reason + ")" : "")]);
    if (s.storage) h.push(["storage", "evidence " + (s.storage.evidence / 1e6).toFixed(1) + " MB, telemetry " + (s.storage.telemetry / 1e6).toFixed(1) + " MB"]);
    h.push(["CPU", s.cpu_temp_c !== null && s.cpu_temp_c !== undefined ? s.cpu_temp_c + " °C" : "-"]);
    h.push(["battery", s.battery_pct !== null && s.battery_pct !== undefined ? s.battery_pct + " %" : "-"]);
    var backlog = s.backlog || {};
    var names = Object.keys(backlog);
    h.push(["backlog", names.length ? names.map(function (k) { return k + " " + backlog[k].count; }).join(", ") : "none"]);
    if (s.error) h.push(["error", s.error]);
    rows(document.getElementById("health"), h);
  }
  function poll() { getJSON("/api/status", status); }
  poll();
  window.setInterval(poll, 2000);

  var box = document.getElementById("selftest");
  var state = document.getElementById("selftest-state");
  var button = document.getElementById("rerun");
  function showTest(t) {
    if (!box) return;
    state.textContent = t.running ? "running..." : (t.finished_utc ? "last run " + new Date(t.finished_utc * 1000).toISOString() : "not run since the agent started");
    if (button) button.disabled = !!t.running;
    if (t.running) window.setTimeout(loadTest, 500);
    box.textContent = "";
    var r = t.result;
    if (!r) return;
    // edge-agent selftest --json: {"ok", "counts", "items": [{"name", "status", "detail"}]}
    var checks = Array.isArray(r.items) ? r.items : (Array.isArray(r.checks) ? r.checks : null);
    if (checks) {
      var table = el("table", null, "segs");
      table.id = "selftest-items";
      checks.forEach(function (c) {
        var tr = el("tr");
        var st = String(c.status || (c.ok ? "PASS" : "FAIL")).toUpperCase();
        var cls = st === "PASS" ? "result-pass" : (st === "SKIP" ? "sub" : "result-fail");
        tr.appendChild(el("td", c.name || c.item || "?"));
        tr.appendChild(el("td", st, cls));
        tr.appendChild(el("td", c.detail || c.message || ""));
        table.appendChild(tr);
      });
      box.appendChild(table);
    } else {
      box.appendChild(el("pre", JSON.stringify(r, null, 1)));
    }
    if (r.error) box.insertBefore(el("p", r.error, "result-fail"), box.firstChild);
    if (r.ok !== undefined) box.insertBefore(el("p", r.ok ? "no check failed" : "SOME CHECKS FAIL", r.ok ? "result-pass" : "result-fail"), box.firstChild);
  }
  function loadTest() { getJSON("/api/selftest", showTest); }
  if (box) loadTest();
  if (button) {
    button.addEventListener("click", function () {
      var x = new XMLHttpRequest();
      x.open("POST", "/api/selftest");
      x.setRequestHeader("X-Edge-Agent", "1");
      x.onload = function () { if (x.status === 200) showTest(JSON.parse(x.responseText)); };
      x.send();
    });
  }
})();
