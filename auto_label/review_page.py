"""The review page's HTML, style and script (auto_label.review fills in the $names): one file, nothing from
the network, so that the page opens from disk anywhere. The gallery script pages through `items.js`: only
the current page's cards are in the document, their images loaded lazily. Its state (class, sort key,
page) lives in the URL's fragment (#class=car&page=2), so a view can be bookmarked or sent."""

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>$title</title>
<style>
  :root { --ink: #1d232b; --muted: #5c6672; --line: #d9dee4; --bg: #f5f7f9; --accent: #2f6fd0; --bad: #b3261e; }
  * { box-sizing: border-box; }
  body { margin: 0; font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--ink);
         background: var(--bg); }
  header { background: #fff; border-bottom: 1px solid var(--line); padding: 16px 28px; }
  h1 { margin: 0 0 4px; font-size: 22px; }
  h2 { font-size: 17px; margin: 0 0 12px; }
  .sources { color: var(--muted); margin: 0; overflow-wrap: anywhere; }
  code { font-size: 12.5px; background: #eef1f4; padding: 1px 4px; border-radius: 3px; }
  main { padding: 20px 28px 40px; max-width: 1600px; }
  section { background: #fff; border: 1px solid var(--line); border-radius: 8px; padding: 16px 20px;
            margin-bottom: 18px; }
  .stats { display: flex; flex-wrap: wrap; gap: 12px; margin: 0 0 12px; }
  .stat { border: 1px solid var(--line); border-radius: 6px; padding: 8px 14px; min-width: 130px; }
  .stat dt { color: var(--muted); font-size: 12px; text-transform: uppercase; letter-spacing: .03em; }
  .stat dd { margin: 2px 0 0; font-size: 19px; font-weight: 600; }
  table { border-collapse: collapse; }
  th, td { text-align: left; padding: 4px 14px 4px 0; border-bottom: 1px solid var(--line); }
  th { color: var(--muted); font-weight: 600; font-size: 12.5px; }
  td:not(:first-child), th:not(:first-child) { text-align: right; }
  table.skipped td, table.skipped th { text-align: left; }
  details summary { cursor: pointer; color: var(--bad); font-weight: 600; }
  .swatch { display: inline-block; width: 11px; height: 11px; border-radius: 2px; margin-right: 6px;
            vertical-align: -1px; }
  .histograms { display: flex; flex-wrap: wrap; gap: 12px; }
  .histograms img { border: 1px solid var(--line); border-radius: 4px; max-width: 100%; }
  .controls { display: flex; flex-wrap: wrap; align-items: center; gap: 10px 18px; margin-bottom: 8px; }
  .controls select, .controls button { font: inherit; padding: 3px 8px; }
  .pager { margin-left: auto; display: flex; align-items: center; gap: 8px; }
  .note { color: var(--muted); margin: 0 0 12px; }
  #gallery { display: grid; grid-template-columns: repeat(auto-fill, minmax(176px, 1fr)); gap: 12px; }
  .card { margin: 0; border: 1px solid var(--line); border-radius: 6px; overflow: hidden; background: #fff; }
  .card a { display: block; background: #20252b; }
  .card img { display: block; width: 100%; height: 160px; object-fit: contain; }
  .card figcaption { padding: 6px 8px 8px; font-size: 12.5px; }
  .card .cls { font-weight: 600; }
  .card .scores { font-variant-numeric: tabular-nums; }
  .card .scores span { white-space: nowrap; }
  .card .file { color: var(--muted); white-space: nowrap; overflow: hidden; text-overflow: ellipsis; }
  .card .flag, .card .missing { color: var(--bad); }
  .card .missing { height: 160px; padding: 10px; overflow: auto; background: #fbeaea; font-size: 12px; }
</style>
</head>
<body>
<header>
  <h1>Label review <span class="kind">· $kind</span></h1>
  <p class="sources">$sources</p>
</header>
<main>
<section id="summary">
  <h2>Run summary</h2>
  <dl class="stats">
$stats
  </dl>
  $skipped
</section>
<section id="classes">
  <h2>Classes</h2>
  $classes
</section>
<section id="scores">
  <h2>Scores</h2>
  <div class="histograms">
$histograms
  </div>
</section>
<section id="labels">
  <h2>Labels, most likely wrong first</h2>
  <div class="controls">
    <label>class <select id="class-filter">
$class_options
    </select></label>
    <label>sort by <select id="sort-key">
$sort_options
    </select></label>
    <div class="pager">
      <span id="range"></span>
      <button id="prev" type="button">&lsaquo; previous</button>
      <span id="page"></span>
      <button id="next" type="button">next &rsaquo;</button>
    </div>
  </div>
  <p class="note">$note</p>
  <noscript><p>The gallery needs JavaScript.</p></noscript>
  <div id="gallery"></div>
</section>
</main>
<script src="items.js"></script>
<script>
(function () {
  "use strict";
  var data = window.REVIEW_DATA;
  var classFilter = document.getElementById("class-filter");
  var sortKey = document.getElementById("sort-key");
  var gallery = document.getElementById("gallery");
  var state = { cls: "", sort: data.sort, page: 1 };

  function readFragment() {
    var params = new URLSearchParams(location.hash.slice(1));
    state.cls = params.get("class") || "";
    state.sort = data.keys.indexOf(params.get("sort")) >= 0 ? params.get("sort") : data.sort;
    state.page = Math.max(1, parseInt(params.get("page"), 10) || 1);
  }

  function writeFragment() {
    var params = new URLSearchParams();
    if (state.cls) params.set("class", state.cls);
    if (state.sort !== data.sort) params.set("sort", state.sort);
    if (state.page > 1) params.set("page", String(state.page));
    history.replaceState(null, "", "#" + params.toString());
  }

  function value(item) {
    var v = item.s[state.sort];
    return v === undefined ? Infinity : v;
  }

  function selected() {
    var items = data.items.filter(function (item) { return !state.cls || item.c === state.cls; });
    return items.sort(function (a, b) { return (value(a) - value(b)) || (a.i - b.i); });
  }

  function element(tag, className, text) {
    var node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function card(item) {
    var figure = element("figure", "card");
    figure.dataset.class = item.c;
    if (item.t) {
      var link = element("a");
      link.href = item.o;
      link.title = "the whole image: " + item.f;
      var img = element("img");
      img.loading = "lazy";
      img.alt = item.c + " in " + item.f;
      img.width = 160;
      img.height = 160;
      img.src = item.t;
      link.appendChild(img);
      figure.appendChild(link);
    } else {
      figure.appendChild(element("div", "missing", "cannot show this image: " + item.e));
    }
    var caption = element("figcaption");
    var cls = element("div", "cls");
    var swatch = element("span", "swatch");
    swatch.style.background = data.colors[item.c];
    cls.appendChild(swatch);
    cls.appendChild(document.createTextNode(item.c));
    caption.appendChild(cls);
    var scores = element("div", "scores");
    data.keys.filter(function (k) { return item.s[k] !== undefined; }).forEach(function (k, i) {
      if (i) scores.appendChild(document.createTextNode(" · "));
      scores.appendChild(element("span", "", k + " " + item.s[k].toFixed(3)));  // a score is never broken
    });
    caption.appendChild(scores);
    if (item.g) caption.appendChild(element("div", "flag", item.g.replace(/_/g, " ")));
    var file = element("div", "file", item.f);
    file.title = item.f;
    caption.appendChild(file);
    figure.appendChild(caption);
    return figure;
  }

  function render() {
    var items = selected();
    var pages = Math.max(1, Math.ceil(items.length / data.pageSize));
    state.page = Math.min(state.page, pages);
    var start = (state.page - 1) * data.pageSize;
    var page = items.slice(start, start + data.pageSize);
    gallery.replaceChildren.apply(gallery, page.map(card));
    document.getElementById("range").textContent = items.length
      ? "labels " + (start + 1) + "–" + (start + page.length) + " of " + items.length
      : "no labels";
    document.getElementById("page").textContent = "page " + state.page + " of " + pages;
    document.getElementById("prev").disabled = state.page <= 1;
    document.getElementById("next").disabled = state.page >= pages;
    classFilter.value = state.cls;
    sortKey.value = state.sort;
    writeFragment();
  }

  function go(page) {
    state.page = page;
    render();
    document.getElementById("labels").scrollIntoView();
  }

  classFilter.addEventListener("change", function () { state.cls = classFilter.value; state.page = 1; render(); });
  sortKey.addEventListener("change", function () { state.sort = sortKey.value; state.page = 1; render(); });
  document.getElementById("prev").addEventListener("click", function () { go(state.page - 1); });
  document.getElementById("next").addEventListener("click", function () { go(state.page + 1); });
  window.addEventListener("hashchange", function () { readFragment(); render(); });
  readFragment();
  render();
})();
</script>
</body>
</html>
"""
