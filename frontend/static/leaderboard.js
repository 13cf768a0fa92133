// The leaderboard chart: each of the top entries' (and the viewer's) metric per correct submission over time,
// drawn with the vendored uPlot from the JSON block #leaderboard-data that the page renders. No inline scripts
// or handlers, so a strict Content-Security-Policy stays possible. The table on the page holds the same ranking.
"use strict";

(function () {
  // Distinguishable on white and for the common colour-vision deficiencies (Okabe-Ito), the viewer in black.
  const PALETTE = ["#0072b2", "#d55e00", "#009e73", "#cc79a7", "#e69f00", "#56b4e9"];
  const YOU = "#1b1f24";

  function draw(container, data) {
    const series = data.series.filter((item) => item.points.length > 0);
    if (series.length === 0 || typeof uPlot === "undefined") {
      const empty = document.createElement("p");
      empty.className = "muted";
      empty.textContent = data.empty;
      container.replaceChildren(empty);
      return;
    }
    // uPlot wants one shared x array: join the series' own [x, y] tables, leaving gaps as nulls.
    const tables = series.map((item) => [item.points.map((p) => p[0]), item.points.map((p) => p[1])]);
    const aligned = tables.length === 1 ? tables[0] : uPlot.join(tables);
    let colour = 0;
    const options = {
      width: Math.max(280, container.clientWidth),
      height: 320,
      scales: { x: { time: true } },
      axes: [
        { label: data.x_label },
        { label: data.y_label, size: 64 },
      ],
      series: [
        { label: data.x_label },
        ...series.map((item) => {
          const stroke = item.you ? YOU : PALETTE[colour++ % PALETTE.length];
          return {
            label: item.you ? item.name + " (" + data.you + ")" : "#" + item.rank + " " + item.name,
            stroke: stroke,
            width: item.you ? 3 : 2,
            spanGaps: true,
            points: { show: true, size: item.you ? 8 : 6, fill: stroke },
            value: (self, value) => (value == null ? "—" : Number(value).toPrecision(4) + " " + data.unit),
          };
        }),
      ],
    };
    const plot = new uPlot(options, aligned, container);
    let pending = null;
    window.addEventListener("resize", () => {
      window.clearTimeout(pending);
      pending = window.setTimeout(() => {
        plot.setSize({ width: Math.max(280, container.clientWidth), height: 320 });
      }, 100);
    });
  }

  document.addEventListener("DOMContentLoaded", () => {
    const container = document.getElementById("leaderboard-chart");
    const block = document.getElementById("leaderboard-data");
    if (container && block) {
      draw(container, JSON.parse(block.textContent));
    }
  });
})();
