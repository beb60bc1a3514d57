"""The report page's stylesheet and script, inlined into report.html so the
page works from file:// and offline (no CDN, no second file to lose).

The script never puts data into markup: every file name and reason reaches the
page through ``textContent`` / element properties, so a file name cannot
inject HTML."""

CSS = r"""
:root { --fg:#1d232a; --muted:#5c6670; --line:#d8dde2; --bg:#f6f7f9; --card:#fff; --accent:#1b6ec2;
        --rep:#e0a100; --remove:#c62828; }
* { box-sizing: border-box; }
body { margin:0; font:14px/1.4 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color:var(--fg);
       background:var(--bg); }
header.run { padding:16px 24px 8px; background:var(--card); border-bottom:1px solid var(--line); }
header.run h1 { margin:0 0 6px; font-size:20px; }
header.run dl { display:grid; grid-template-columns:max-content 1fr; gap:2px 12px; margin:6px 0; }
header.run dt { color:var(--muted); }
header.run dd { margin:0; overflow-wrap:anywhere; }
.counts { display:flex; flex-wrap:wrap; gap:8px 20px; margin:8px 0; font-size:15px; }
.counts b { font-size:18px; }
.plots { display:flex; flex-wrap:wrap; gap:12px; margin:8px 0; }
.plots figure { margin:0; }
.plots img { max-width:480px; max-height:320px; border:1px solid var(--line); background:#fff; }
.plots figcaption { color:var(--muted); font-size:12px; }
nav.bar { position:sticky; top:0; z-index:2; display:flex; flex-wrap:wrap; align-items:center; gap:8px 14px;
          padding:8px 24px; background:#eef1f4; border-bottom:1px solid var(--line); }
nav.bar button { font:inherit; padding:3px 10px; border:1px solid #aab3bc; border-radius:4px; background:#fff;
                 cursor:pointer; }
nav.bar button[aria-pressed="true"] { background:var(--accent); color:#fff; border-color:var(--accent); }
nav.bar button:disabled { opacity:.4; cursor:default; }
nav.bar input[type=search] { font:inherit; padding:3px 8px; width:18em; }
#pageinfo, #decisioninfo { color:var(--muted); }
main { padding:12px 24px 40px; }
section.cluster { background:var(--card); border:1px solid var(--line); border-radius:6px; padding:8px 12px;
                  margin:0 0 12px; }
section.cluster h2 { margin:0 0 8px; font-size:15px; }
section.cluster h2 span { color:var(--muted); font-weight:normal; margin-left:8px; }
.grid { display:flex; flex-wrap:wrap; gap:10px; }
figure.member { margin:0; width:196px; padding:6px; border:2px solid transparent; border-radius:6px;
                background:#fafbfc; }
figure.member.rep { border-color:var(--rep); }
figure.member.removed { opacity:.45; border-color:var(--remove); border-style:dashed; }
.thumb { display:flex; align-items:center; justify-content:center; width:180px; height:180px; background:#eceff2; }
.thumb img { max-width:180px; max-height:180px; width:auto; height:auto; display:block; }
.thumb .missing { color:var(--muted); font-size:12px; padding:8px; text-align:center; }
figcaption { font-size:12px; margin-top:4px; }
figcaption .path { overflow-wrap:anywhere; font-family:ui-monospace, Menlo, Consolas, monospace; }
figcaption .meta { color:var(--muted); }
.badge { display:inline-block; background:var(--rep); color:#000; border-radius:3px; padding:0 5px;
         font-size:11px; font-weight:600; margin-right:4px; }
label.keep { display:inline-flex; gap:4px; align-items:center; cursor:pointer; }
table.skipped { border-collapse:collapse; background:var(--card); width:100%; }
table.skipped td, table.skipped th { border:1px solid var(--line); padding:3px 8px; text-align:left;
                                    overflow-wrap:anywhere; }
p.empty { color:var(--muted); }
kbd { border:1px solid #aab3bc; border-radius:3px; padding:0 4px; background:#fff; font-size:12px; }
"""

