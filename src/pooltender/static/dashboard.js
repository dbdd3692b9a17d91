// pooltender dashboard: polls <path>/data and redraws inline-SVG charts. No dependencies.
// Every figure is written with textContent / attributes (never innerHTML): server data such
// as user names and query text cannot inject markup.
(function () {
  "use strict";
  var SVG = "http://www.w3.org/2000/svg";
  var body = document.body;
  var dataUrl = body.dataset.url;
  var intervalMs = Math.max(250, parseFloat(body.dataset.interval || "2") * 1000);
  var historyLen = parseInt(body.dataset.history || "90", 10);
  var series = {}; // engine -> [{t, checked_out, size, cap}]
  var polls = 0;
  var STATE_COLORS = {
    active: "#2f7ed8",
    "idle in transaction": "#e4572e",
    "idle in transaction (aborted)": "#b8261b",
    idle: "#8fbf5a",
    sleep: "#8fbf5a",
  };
  var PALETTE = ["#2f7ed8", "#8fbf5a", "#f2a541", "#9b5de5", "#00b8a9", "#e4572e", "#6c757d",
    "#f15bb5", "#4d908e", "#c9a227"];

  function el(tag, attrs, text) {
    var node = document.createElement(tag);
    setAttrs(node, attrs);
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }
  function svg(tag, attrs, text) {
    var node = document.createElementNS(SVG, tag);
    setAttrs(node, attrs);
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }
  function setAttrs(node, attrs) {
    if (!attrs) return;
    Object.keys(attrs).forEach(function (k) {
      if (attrs[k] !== undefined && attrs[k] !== null) node.setAttribute(k, String(attrs[k]));
    });
  }
  function swatch(color) {
    var node = el("span", { class: "swatch" });
    node.style.background = color; // CSSOM, which the page's CSP allows (style="" it would not)
    return node;
  }
  function clear(node) {
    while (node.firstChild) node.removeChild(node.firstChild);
    return node;
  }
  function colorFor(group, key, i) {
    if (group === "state" && STATE_COLORS[key]) return STATE_COLORS[key];
    return PALETTE[i % PALETTE.length];
  }
  function ms(seconds) {
    var v = seconds * 1000;
    if (v === 0) return "0 ms";
    if (v < 1) return v.toFixed(2) + " ms";
    if (v < 100) return v.toFixed(1) + " ms";
    return Math.round(v) + " ms";
  }
  function duration(seconds) {
    if (seconds === null || seconds === undefined) return "";
    var s = Math.round(seconds);
    if (s < 120) return s + " s";
    if (s < 7200) return Math.floor(s / 60) + " min";
    return (s / 3600).toFixed(1) + " h";
  }
  function setMetric(name, value, text) {
    var nodes = document.querySelectorAll('[data-metric="' + name + '"]');
    for (var i = 0; i < nodes.length; i++) {
      nodes[i].dataset.value = value === null || value === undefined ? "" : String(value);
      nodes[i].textContent = text !== undefined ? text : (value === null ? "?" : String(value));
    }
  }
  function sortedEntries(obj) {
    return Object.keys(obj || {}).map(function (k) { return [k, obj[k]]; })
      .sort(function (a, b) { return b[1] - a[1] || (a[0] < b[0] ? -1 : 1); });
  }

  // ---------------------------------------------------------------- server charts

  function drawCapacity(server) {
    var box = clear(document.querySelector('[data-chart="capacity"]'));
    var W = 1100, H = 64, x0 = 10, w = W - 40;
    var max = server.max_connections || 0;
    var states = sortedEntries(server.groups ? server.groups.state : {});
    var total = states.reduce(function (s, e) { return s + e[1]; }, 0);
    var scale = Math.max(max, total, 1);
    var root = svg("svg", { viewBox: "0 0 " + W + " " + H, class: "capacity", role: "img" });
    root.appendChild(svg("rect", { x: x0, y: 14, width: w, height: 26, class: "track" }));
    var x = x0;
    states.forEach(function (e, i) {
      var width = (e[1] / scale) * w;
      var seg = svg("rect", { x: x, y: 14, width: Math.max(width, e[1] ? 2 : 0), height: 26,
        fill: colorFor("state", e[0], i), "data-key": e[0], "data-value": e[1] });
      seg.appendChild(svg("title", null, e[0] + ": " + e[1]));
      root.appendChild(seg);
      x += width;
    });
    if (max) {
      var reserved = server.reserved_connections || 0;
      if (reserved) {
        var rx = x0 + ((max - reserved) / scale) * w;
        root.appendChild(svg("line", { x1: rx, x2: rx, y1: 8, y2: 46, class: "reserved" }));
        root.appendChild(svg("text", { x: rx - 6, y: 11, "text-anchor": "end", class: "axis reserved-label" },
          reserved + " reserved from " + (max - reserved)));
      }
      var mx = x0 + (max / scale) * w;
      root.appendChild(svg("line", { x1: mx, x2: mx, y1: 4, y2: 50, class: "limit" }));
      root.appendChild(svg("text", { x: mx, y: 62, "text-anchor": "end", class: "axis limit-label" },
        "max_connections " + max));
    }
    root.appendChild(svg("text", { x: x0, y: 58, class: "axis" }, "0"));
    var pct = max ? Math.round((total / max) * 100) + "% of max_connections" : "max_connections unknown";
    root.appendChild(svg("text", { x: x0 + 4, y: 10, class: "axis" },
      total + " connections (" + pct + ")"));
    box.appendChild(root);
    var legend = el("ul", { class: "legend" });
    states.forEach(function (e, i) {
      var li = el("li", { "data-group": "state", "data-key": e[0], "data-value": e[1] });
      li.appendChild(swatch(colorFor("state", e[0], i)));
      li.appendChild(document.createTextNode(e[0] + " " + e[1]));
      legend.appendChild(li);
    });
    box.appendChild(legend);
  }

  function drawGroup(group, counts, max) {
    var box = clear(document.querySelector('[data-chart="group-' + group + '"]'));
    var entries = sortedEntries(counts).slice(0, 8);
    var rest = sortedEntries(counts).slice(8).reduce(function (s, e) { return s + e[1]; }, 0);
    if (rest) entries.push(["(others)", rest]);
    if (!entries.length) { box.appendChild(el("p", { class: "muted" }, "none")); return; }
    var top = entries.reduce(function (m, e) { return Math.max(m, e[1]); }, 1);
    var rowH = 20, W = 260, labelW = 110, barW = W - labelW - 60;
    var root = svg("svg", { viewBox: "0 0 " + W + " " + entries.length * rowH, class: "bars", role: "img" });
    entries.forEach(function (e, i) {
      var y = i * rowH;
      var g = svg("g", { "data-group": group, "data-key": e[0], "data-value": e[1] });
      var label = e[0].length > 15 ? e[0].slice(0, 14) + "\u2026" : e[0];
      g.appendChild(svg("text", { x: labelW - 6, y: y + 14, "text-anchor": "end", class: "label" }, label));
      g.appendChild(svg("rect", { x: labelW, y: y + 3, width: Math.max(2, (e[1] / top) * barW),
        height: rowH - 6, fill: colorFor(group, e[0], i) }));
      var share = max ? " \u00b7 " + Math.round((e[1] / max) * 100) + "%" : "";
      g.appendChild(svg("text", { x: labelW + (e[1] / top) * barW + 5, y: y + 14, class: "value" },
        e[1] + share));
      g.appendChild(svg("title", null, e[0] + ": " + e[1] + (max ? " of max_connections " + max : "")));
      root.appendChild(g);
    });
    box.appendChild(root);
  }

  function drawConnections(server) {
    var box = clear(document.getElementById("connections"));
    var conns = (server.connections || []).slice();
    conns.sort(function (a, b) { return (b.seconds_in_state || 0) - (a.seconds_in_state || 0); });
    var shown = conns.slice(0, 12);
    var table = el("table", { class: "conns" });
    var head = el("tr");
    ["id", "user", "host", "database", "state", "in state", "xact age", "query"].forEach(function (h) {
      head.appendChild(el("th", null, h));
    });
    table.appendChild(el("thead")).appendChild(head);
    var tbody = table.appendChild(el("tbody"));
    shown.forEach(function (c) {
      var tr = el("tr", { "data-conn-id": c.id, class: c.is_self ? "self" : (c.kind !== "client" ? "system" : "") });
      tr.appendChild(el("td", null, c.id + (c.is_self ? " (this)" : "")));
      tr.appendChild(el("td", null, c.user));
      tr.appendChild(el("td", null, c.host));
      tr.appendChild(el("td", null, c.database));
      var st = el("td", { class: "state" });
      st.appendChild(swatch((STATE_COLORS[c.state] || "#bbb")));
      st.appendChild(document.createTextNode(c.state || c.command || ""));
      tr.appendChild(st);
      tr.appendChild(el("td", { class: "num" }, duration(c.seconds_in_state)));
      tr.appendChild(el("td", { class: "num" }, duration(c.transaction_age)));
      tr.appendChild(el("td", { class: "query" }, c.query || ""));
      tbody.appendChild(tr);
    });
    box.appendChild(table);
    if (conns.length > shown.length) {
      box.appendChild(el("p", { class: "muted" }, (conns.length - shown.length) + " more not shown"));
    }
  }

  function drawServer(data) {
    var server = data.server;
    var status = document.getElementById("status");
    if (data.pool_only) {  // an embedded database (SQLite): no server panel, and that is fine
      status.className = "status pool-only";
      status.textContent = "pool only";
      return;
    }
    if (!server) {
      status.className = "status down";
      status.textContent = data.server_error || "no server snapshot";
      return;
    }
    status.className = "status ok";
    status.textContent = "live";
    document.getElementById("server-id").textContent =
      server.backend + " " + (server.server_version || "") + " \u00b7 " + (server.url || "");
    setMetric("server.clients", server.client_count);
    setMetric("server.max_connections", server.max_connections);
    drawCapacity(server);
    var groups = server.groups || {};
    ["state", "user", "host", "database"].forEach(function (g) {
      drawGroup(g, groups[g] || {}, server.max_connections);
    });
    drawConnections(server);
  }

  // ---------------------------------------------------------------- pool charts

  function poolBlock(name) {
    var pools = document.getElementById("pools");
    var block = pools.querySelector('[data-engine="' + CSS.escape(name) + '"]');
    if (block) return block;
    var muted = pools.querySelector("p.muted");
    if (muted) pools.removeChild(muted);
    block = el("div", { class: "pool", "data-engine": name });
    var h = el("h3", null, "engine ");
    h.appendChild(el("code", null, name));
    block.appendChild(h);
    var dl = el("dl", { class: "figures" });
    [["checked out", "checked_out"], ["idle", "idle"], ["pool size", "pool_size"],
      ["overflow", "overflow"], ["high water", "high_water"], ["timeouts", "timeouts"]].forEach(function (f) {
      var d = el("div");
      d.appendChild(el("dt", null, f[0]));
      d.appendChild(el("dd", { "data-metric": "pool." + name + "." + f[1] }));
      dl.appendChild(d);
    });
    block.appendChild(dl);
    block.appendChild(el("div", { class: "chart", "data-chart": "series-" + name }));
    pools.appendChild(block);
    return block;
  }

  function drawSeries(name, points) {
    var box = clear(document.querySelector('[data-chart="series-' + CSS.escape(name) + '"]'));
    var W = 520, H = 150, left = 30, right = 10, top = 10, bottom = 22;
    var last = points[points.length - 1];
    var ymax = Math.max(1, last.cap || 0, last.size || 0,
      points.reduce(function (m, p) { return Math.max(m, p.checked_out); }, 0));
    var slots = Math.max(points.length, 2); // stretched until the history is full, then scrolls
    function px(i) { return left + (i / (slots - 1)) * (W - left - right); }
    function py(v) { return top + (1 - v / ymax) * (H - top - bottom); }
    var root = svg("svg", { viewBox: "0 0 " + W + " " + H, class: "series", role: "img",
      "data-points": points.length, "data-last": last.checked_out });
    root.appendChild(svg("rect", { x: left, y: top, width: W - left - right, height: H - top - bottom, class: "plot" }));
    [[last.size, "pool_size", "size-line"], [last.cap, "size + overflow", "cap-line"]].forEach(function (l) {
      if (l[0] === null || l[0] === undefined) return;
      root.appendChild(svg("line", { x1: left, x2: W - right, y1: py(l[0]), y2: py(l[0]), class: l[2] }));
      var ly = py(l[0]) - 3 < top + 10 ? py(l[0]) + 12 : py(l[0]) - 3;
      root.appendChild(svg("text", { x: W - right - 4, y: ly, "text-anchor": "end", class: "axis" },
        l[1] + " " + l[0]));
    });
    root.appendChild(svg("text", { x: left - 4, y: py(0) + 4, "text-anchor": "end", class: "axis" }, "0"));
    root.appendChild(svg("text", { x: left - 4, y: py(ymax) + 8, "text-anchor": "end", class: "axis" }, ymax));
    var pts = points.map(function (p, i) { return px(i).toFixed(1) + "," + py(p.checked_out).toFixed(1); });
    var area = "M" + px(0).toFixed(1) + "," + py(0) + " L" + pts.join(" L") + " L" +
      px(points.length - 1).toFixed(1) + "," + py(0) + " Z";
    root.appendChild(svg("path", { d: area, class: "area" }));
    root.appendChild(svg("polyline", { points: pts.join(" "), class: "line" }));
    root.appendChild(svg("circle", { cx: px(points.length - 1), cy: py(last.checked_out), r: 3.5, class: "dot" }));
    root.appendChild(svg("text", { x: left, y: H - 6, class: "axis" },
      "checked out, last " + points.length + " polls (" + Math.round(points.length * intervalMs / 1000) + " s)"));
    box.appendChild(root);
  }

  function drawPools(data) {
    var latency = clear(document.getElementById("latency"));
    var leaks = clear(document.getElementById("leaks"));
    var anyLeak = false;
    Object.keys(data.pool || {}).sort().forEach(function (name) {
      var p = data.pool[name];
      poolBlock(name);
      var prefix = "pool." + name + ".";
      setMetric(prefix + "checked_out", p.checked_out);
      setMetric(prefix + "idle", p.idle);
      setMetric(prefix + "pool_size", p.pool_size);
      setMetric(prefix + "overflow", p.overflow_in_use, (p.overflow_in_use === null ? "–" : p.overflow_in_use) +
        " / " + (p.max_overflow === null ? "–" : p.max_overflow));
      setMetric(prefix + "high_water", p.high_water_checked_out);
      setMetric(prefix + "timeouts", p.checkout_timeouts);
      var cap = p.pool_size === null ? null : p.pool_size + Math.max(p.max_overflow || 0, 0);
      var s = series[name] || (series[name] = []);
      s.push({ t: data.taken_at, checked_out: p.checked_out, size: p.pool_size, cap: cap });
      while (s.length > historyLen) s.shift();
      drawSeries(name, s);
      latency.appendChild(drawLatency(name, p));
      var reports = (p.leaks || []).slice().reverse(); // most recent first
      if (reports.length > 6) {
        leaks.appendChild(el("p", { class: "muted" }, "engine " + name + ": latest 6 of " + reports.length));
      }
      reports.slice(0, 6).forEach(function (leak) {
        anyLeak = true;
        var item = el("li", { "data-leak-where": leak.where });
        item.appendChild(el("code", null, leak.where));
        item.appendChild(document.createTextNode(" held " + leak.held_s.toFixed(1) + " s by " +
          leak.thread + " (engine " + name + ")"));
        (leaks.querySelector("ul") || leaks.appendChild(el("ul", { class: "leaklist" }))).appendChild(item);
      });
      var counters = el("p", { class: "counters" });
      [["leaks reported", p.leaks_reported, "leaks"], ["returned late", p.leaks_returned, "leaks_returned"],
        ["second checkouts", p.second_checkouts, "second_checkouts"],
        ["checkout timeouts", p.checkout_timeouts, "checkout_timeouts"]].forEach(function (c) {
        var span = el("span", { class: c[1] ? "bad" : "", "data-metric": prefix + c[2], "data-value": c[1] },
          c[0] + ": " + c[1]);
        counters.appendChild(span);
      });
      leaks.insertBefore(counters, leaks.firstChild);
    });
    if (!anyLeak) leaks.appendChild(el("p", { class: "muted" }, "No connection held past the leak threshold."));
  }

  function drawLatency(name, p) {
    var wrap = el("div", { class: "latency", "data-engine": name });
    wrap.appendChild(el("h3", null, "engine " + name));
    var rows = [
      ["wait p50", p.checkout_wait.p50_s, "wait_p50", "#8fbf5a"],
      ["wait p99", p.checkout_wait.p99_s, "wait_p99", "#f2a541"],
      ["hold p50", p.hold_time.p50_s, "hold_p50", "#2f7ed8"],
      ["hold p99", p.hold_time.p99_s, "hold_p99", "#9b5de5"],
    ];
    var top = rows.reduce(function (m, r) { return Math.max(m, r[1]); }, 0) || 1;
    var W = 520, rowH = 24, labelW = 70, barW = W - labelW - 90;
    var root = svg("svg", { viewBox: "0 0 " + W + " " + rows.length * rowH, class: "bars", role: "img" });
    rows.forEach(function (r, i) {
      var y = i * rowH;
      var g = svg("g", { "data-metric": "pool." + name + "." + r[2], "data-value": r[1] });
      g.appendChild(svg("text", { x: labelW - 6, y: y + 16, "text-anchor": "end", class: "label" }, r[0]));
      var width = Math.max(2, (r[1] / top) * barW);
      g.appendChild(svg("rect", { x: labelW, y: y + 4, width: width, height: rowH - 8, fill: r[3] }));
      g.appendChild(svg("text", { x: labelW + width + 5, y: y + 16, class: "value" }, ms(r[1])));
      root.appendChild(g);
    });
    wrap.appendChild(root);
    wrap.appendChild(el("p", { class: "muted" }, p.checkout_wait.count + " checkouts timed" +
      (p.wait_measured ? "" : " (wait not measured on this pool class)") + ", " + p.hold_time.count + " returned"));
    return wrap;
  }

  // ---------------------------------------------------------------- loop

  function drawAdmission(adm) {
    var line = clear(document.getElementById("admission-line"));
    if (!adm || !adm.enabled) { line.textContent = "admission control off"; return; }
    [["limit ", "limit", adm.limit], [" (" + adm.algorithm + ") \u00b7 in flight ", "in_flight", adm.in_flight],
      [" \u00b7 queue ", "queue_length", adm.queue_length], [" \u00b7 shed ", "shed_total", adm.shed_total]].forEach(function (p) {
      line.appendChild(document.createTextNode(p[0]));
      line.appendChild(el("span", { "data-metric": "admission." + p[1], "data-value": p[2] }, p[2]));
    });
    if (adm.standing) line.appendChild(el("span", { class: "bad" }, " \u00b7 standing queue (LIFO)"));
    line.appendChild(document.createTextNode(" \u00b7 wait p99 " + ms(adm.queue_wait.p99_s)));
  }

  function render(data) {
    drawServer(data);
    drawPools(data);
    drawAdmission(data.admission);
    polls += 1;
    body.dataset.polls = String(polls);
    body.dataset.takenAt = String(data.taken_at);
    document.getElementById("updated").textContent =
      "updated " + new Date(data.taken_at * 1000).toLocaleTimeString();
  }

  function poll() {
    fetch(dataUrl, { cache: "no-store", credentials: "same-origin" })
      .then(function (r) {
        if (!r.ok) throw new Error("HTTP " + r.status);
        return r.json();
      })
      .then(render)
      .catch(function (err) {
        var status = document.getElementById("status");
        status.className = "status down";
        status.textContent = "dashboard unreachable: " + err.message;
      })
      .then(function () { setTimeout(poll, intervalMs); });
  }

  var initial = document.getElementById("initial-data");
  try {
    render(JSON.parse(initial.textContent));
  } catch (err) {
    document.getElementById("status").textContent = "render error: " + err.message;
  }
  setTimeout(poll, intervalMs);
})();
