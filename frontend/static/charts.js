// Staff charts drawn with the vendored uPlot from the page's <script type="application/json" id="chart-data">.
// Progressive enhancement: the page states the numbers in text and tables; these only draw them.
"use strict";

(function () {
  const source = document.getElementById("chart-data");
  if (!source || typeof uPlot === "undefined") return;
  const data = JSON.parse(source.textContent);
  const labels = data.labels || {};
  const charts = [];
  // Counts have whole-number ticks only.
  const WHOLE = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000];
  const ink = getComputedStyle(document.documentElement).getPropertyValue("--accent").trim() || "#0b5cad";

  function widthOf(element) {
    return Math.max(240, Math.floor(element.clientWidth || element.parentElement.clientWidth || 320));
  }

  // A count axis from zero to a little over the largest count.
  function counts(u, min, max) {
    return [0, Math.max(1, Math.ceil(max * 1.1))];
  }

  function bars() {
    return uPlot.paths && uPlot.paths.bars ? uPlot.paths.bars({ size: [0.9, 80] }) : undefined;
  }

  function scoreHistogram(element, histogram) {
    if (!histogram || !histogram.counts.length) return;
    const format = (value) => String(Math.round(value * 100) / 100);
    const opts = {
      width: widthOf(element),
      height: 220,
      legend: { show: false },
      cursor: { drag: { x: false, y: false } },
      scales: {
        x: { time: false, range: [-histogram.width / 2, histogram.maximum + histogram.width / 2] },
        y: { range: counts },
      },
      axes: [
        { label: labels.score, values: (u, ticks) => ticks.map(format) },
        { label: labels.students, incrs: WHOLE, values: (u, ticks) => ticks.map(String) },
      ],
      series: [
        {},
        { label: labels.students, stroke: ink, fill: ink + "99", paths: bars(), points: { show: false } },
      ],
    };
    // A bar sits in the middle of its bin.
    const centres = histogram.starts.map((start) => start + histogram.width / 2);
    charts.push([element, new uPlot(opts, [centres, histogram.counts], element)]);
  }

  function perHour(element, series) {
    if (!series || !series.hours.length) return;
    const opts = {
      width: widthOf(element),
      height: 220,
      legend: { show: false },
      scales: {
        x: { range: () => [series.hours[0], series.hours[series.hours.length - 1] + 3600] },
        y: { range: counts },
      },
      axes: [
        { label: labels.hour, space: 90 },
        { label: labels.submissions, incrs: WHOLE, values: (u, ticks) => ticks.map(String) },
      ],
      series: [
        {},
        { label: labels.submissions, stroke: ink, fill: ink + "55", paths: bars(), points: { show: false } },
      ],
    };
    // Each bar spans its hour: it is drawn at the middle of the hour.
    const middles = series.hours.map((start) => start + 1800);
    charts.push([element, new uPlot(opts, [middles, series.counts], element)]);
  }

  const histogramElement = document.getElementById("score-histogram");
  const hourlyElement = document.getElementById("submissions-per-hour");
  if (histogramElement) scoreHistogram(histogramElement, data.histogram);
  if (hourlyElement) perHour(hourlyElement, data.per_hour);

  let pending = null;
  window.addEventListener("resize", () => {
    clearTimeout(pending);
    pending = setTimeout(() => {
      for (const [element, chart] of charts) chart.setSize({ width: widthOf(element), height: 220 });
    }, 150);
  });
})();
