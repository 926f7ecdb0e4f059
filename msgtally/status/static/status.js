// The detail page's graphs: uPlot over graphs.json, redrawn every 5 seconds.
(function () {
  "use strict";
  var box = document.getElementById("graphs");
  if (!box || !window.uPlot) { return; }
  var charts = {};
  var colours = ["#1565c0", "#c62828", "#2e7d32", "#6a1b9a", "#ef6c00", "#00838f"];

  function width(id) { return Math.max(320, document.getElementById(id).clientWidth || 520); }

  function line(label, i, extra) {
    var s = { label: label, stroke: colours[i % colours.length], width: 1.5, spanGaps: false };
    for (var k in extra || {}) { s[k] = extra[k]; }
    return s;
  }

  function constant(t, v) { return t.map(function () { return v; }); }

  function draw(id, data, series, scale) {
    var opts = { width: width(id), height: 220, series: [{}].concat(series),
                 scales: { x: { time: true }, y: scale || {} }, legend: { live: true } };
    if (charts[id]) { charts[id].setData(data); return; }
    charts[id] = new uPlot(opts, data, document.getElementById(id));
  }

  function render(g) {
    var t = g.t;
    var success = [t, g.success];
    var sseries = [line("success", 0)];
    if (g.objective !== null) { success.push(constant(t, g.objective)); sseries.push(line("objective", 1, { dash: [6, 4] })); }
    draw("g-success", success, sseries);

    var b = g.burndown;
    draw("g-burndown", [b.t, b.left, b.ideal, b.forecast],
         [line("budget left", 0), line("ideal", 2, { dash: [2, 3] }), line("forecast", 1, { dash: [6, 4] })]);

    var burn = [t], bseries = [];
    g.burns.forEach(function (w, i) {
      burn.push(w.values); bseries.push(line(w.label + " (" + w.severity + ")", i));
      burn.push(constant(t, w.factor)); bseries.push(line(w.label + " threshold " + w.factor + "x", i, { dash: [4, 4], width: 1 }));
    });
    if (bseries.length) { draw("g-burn", burn, bseries); }

    draw("g-counts", [t, g.lost, g.duplicated, g.late, g.dead_lettered],
         [line("lost", 1), line("duplicated", 0), line("late", 4), line("dead-lettered", 3)]);

    var lat = [t, g.p50, g.p90, g.p99], lseries = [line("p50", 2), line("p90", 0), line("p99", 1)];
    if (g.threshold !== null) { lat.push(constant(t, g.threshold)); lseries.push(line("threshold", 3, { dash: [6, 4] })); }
    draw("g-latency", lat, lseries);
    box.setAttribute("data-drawn", String(Date.now()));
  }

  function load() {
    fetch(box.getAttribute("data-src"), { credentials: "same-origin" })
      .then(function (r) { if (!r.ok) { throw new Error("graphs: " + r.status); } return r.json(); })
      .then(render)
      .catch(function (e) { box.setAttribute("data-error", String(e)); });
  }
  load();
  setInterval(load, 5000);
})();
