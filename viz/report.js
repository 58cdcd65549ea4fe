/* depengine report: the interactive timeline and its links with the graph and the tables.
   Data comes from the inert JSON element; user text is only ever set with textContent. */
(function () {
  "use strict";
  var D = JSON.parse(document.getElementById("depengine-data").textContent);
  var O = D.op, N = O.id.length, L = D.lanes.length;
  var STATES = ["done", "failed", "skipped"], KINDS = ["RAW", "WAR", "WAW"];
  var CRITICAL = "#c0392b", SELECT = "#1f77ff";
  var LEFT = 190, TOP = 24, LH = 18, LG = 4, MAX_ARROWS = 4000;

  // ---- lanes: op indices by start, and the latest end reached so far (for binary search)
  var laneOps = [], reach = [], i, l, k;
  for (l = 0; l < L; l++) laneOps.push([]);
  for (i = 0; i < N; i++) laneOps[O.lane[i]].push(i);
  for (l = 0; l < L; l++) {
    var ops = laneOps[l];
    ops.sort(function (a, b) { return O.start[a] - O.start[b] || a - b; });
    var r = new Float64Array(ops.length), m = -Infinity;
    for (k = 0; k < ops.length; k++) { m = Math.max(m, O.end[ops[k]]); r[k] = m; }
    reach.push(r);
  }
  var waitThreads = [], waitsOf = {};
  D.waits.forEach(function (w) {
    if (!(w.thread in waitsOf)) { waitsOf[w.thread] = []; waitThreads.push(w.thread); }
    waitsOf[w.thread].push(w);
  });

  // ---- dependencies as edge lists per op
  var E = D.edges, M = E.src.length, preds = [], succs = [], crossEdges = [];
  for (i = 0; i < N; i++) { preds.push([]); succs.push([]); }
  for (k = 0; k < M; k++) {
    preds[E.dst[k]].push(k); succs[E.src[k]].push(k);
    if (E.cross[k]) crossEdges.push(k);
  }
  var onPath = new Uint8Array(N);
  D.critical.forEach(function (j) { onPath[j] = 1; });
  var nodeIndex = {};
  D.nodes.forEach(function (id, n) { nodeIndex[id] = n; });

  // ---- view state
  var canvas = document.getElementById("timeline"), ctx = canvas.getContext("2d");
  var tip = document.getElementById("tooltip"), details = document.getElementById("details");
  var W = 0, H = 0, t0 = 0, t1 = Math.max(1, D.wall * 1.01), scrollY = 0;
  var selected = [], selectedSet = new Set(), drawnBars = 0, firstRenderMs = null, pending = false;
  var showCritical = true, showArrows = true;

  function rows() { return L + waitThreads.length; }
  function plotW() { return Math.max(10, W - LEFT - 10); }
  function X(t) { return LEFT + (t - t0) / (t1 - t0) * plotW(); }
  function T(x) { return t0 + (x - LEFT) / plotW() * (t1 - t0); }
  function laneY(row) { return TOP + row * (LH + LG) - scrollY; }
  function fmt(ns) {
    var a = Math.abs(ns);
    if (a >= 1e9) return (ns / 1e9).toPrecision(3) + " s";
    if (a >= 1e6) return (ns / 1e6).toPrecision(3) + " ms";
    if (a >= 1e3) return (ns / 1e3).toPrecision(3) + " us";
    return Math.round(ns) + " ns";
  }
  function opColor(j) { return O.state[j] === 2 ? "#cccccc" : D.colors[O.name[j]]; }

  function resize() {
    var dpr = window.devicePixelRatio || 1;
    W = canvas.clientWidth || 1000;
    H = Math.max(80, Math.min(TOP + rows() * (LH + LG) + 10, Math.round(window.innerHeight * 0.7) || 600));
    canvas.style.height = H + "px";
    canvas.width = Math.round(W * dpr); canvas.height = Math.round(H * dpr);
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    scrollY = Math.max(0, Math.min(scrollY, TOP + rows() * (LH + LG) + 10 - H));
  }

  function firstVisible(row, t) {  // first op of the lane whose reach is at or after t
    var r = reach[row], lo = 0, hi = r.length;
    while (lo < hi) { var mid = (lo + hi) >> 1; if (r[mid] < t) lo = mid + 1; else hi = mid; }
    return lo;
  }

  function niceStep(raw) {
    var p = Math.pow(10, Math.floor(Math.log10(Math.max(raw, 1e-9))));
    return [1, 2, 5, 10].map(function (f) { return f * p; }).find(function (s) { return s >= raw; });
  }

  function draw() {
    pending = false;
    drawnBars = 0;
    ctx.clearRect(0, 0, W, H);
    ctx.font = "11px sans-serif";
    ctx.textBaseline = "middle";
    var step = niceStep((t1 - t0) / 8), t = Math.ceil(t0 / step) * step;
    ctx.fillStyle = "#555"; ctx.strokeStyle = "#e4e4e4";
    for (; t <= t1; t += step) {
      var x = X(t);
      ctx.beginPath(); ctx.moveTo(x, TOP - 4); ctx.lineTo(x, H); ctx.stroke();
      ctx.fillText(fmt(t), x + 2, 10);
    }
    for (var row = 0; row < rows(); row++) {
      var y = laneY(row);
      if (y + LH < TOP || y > H) continue;
      ctx.fillStyle = row < L ? "#f6f6f6" : "#fbfbf0";
      ctx.fillRect(LEFT, y, plotW(), LH);
      if (row < L) drawLane(row, y); else drawWaits(waitThreads[row - L], y);
    }
    ctx.save(); ctx.beginPath(); ctx.rect(LEFT, TOP, plotW(), H - TOP); ctx.clip();
    if (showArrows) crossEdges.slice(0, MAX_ARROWS).forEach(function (e) { arrow(e, "rgba(60,60,60,0.55)", 1); });
    selected.forEach(function (j) {
      preds[j].forEach(function (e) { arrow(e, SELECT, 1.5); });
      succs[j].forEach(function (e) { arrow(e, SELECT, 1.5); });
    });
    ctx.restore();
    ctx.fillStyle = "#fff"; ctx.fillRect(0, TOP, LEFT - 4, H);
    ctx.fillStyle = "#222"; ctx.textAlign = "right";
    for (row = 0; row < rows(); row++) {
      y = laneY(row);
      if (y + LH < TOP || y > H) continue;
      var label = row < L ? D.lanes[row].label : "waits: " + waitThreads[row - L];
      if (label.length > 28) label = label.slice(0, 27) + "\u2026";
      ctx.fillText(label, LEFT - 8, y + LH / 2);
    }
    ctx.textAlign = "left";
    if (firstRenderMs === null) firstRenderMs = performance.now();
  }

  function drawLane(row, y) {
    var ops = laneOps[row], lastX = -1;
    for (var n = firstVisible(row, t0); n < ops.length; n++) {
      var j = ops[n];
      if (O.start[j] > t1) break;
      var x0 = Math.max(X(O.start[j]), LEFT), x1 = X(O.end[j]);
      if (x1 < LEFT) continue;
      var w = x1 - x0;
      if (w < 1) { if (x0 < lastX) continue; w = 1; }  // sub-pixel ops share a pixel: one bar
      ctx.fillStyle = opColor(j);
      ctx.fillRect(x0, y + 2, w, LH - 4);
      drawnBars++;
      lastX = x0 + w;
      if (O.state[j] === 1 || (showCritical && onPath[j]) || selectedSet.has(j)) {
        ctx.strokeStyle = selectedSet.has(j) ? SELECT : (O.state[j] === 1 ? "red" : CRITICAL);
        ctx.lineWidth = selectedSet.has(j) ? 3 : 2;
        ctx.strokeRect(x0, y + 2, Math.max(w, 2), LH - 4);
        ctx.lineWidth = 1;
      }
    }
  }

  function drawWaits(thread, y) {
    ctx.fillStyle = "#bbbbbb";
    waitsOf[thread].forEach(function (w) {
      if (w.end < t0 || w.start > t1) return;
      var x0 = Math.max(X(w.start), LEFT);
      ctx.fillRect(x0, y + 5, Math.max(1, X(w.end) - x0), LH - 10);
    });
  }

  function arrow(e, color, width) {
    var s = E.src[e], d = E.dst[e];
    var xa = X(O.end[s]), xb = X(O.start[d]);
    if (Math.max(xa, xb) < LEFT || Math.min(xa, xb) > W) return;
    var ya = laneY(O.lane[s]) + LH / 2, yb = laneY(O.lane[d]) + LH / 2;
    ctx.strokeStyle = color; ctx.fillStyle = color; ctx.lineWidth = width;
    ctx.beginPath(); ctx.moveTo(xa, ya); ctx.lineTo(xb, yb); ctx.stroke();
    var a = Math.atan2(yb - ya, xb - xa);
    ctx.beginPath(); ctx.moveTo(xb, yb);
    ctx.lineTo(xb - 6 * Math.cos(a - 0.4), yb - 6 * Math.sin(a - 0.4));
    ctx.lineTo(xb - 6 * Math.cos(a + 0.4), yb - 6 * Math.sin(a + 0.4));
    ctx.fill(); ctx.lineWidth = 1;
  }

  function redraw() { if (!pending) { pending = true; requestAnimationFrame(draw); } }

  // ---- reading the page: what is where, and what an op is
  function rectOf(j) {
    var x0 = Math.max(X(O.start[j]), LEFT), x1 = X(O.end[j]);
    return { x: x0, y: laneY(O.lane[j]) + 2, w: Math.max(1, x1 - x0), h: LH - 4 };
  }
  function opAt(x, y) {
    var row = Math.floor((y + scrollY - TOP) / (LH + LG));
    if (row < 0 || row >= L || x < LEFT) return -1;
    var t = T(x), tol = 3 * (t1 - t0) / plotW(), ops = laneOps[row], best = -1, bestD = Infinity;
    for (var n = firstVisible(row, t - tol); n < ops.length && O.start[ops[n]] <= t + tol; n++) {
      var j = ops[n], d = t < O.start[j] ? O.start[j] - t : (t > O.end[j] ? t - O.end[j] : 0);
      if (d < bestD || (d === bestD && d === 0)) { best = j; bestD = d; }
    }
    return bestD <= tol ? best : -1;
  }
  function access(j, write) {
    var out = [];
    for (var n = D.rw.off[j]; n < D.rw.off[j + 1]; n++) {
      if (D.rw.w[n] === write) out.push(D.vars[D.rw.var[n]] + "@v" + D.rw.ver[n]);
    }
    return out.join(", ") || "-";
  }
  function edgeText(e, other) {
    return "#" + O.id[other] + " " + D.names[O.name[other]] + " (" + D.vars[E.var[e]] + "@v" + E.ver[e] +
      " " + KINDS[E.kind[e]] + ")";
  }
  function describe(j) {
    var w = D.waited[j], lines = [
      "#" + O.id[j] + " " + D.names[O.name[j]] + "  [" + STATES[O.state[j]] + "]",
      D.lanes[O.lane[j]].label + " \u00b7 " + D.lanes[O.lane[j]].device + " \u00b7 " + D.kinds[O.kind[j]] +
        (D.engines > 1 ? " \u00b7 engine " + O.engine[j] : ""),
      "start " + fmt(O.start[j]) + ", duration " + fmt(O.end[j] - O.start[j]) +
        ", queued " + fmt(Math.max(0, O.start[j] - O.ready[j])) + " (ready to start)",
      "reads " + access(j, 0), "writes " + access(j, 1),
      w < 0 ? "waited for: nothing (ready when pushed)"
        : "waited for: " + edgeText(w, E.src[w]) + ", which ended at " + fmt(O.end[E.src[w]])];
    if (D.op.error[j]) lines.push("error: " + D.op.error[j]);
    return lines.join("\n");
  }

  // ---- selection, shared with the graph and the tables
  function select(list, zoom) {
    selected = list.slice(0, 5000); selectedSet = new Set(selected);
    document.querySelectorAll("#graph g.node.selected").forEach(function (g) { g.classList.remove("selected"); });
    var nodes = new Set();
    selected.forEach(function (j) { if (O.node[j] >= 0) nodes.add(D.nodes[O.node[j]]); });
    nodes.forEach(function (id) {
      var g = document.getElementById(id);
      if (g) { g.classList.add("selected"); if (g.scrollIntoView) g.scrollIntoView({ block: "nearest", inline: "nearest" }); }
    });
    showDetails();
    if (zoom && selected.length) {
      var a = Infinity, b = -Infinity;
      selected.forEach(function (j) { a = Math.min(a, O.start[j]); b = Math.max(b, O.end[j]); });
      if (a < t0 || b > t1 || selected.length === 1) setView(a, b);
    }
    redraw();
  }
  function showDetails() {
    details.textContent = "";
    if (!selected.length) return;
    if (selected.length > 1) {
      var total = 0;
      selected.forEach(function (j) { total += O.end[j] - O.start[j]; });
      details.textContent = selected.length + " ops selected (" + D.names[O.name[selected[0]]] +
        "...), total " + fmt(total) + "\n";
      return;
    }
    var j = selected[0], pre = document.createElement("div");
    pre.textContent = describe(j);
    details.appendChild(pre);
    [["depends on", preds[j], E.src], ["needed by", succs[j], E.dst]].forEach(function (part) {
      if (!part[1].length) return;
      var div = document.createElement("div"); div.className = "deps";
      div.appendChild(document.createTextNode(part[0] + ": "));
      part[1].slice(0, 50).forEach(function (e, n) {
        var other = part[2][e], span = document.createElement("span");
        span.textContent = edgeText(e, other);
        span.addEventListener("click", function () { select([other], true); });
        if (n) div.appendChild(document.createTextNode("; "));
        div.appendChild(span);
      });
      if (part[1].length > 50) div.appendChild(document.createTextNode(" ... " + part[1].length + " in all"));
      details.appendChild(div);
    });
  }
  function setView(a, b) {
    var span = Math.max(b - a, 1000), pad = span * 0.6;
    t0 = a - pad; t1 = b + pad;
    redraw();
  }
  function zoom(factor, at) {
    var t = T(at === undefined ? LEFT + plotW() / 2 : at);
    var span = Math.max(100, (t1 - t0) * factor);
    t0 = t - (t - t0) / (t1 - t0) * span; t1 = t0 + span;
    redraw();
  }

  // ---- events
  var drag = null;
  canvas.addEventListener("mousemove", function (ev) {
    var x = ev.offsetX, y = ev.offsetY;
    if (drag) {
      var dt = (x - drag.x) / plotW() * (t1 - t0);
      t0 -= dt; t1 -= dt; scrollY = Math.max(0, scrollY - (y - drag.y));
      drag.moved = drag.moved || Math.abs(x - drag.x) + Math.abs(y - drag.y) > 2;
      drag.x = x; drag.y = y; resize(); redraw(); return;
    }
    var j = opAt(x, y);
    if (j < 0) { tip.hidden = true; return; }
    tip.textContent = describe(j);
    tip.hidden = false;
    tip.style.left = Math.min(x + 14, Math.max(0, W - 530)) + "px";
    tip.style.top = (y + 16) + "px";
  });
  canvas.addEventListener("mouseleave", function () { tip.hidden = true; drag = null; });
  canvas.addEventListener("mousedown", function (ev) { drag = { x: ev.offsetX, y: ev.offsetY, moved: false }; });
  canvas.addEventListener("mouseup", function (ev) {
    var moved = drag && drag.moved; drag = null;
    if (!moved) { var j = opAt(ev.offsetX, ev.offsetY); select(j < 0 ? [] : [j], false); }
  });
  canvas.addEventListener("dblclick", function (ev) {
    var j = opAt(ev.offsetX, ev.offsetY);
    if (j >= 0) setView(O.start[j], O.end[j]);
  });
  canvas.addEventListener("wheel", function (ev) {
    ev.preventDefault();
    if (ev.shiftKey) { scrollY = Math.max(0, scrollY + ev.deltaY); resize(); redraw(); return; }
    zoom(Math.exp(ev.deltaY * 0.0015), ev.offsetX);
  }, { passive: false });
  canvas.addEventListener("keydown", function (ev) {
    var pan = (t1 - t0) * 0.2;
    if (ev.key === "+" || ev.key === "=") zoom(0.7);
    else if (ev.key === "-") zoom(1 / 0.7);
    else if (ev.key === "0") { t0 = 0; t1 = Math.max(1, D.wall * 1.01); redraw(); }
    else if (ev.key === "ArrowLeft") { t0 -= pan; t1 -= pan; redraw(); }
    else if (ev.key === "ArrowRight") { t0 += pan; t1 += pan; redraw(); }
  });
  document.getElementById("zoom-in").addEventListener("click", function () { zoom(0.5); });
  document.getElementById("zoom-out").addEventListener("click", function () { zoom(2); });
  document.getElementById("zoom-reset").addEventListener("click", function () {
    t0 = 0; t1 = Math.max(1, D.wall * 1.01); scrollY = 0; redraw();
  });
  document.getElementById("show-critical").addEventListener("change", function (ev) {
    showCritical = ev.target.checked; redraw();
  });
  document.getElementById("show-arrows").addEventListener("change", function (ev) {
    showArrows = ev.target.checked; redraw();
  });
  document.getElementById("graph-actual").addEventListener("change", function (ev) {
    document.getElementById("graph").classList.toggle("actual", ev.target.checked);
  });
  var graph = document.querySelector("#graph svg");
  if (graph) graph.addEventListener("click", function (ev) {
    var g = ev.target.closest("g.node");
    if (!g || !(g.id in nodeIndex)) return;
    var n = nodeIndex[g.id], list = [];
    for (var j = 0; j < N; j++) if (O.node[j] === n) list.push(j);
    select(list, true);
  });
  document.querySelectorAll("tr.pick").forEach(function (tr) {
    tr.addEventListener("click", function () {
      var j = parseInt(tr.getAttribute("data-op"), 10);
      select([j], false);
      if (tr.hasAttribute("data-t0")) setView(Number(tr.getAttribute("data-t0")), O.end[j]);
      else setView(O.start[j], O.end[j]);
      canvas.scrollIntoView({ block: "nearest" });
    });
  });
  window.addEventListener("resize", function () { resize(); redraw(); });

  resize();
  var m0 = /^#op=(\d+)$/.exec(window.location.hash);
  if (m0 && +m0[1] < N) select([+m0[1]], true);
  draw();
  window.depengineReport = {
    rectOf: rectOf, opAt: opAt, select: function (j) { select([j], false); draw(); },
    selected: function () { return selected.slice(); }, describe: describe,
    drawnBars: function () { return drawnBars; }, firstRenderMs: function () { return firstRenderMs; },
    view: function () { return [t0, t1]; }, count: N
  };
})();
