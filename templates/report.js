// Conveniences only: with JavaScript off every section is still there and readable.
(function () {
  "use strict";

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

  // Permalinks: opening #anchor expands its collapsed section.
  function openTarget() {
    var id = decodeURIComponent(location.hash.slice(1));
    if (!id) { return; }
    var target = document.getElementById(id);
    if (target && target.tagName === "DETAILS") { target.open = true; }
  }
  window.addEventListener("hashchange", openTarget);
  openTarget();

  // Printing shows every section.
  window.addEventListener("beforeprint", function () {
    document.querySelectorAll("details").forEach(function (d) { d.open = true; });
  });

  // Tile zoom: click a tile to see it large with its channel, min and max.
  var dialog = document.getElementById("zoom");
  var canvas = document.getElementById("zoom-canvas");
  var text = document.getElementById("zoom-text");
  function format(value) { return value === null ? "n/a" : Number(value).toPrecision(4); }
  document.querySelectorAll("img.tiles").forEach(function (img) {
    img.addEventListener("click", function (event) {
      var grid = JSON.parse(img.getAttribute("data-grid"));
      var rect = img.getBoundingClientRect();
      var scale = img.naturalWidth / rect.width;
      var x = (event.clientX - rect.left) * scale - grid.padding;
      var y = (event.clientY - rect.top) * scale - grid.padding;
      var column = Math.floor(x / (grid.tileWidth + grid.padding));
      var row = Math.floor(y / (grid.tileHeight + grid.padding));
      var tile = row * grid.columns + column;
      if (column < 0 || row < 0 || column >= grid.columns || tile >= grid.channels.length) { return; }
      var sx = grid.padding + column * (grid.tileWidth + grid.padding);
      var sy = grid.padding + row * (grid.tileHeight + grid.padding);
      var context = canvas.getContext("2d");
      context.imageSmoothingEnabled = false;
      context.clearRect(0, 0, canvas.width, canvas.height);
      var fit = Math.min(canvas.width / grid.tileWidth, canvas.height / grid.tileHeight);
      context.drawImage(img, sx, sy, grid.tileWidth, grid.tileHeight, 0, 0,
                        grid.tileWidth * fit, grid.tileHeight * fit);
      text.textContent = "channel " + grid.channels[tile] + " · min " + format(grid.min[tile]) +
        " · max " + format(grid.max[tile]);
      dialog.setAttribute("data-channel", String(grid.channels[tile]));
      if (typeof dialog.showModal === "function") { dialog.showModal(); }
    });
  });
})();
