// Line and stacked-area charts drawn as plain SVG. A chart takes rows (one object per step, merged
// from every metric source) and a list of series, each reading one value from a row; a row where a
// series has no finite value is skipped for that series, so sparse metrics (validation) draw fine.

const SVG = "http://www.w3.org/2000/svg";
const WIDTH = 480;
const HEIGHT = 200;
const PAD = { left: 48, right: 12, top: 10, bottom: 24 };

function el(name, attrs = {}, parent = null) {
  const node = document.createElementNS(SVG, name);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (parent) parent.appendChild(node);
  return node;
}

export function formatNumber(v) {
  if (v == null || !Number.isFinite(v)) return "–";
  const a = Math.abs(v);
  if (a !== 0 && (a >= 1e5 || a < 1e-3)) return v.toExponential(2);
  if (a >= 100) return v.toFixed(0);
  if (a >= 10) return String(Number(v.toFixed(1)));
  if (a > 0 && a < 0.01) return String(Number(v.toPrecision(2)));
  return String(Number(v.toFixed(3)));
}

function niceTicks(lo, hi, count = 4) {
  if (lo === hi) {
    // A flat series: centre it, or put it on the floor when that is zero (staleness 0, no clipping).
    const d = lo === 0 ? 1 : Math.abs(lo) * 0.1;
    if (lo !== 0) lo -= d;
    hi += d;
  }
  const raw = (hi - lo) / count;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((s) => s >= raw) || raw;
  const start = Math.floor(lo / step) * step;
  const end = Math.ceil(hi / step) * step;
  const ticks = [];
  for (let t = start; t <= end + step * 1e-9; t += step) ticks.push(Number(t.toPrecision(12)));
  return { lo: start, hi: end, ticks };
}

export class Chart {
  /**
   * @param {HTMLElement} container where the chart goes
   * @param {{id: string, title: string, series: {label: string, color: string, value: (row) => number|undefined}[],
   *          stacked?: boolean, yMin?: number, yMax?: number, unit?: string}} spec
   */
  constructor(container, spec) {
    this.spec = spec;
    this.root = document.createElement("figure");
    this.root.className = "chart";
    this.root.dataset.chart = spec.id;
    const caption = document.createElement("figcaption");
    const title = document.createElement("span");
    title.className = "chart-title";
    title.textContent = spec.title + (spec.unit ? ` (${spec.unit})` : "");
    caption.appendChild(title);
    this.legend = document.createElement("span");
    this.legend.className = "legend";
    caption.appendChild(this.legend);
    this.root.appendChild(caption);
    this.svg = el("svg", { viewBox: `0 0 ${WIDTH} ${HEIGHT}`, role: "img", "aria-label": spec.title });
    this.root.appendChild(this.svg);
    this.readout = document.createElement("div");
    this.readout.className = "readout";
    this.root.appendChild(this.readout);
    container.appendChild(this.root);
    this.legendValues = spec.series.map((s) => {
      const item = document.createElement("span");
      item.className = "legend-item";
      const swatch = document.createElement("i");
      swatch.style.background = s.color;
      const value = document.createElement("b");
      item.append(swatch, document.createTextNode(` ${s.label} `), value);
      this.legend.appendChild(item);
      return value;
    });
    this.rows = [];
    this.svg.addEventListener("mousemove", (e) => this._hover(e));
    this.svg.addEventListener("mouseleave", () => this._hover(null));
  }

