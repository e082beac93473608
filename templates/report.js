// Conveniences only: with JavaScript off every section is open and every picture is there.
(function () {
  "use strict";

  // Collapsing: the HTML has every section open (readable without JS); all but the first
  // few start collapsed here, except the one a permalink points at.
  function hashTarget() {
    var id = "";
    try { id = decodeURIComponent(location.hash.slice(1)); } catch (e) { id = location.hash.slice(1); }
    return id ? document.getElementById(id) : null;
  }
  var initial = hashTarget();
  document.querySelectorAll("details[data-collapse]").forEach(function (d) {
    if (d !== initial && !d.contains(initial)) { d.open = false; }
  });

  // Permalinks: opening #anchor expands its section and brings it into view.
  function openTarget(event) {
    var target = hashTarget();
    if (!target) { return; }
    var details = target.tagName === "DETAILS" ? target : target.closest("details");
    if (details) { details.open = true; }
    // on arrival jump straight there (the sections above it just collapsed); links scroll smoothly
    target.scrollIntoView({block: "start", behavior: event ? "smooth" : "instant"});
  }
  window.addEventListener("hashchange", openTarget);
  if (initial) { openTarget(null); }

  // Filter box: narrow the sidebar's layer list by name or type.
  var filter = document.getElementById("layer-filter");
  var items = document.querySelectorAll("#nav-layers li");
  if (filter) {
    filter.addEventListener("input", function () {
      var needle = filter.value.trim().toLowerCase();
      items.forEach(function (item) {
        var haystack = (item.getAttribute("data-search") || "").toLowerCase();
        item.classList.toggle("hidden", needle !== "" && haystack.indexOf(needle) === -1);
      });
    });
  }

  // Printing shows every section.
  window.addEventListener("beforeprint", function () {
    document.querySelectorAll("details").forEach(function (d) { d.open = true; });
  });

  // Tile zoom: click a tile (or focus a grid and press Enter) to see it large with its layer,
  // input and channel, its own min and max on its colour scale, and the channel's statistics
  // over all inputs.
  var dialog = document.getElementById("zoom");
  var canvas = document.getElementById("zoom-canvas");
  var text = document.getElementById("zoom-text");
  var statsText = document.getElementById("zoom-stats");
  var minText = document.getElementById("zoom-min");
  var maxText = document.getElementById("zoom-max");
  var scaleText = document.getElementById("zoom-scale-text");
  var resolutionText = document.getElementById("zoom-resolution");
  var larger = {};  // zoom key -> {image, grid}: the first input's maps before pooling, decoded once
  function largerOf(grid) {
    if (!grid.zoomKey) { return null; }
    if (!(grid.zoomKey in larger)) {
      var found = null;
      document.querySelectorAll("#zoom-maps span").forEach(function (span) {
        if (span.getAttribute("data-key") === grid.zoomKey) { found = span; }
      });
      larger[grid.zoomKey] = null;
      if (found) {
        var image = new Image();
        larger[grid.zoomKey] = {image: image, grid: JSON.parse(found.getAttribute("data-grid"))};
        image.addEventListener("load", function () { if (current) { show(current.img, current.grid, current.tile); } });
        image.src = found.getAttribute("data-src");
      }
    }
    return larger[grid.zoomKey];
  }
  function drawTile(source, grid, tile) {
    var column = tile % grid.columns;
    var row = Math.floor(tile / grid.columns);
    var sx = grid.padding + column * (grid.tileWidth + grid.padding);
    var sy = grid.padding + row * (grid.tileHeight + grid.padding);
    var context = canvas.getContext("2d");
    context.imageSmoothingEnabled = false;
    context.clearRect(0, 0, canvas.width, canvas.height);
    var fit = Math.min(canvas.width / grid.tileWidth, canvas.height / grid.tileHeight);
    context.drawImage(source, sx, sy, grid.tileWidth, grid.tileHeight, 0, 0,
                      grid.tileWidth * fit, grid.tileHeight * fit);
  }
  var bars = document.querySelectorAll("#zoom .zoom-bar");
  var current = null;  // {img, grid, tile}
  function format(value) { return value === null || value === undefined ? "n/a" : Number(value).toPrecision(4); }
  function percent(value) { return value === null || value === undefined ? "n/a" : (value * 100).toFixed(1) + "%"; }
  function gridOf(img) { return JSON.parse(img.getAttribute("data-grid")); }
  function statsOf(img) {
    var details = img.closest("details");
    var raw = details ? details.getAttribute("data-stats") : null;
    return raw ? JSON.parse(raw) : null;
  }

  function show(img, grid, tile) {
    if (tile < 0 || tile >= grid.channels.length) { return; }
    current = {img: img, grid: grid, tile: tile};
    var channel = grid.channels[tile];
    var big = largerOf(grid);
    var bigTile = big ? big.grid.channels.indexOf(channel) : -1;
    if (big && bigTile >= 0 && big.image.complete && big.image.naturalWidth > 0) {
      drawTile(big.image, big.grid, bigTile);
      canvas.setAttribute("data-source", "full");
    } else {
      drawTile(img, grid, tile);
      canvas.setAttribute("data-source", "tile");
    }
    resolutionText.textContent = grid.resolution ? "shown: " + grid.resolution : "";
    // every word and number below was formatted in Python (view.grid_view)
    text.textContent = grid.heading + " · " + grid.unit + " " + channel;
    minText.textContent = "min " + grid.minText.split(" ")[tile];
    maxText.textContent = "max " + grid.maxText.split(" ")[tile];
    scaleText.textContent = grid.scale;
    bars.forEach(function (bar) { bar.hidden = bar.getAttribute("data-colormap") !== grid.colormap; });
    var stats = grid.unit === "channel" ? statsOf(img) : null;  // a filter's zoom: weights, no activations
    var at = stats ? stats.channels.indexOf(channel) : -1;
    statsText.textContent = at < 0 ? "" : "over all inputs: mean " + format(stats.mean[at]) +
      " · max " + format(stats.max[at]) + " · active " + percent(stats.active[at]);
    dialog.setAttribute("data-channel", String(channel));
    if (!dialog.open && typeof dialog.showModal === "function") { dialog.showModal(); }
  }

  function tileAt(img, grid, event) {
    var rect = img.getBoundingClientRect();
    var scale = img.naturalWidth / rect.width;
    var x = (event.clientX - rect.left) * scale - grid.padding;
    var y = (event.clientY - rect.top) * scale - grid.padding;
    var column = Math.floor(x / (grid.tileWidth + grid.padding));
    var row = Math.floor(y / (grid.tileHeight + grid.padding));
    if (column < 0 || row < 0 || column >= grid.columns) { return -1; }
    return row * grid.columns + column;
  }

  document.querySelectorAll("img.tiles").forEach(function (img) {
    img.addEventListener("click", function (event) {
      var grid = gridOf(img);
      show(img, grid, tileAt(img, grid, event));
    });
    img.addEventListener("keydown", function (event) {
      if (event.key === "Enter" || event.key === " ") {
        event.preventDefault();
        show(img, gridOf(img), 0);
      }
    });
  });

  if (dialog) {
    dialog.addEventListener("keydown", function (event) {
      if (!current) { return; }
      var step = {ArrowRight: 1, ArrowDown: current.grid.columns, ArrowLeft: -1, ArrowUp: -current.grid.columns}[event.key];
      if (step) {
        event.preventDefault();
        show(current.img, current.grid, Math.max(0, Math.min(current.grid.channels.length - 1, current.tile + step)));
      }
    });
    dialog.addEventListener("close", function () {
      if (current) { current.img.focus(); }
    });
  }
})();