JS = r"""
(function () {
  "use strict";
  var D = JSON.parse(document.getElementById("report-data").textContent);
  var SIZES = { clusters: D.pageSize, outliers: D.pageSize * 4, skipped: D.pageSize * 10 };
  var state = { tab: "clusters", page: 0, filter: "" };
  var keep = {};          // member path -> true (kept) / false (moved away)
  var STORE = "clusterimg-decisions:" + D.created + ":" + D.input;

  D.clusters.forEach(function (c) {
    c.m.forEach(function (m) { keep[m[0]] = !!m[9]; });
  });
  try {
    var saved = JSON.parse(window.localStorage.getItem(STORE) || "null");
    if (saved) Object.keys(saved).forEach(function (p) { if (p in keep) keep[p] = !!saved[p]; });
  } catch (e) { /* storage unavailable from this origin: decisions live in the page only */ }

  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }
  function bytes(n) {
    if (n === null || n === undefined) return "";
    var u = ["B", "KB", "MB", "GB"], i = 0;
    while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
    return (i ? n.toFixed(1) : n) + " " + u[i];
  }
  function save() {
    try { window.localStorage.setItem(STORE, JSON.stringify(keep)); } catch (e) { /* see above */ }
  }
  function matches(path) { return path.toLowerCase().indexOf(state.filter) !== -1; }
  function items() {
    var f = state.filter;
    if (state.tab === "clusters")
      return f ? D.clusters.filter(function (c) { return c.m.some(function (m) { return matches(m[0]); }); })
               : D.clusters;
    if (state.tab === "outliers") return f ? D.outliers.filter(function (o) { return matches(o[0]); }) : D.outliers;
    return f ? D.skipped.filter(function (s) { return matches(s[0]); }) : D.skipped;
  }

  function thumb(path, src, w, h, href, reason) {
    var box = el("div", "thumb");
    if (src) {
      var a = el("a");
      a.href = href; a.target = "_blank"; a.rel = "noopener";
      var img = el("img");
      img.loading = "lazy"; img.decoding = "async"; img.alt = path; img.title = path;
      img.width = w; img.height = h; img.src = src;
      a.appendChild(img); box.appendChild(a);
    } else {
      box.appendChild(el("div", "missing", reason || "no preview"));
    }
    return box;
  }

  function member(m, cid) {
    // m: [path, score, thumb, tw, th, width, height, size, href, keepDefault, rep, reason]
    var fig = el("figure", "member" + (m[10] ? " rep" : "") + (keep[m[0]] ? "" : " removed"));
    fig.dataset.path = m[0];
    fig.appendChild(thumb(m[0], m[2], m[3], m[4], m[8], m[11]));
    var cap = el("figcaption");
    var line = el("div", "meta");
    if (m[10]) line.appendChild(el("span", "badge", "representative"));
    line.appendChild(document.createTextNode("score " + (m[1] === null ? "?" : Number(m[1]).toFixed(3))));
    if (m[5]) line.appendChild(document.createTextNode(" \u00b7 " + m[5] + "\u00d7" + m[6]));
    if (m[7] !== null) line.appendChild(document.createTextNode(" \u00b7 " + bytes(m[7])));
    cap.appendChild(line);
    cap.appendChild(el("div", "path", m[0]));
    var label = el("label", "keep");
    var box = el("input");
    box.type = "checkbox"; box.checked = !!keep[m[0]];
    box.addEventListener("change", function () {
      keep[m[0]] = box.checked;
      fig.classList.toggle("removed", !box.checked);
      save(); decisionInfo();
    });
    label.appendChild(box); label.appendChild(document.createTextNode("keep"));
    cap.appendChild(label);
    fig.appendChild(cap);
    return fig;
  }

  function renderClusters(list, root) {
    list.forEach(function (c) {
      var sec = el("section", "cluster");
      sec.id = c.id;
      var h = el("h2", null, c.id);
      h.appendChild(el("span", null, c.m.length + " images"));
      sec.appendChild(h);
      var grid = el("div", "grid");
      c.m.forEach(function (m) { grid.appendChild(member(m, c.id)); });
      sec.appendChild(grid);
      root.appendChild(sec);
    });
  }
  function renderOutliers(list, root) {
    var sec = el("section", "cluster outliers");
    var grid = el("div", "grid");
    list.forEach(function (o) {
      // o: [path, thumb, tw, th, width, height, size, href, reason]
      var fig = el("figure", "member");
      fig.dataset.path = o[0];
      fig.appendChild(thumb(o[0], o[1], o[2], o[3], o[7], o[8]));
      var cap = el("figcaption");
      var meta = [];
      if (o[4]) meta.push(o[4] + "\u00d7" + o[5]);
      if (o[6] !== null) meta.push(bytes(o[6]));
      cap.appendChild(el("div", "meta", meta.join(" \u00b7 ")));
      cap.appendChild(el("div", "path", o[0]));
      fig.appendChild(cap);
      grid.appendChild(fig);
    });
    sec.appendChild(grid);
    root.appendChild(sec);
  }
  function renderSkipped(list, root) {
    var t = el("table", "skipped");
    var head = el("tr");
    head.appendChild(el("th", null, "file")); head.appendChild(el("th", null, "reason"));
    t.appendChild(head);
    list.forEach(function (s) {
      var r = el("tr");
      r.appendChild(el("td", "path", s[0])); r.appendChild(el("td", null, s[1]));
      t.appendChild(r);
    });
    root.appendChild(t);
  }

  // page boundaries: clusters fill a page up to pageSize clusters or pageImages
  // images (at least one cluster), so a page of big clusters stays light
  function bounds(all) {
    var size = SIZES[state.tab], starts = [0];
    if (state.tab !== "clusters") {
      for (var k = size; k < all.length; k += size) starts.push(k);
      return starts;
    }
    var n = 0, images = 0;
    all.forEach(function (c, k) {
      if (n && (n >= size || images + c.m.length > D.pageImages)) { starts.push(k); n = 0; images = 0; }
      n += 1; images += c.m.length;
    });
    return starts;
  }

  function render() {
    var all = items(), starts = bounds(all);
    var pages = starts.length;
    state.page = Math.min(Math.max(0, state.page), pages - 1);
    var slice = all.slice(starts[state.page], state.page + 1 < pages ? starts[state.page + 1] : all.length);
    var root = document.getElementById("view");
    root.textContent = "";
    if (!slice.length) root.appendChild(el("p", "empty", state.filter ? "Nothing matches the filter." : "None."));
    else if (state.tab === "clusters") renderClusters(slice, root);
    else if (state.tab === "outliers") renderOutliers(slice, root);
    else renderSkipped(slice, root);
    document.getElementById("pageinfo").textContent =
      "page " + (state.page + 1) + " / " + pages + " \u00b7 " + all.length + " " + state.tab +
      (state.filter ? " matching" : "");
    document.getElementById("prev").disabled = state.page === 0;
    document.getElementById("next").disabled = state.page >= pages - 1;
    ["clusters", "outliers", "skipped"].forEach(function (t) {
      document.getElementById("tab-" + t).setAttribute("aria-pressed", String(t === state.tab));
    });
    document.body.dataset.page = String(state.page + 1);
    document.body.dataset.pages = String(pages);
  }
  function go(delta) { state.page += delta; render(); window.scrollTo(0, 0); }

  function decisions() {
    var out = { format: "clusterimg-decisions", version: 1, manifest_created: D.created, input: D.input,
                keep: [], remove: [] };
    D.clusters.forEach(function (c) {
      c.m.forEach(function (m) { (keep[m[0]] ? out.keep : out.remove).push(m[0]); });
    });
    return out;
  }
  function decisionInfo() {
    var d = decisions();
    document.getElementById("decisioninfo").textContent =
      d.keep.length + " kept, " + d.remove.length + " to put away";
  }
  function download() {
    var blob = new Blob([JSON.stringify(decisions(), null, 1) + "\n"], { type: "application/json" });
    var a = el("a");
    a.href = URL.createObjectURL(blob);
    a.download = "decisions.json";
    document.body.appendChild(a); a.click(); a.remove();
    setTimeout(function () { URL.revokeObjectURL(a.href); }, 1000);
  }
  function reset() {
    D.clusters.forEach(function (c) { c.m.forEach(function (m) { keep[m[0]] = !!m[9]; }); });
    save(); render(); decisionInfo();
  }

  ["clusters", "outliers", "skipped"].forEach(function (t) {
    document.getElementById("tab-" + t).addEventListener("click", function () {
      state.tab = t; state.page = 0; render();
    });
  });
  document.getElementById("prev").addEventListener("click", function () { go(-1); });
  document.getElementById("next").addEventListener("click", function () { go(1); });
  document.getElementById("download").addEventListener("click", download);
  document.getElementById("reset").addEventListener("click", reset);
  var timer = null, box = document.getElementById("filter");
  box.addEventListener("input", function () {
    clearTimeout(timer);
    timer = setTimeout(function () { state.filter = box.value.trim().toLowerCase(); state.page = 0; render(); }, 150);
  });
  document.addEventListener("keydown", function (e) {
    var t = e.target && e.target.tagName;
    if (t === "INPUT" || t === "TEXTAREA" || e.altKey || e.ctrlKey || e.metaKey) return;
    if (e.key === "ArrowRight" || e.key === "n" || e.key === "j") { if (!document.getElementById("next").disabled) go(1); }
    else if (e.key === "ArrowLeft" || e.key === "p" || e.key === "k") { if (!document.getElementById("prev").disabled) go(-1); }
    else if (e.key === "/") { e.preventDefault(); box.focus(); }
    else return;
  });
  window.clusterimgDecisions = decisions;  // what "download decisions" saves (for scripts and tests)
  render();
  decisionInfo();
  document.body.dataset.ready = "1";
})();
"""