  /** Redraw from `rows` (sorted by step). */
  update(rows) {
    this.rows = rows;
    const { series, stacked } = this.spec;
    // Per series: [step, value] pairs; for a stacked chart each value is the running total below it.
    const points = series.map(() => []);
    for (const row of rows) {
      let base = 0;
      series.forEach((s, i) => {
        const v = s.value(row);
        if (v == null || !Number.isFinite(v)) return;
        if (stacked) {
          points[i].push([row.step, base, base + v]);
          base += v;
        } else {
          points[i].push([row.step, v]);
        }
      });
    }
    const all = points.flat();
    this.svg.replaceChildren();
    this.root.dataset.points = String(all.length);
    series.forEach((s, i) => {
      const last = points[i][points[i].length - 1];
      this.legendValues[i].textContent = last ? formatNumber(stacked ? last[2] - last[1] : last[1]) : "–";
    });
    if (all.length === 0) {
      el("text", { x: WIDTH / 2, y: HEIGHT / 2, "text-anchor": "middle", class: "empty" }, this.svg).textContent =
        "no data yet";
      this.scale = null;
      return;
    }
    let x0 = Infinity;
    let x1 = -Infinity;
    let y0 = this.spec.yMin ?? Infinity;
    let y1 = this.spec.yMax ?? -Infinity;
    for (const p of all) {
      x0 = Math.min(x0, p[0]);
      x1 = Math.max(x1, p[0]);
      const top = p[p.length - 1];
      if (this.spec.yMin == null) y0 = Math.min(y0, stacked ? 0 : top);
      if (this.spec.yMax == null) y1 = Math.max(y1, top);
    }
    if (x0 === x1) x1 = x0 + 1;
    const yt = niceTicks(y0, y1);
    const sx = (x) => PAD.left + ((x - x0) / (x1 - x0)) * (WIDTH - PAD.left - PAD.right);
    const sy = (y) => HEIGHT - PAD.bottom - ((y - yt.lo) / (yt.hi - yt.lo)) * (HEIGHT - PAD.top - PAD.bottom);
    this.scale = { x0, x1, sx };

    const axes = el("g", { class: "axes" }, this.svg);
    for (const t of yt.ticks) {
      const y = sy(t).toFixed(1);
      el("line", { x1: PAD.left, x2: WIDTH - PAD.right, y1: y, y2: y, class: "grid" }, axes);
      el("text", { x: PAD.left - 6, y, dy: "0.32em", "text-anchor": "end" }, axes).textContent = formatNumber(t);
    }
    for (const [x, anchor] of [
      [x0, "start"],
      [x1, "end"],
    ]) {
      el("text", { x: sx(x), y: HEIGHT - 6, "text-anchor": anchor }, axes).textContent = `step ${x}`;
    }

    series.forEach((s, i) => {
      const pts = points[i];
      if (pts.length === 0) return;
      if (stacked) {
        const upper = pts.map((p) => `${sx(p[0]).toFixed(1)},${sy(p[2]).toFixed(1)}`);
        const lower = pts.map((p) => `${sx(p[0]).toFixed(1)},${sy(p[1]).toFixed(1)}`).reverse();
        el("polygon", { points: upper.concat(lower).join(" "), fill: s.color, class: "area" }, this.svg);
      }
      const line = el(
        "polyline",
        {
          points: pts.map((p) => `${sx(p[0]).toFixed(1)},${sy(p[p.length - 1]).toFixed(1)}`).join(" "),
          stroke: s.color,
          class: "series",
          "data-series": s.label,
          "data-count": pts.length,
        },
        this.svg,
      );
      if (pts.length === 1) line.classList.add("single");
      if (pts.length <= 30) {
        for (const p of pts) {
          el("circle", { cx: sx(p[0]).toFixed(1), cy: sy(p[p.length - 1]).toFixed(1), r: 2, fill: s.color }, this.svg);
        }
      }
    });
    this.cursor = el("line", { y1: PAD.top, y2: HEIGHT - PAD.bottom, class: "cursor", visibility: "hidden" }, this.svg);
  }

  _hover(event) {
    if (!event || !this.scale || !this.cursor) {
      this.readout.textContent = "";
      if (this.cursor) this.cursor.setAttribute("visibility", "hidden");
      return;
    }
    const box = this.svg.getBoundingClientRect();
    const x = ((event.clientX - box.left) / box.width) * WIDTH;
    const { x0, x1, sx } = this.scale;
    const step = x0 + ((x - PAD.left) / (WIDTH - PAD.left - PAD.right)) * (x1 - x0);
    let best = null;
    for (const row of this.rows) {
      if (best === null || Math.abs(row.step - step) < Math.abs(best.step - step)) best = row;
    }
    if (!best) return;
    this.cursor.setAttribute("x1", sx(best.step));
    this.cursor.setAttribute("x2", sx(best.step));
    this.cursor.setAttribute("visibility", "visible");
    const parts = this.spec.series.map((s) => `${s.label} ${formatNumber(s.value(best))}`);
    this.readout.textContent = `step ${best.step}: ${parts.join(" · ")}`;
  }
}
