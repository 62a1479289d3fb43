// Train LoRA in the editor: step, loss and ETA live while it runs (from the server's
// `lora_lab.train_progress` events) and the loss chart (raw + smoothed) when it is done.

import { chartGeometry, formatLoss, progressText } from "../lib/train_progress.mjs";
import { el, fitNode } from "./dom.mjs";

const SVG = "http://www.w3.org/2000/svg";
const W = 300, H = 90;

function svg(tag, attrs = {}) {
  const n = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) n.setAttribute(k, String(v));
  return n;
}

/** Add the monitor to a node (a DOM widget that is not saved); returns {update(state)}. */
export function attachTrainMonitor(node) {
  const label = el("div", { text: "LoRA training: not started" });
  const fill = el("div", { class: "fill" });
  const chart = svg("svg", { viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: "none", height: H });
  const axes = el("div", { class: "muted" });
  const root = el("div", { class: "lora-lab lora-lab-train" }, [label, el("div", { class: "track" }, [fill]), chart,
    axes]);
  let hasChart = false;
  const widget = node.addDOMWidget("lora_lab_train", "lora_lab_train", root, {
    serialize: false,
    hideOnZoom: true,
    getValue: () => "",
    setValue: () => {},
    getMinHeight: () => (hasChart ? H + 52 : 40),
  });
  widget.serialize = false;
  chart.style.display = "none";

  function draw(points, final) {
    const g = chartGeometry(points, W, H);
    chart.replaceChildren(
      svg("rect", { x: 0, y: 0, width: W, height: H, fill: "none", stroke: "currentColor", "stroke-opacity": 0.2 }),
      svg("path", { d: g.raw, fill: "none", stroke: "currentColor", "stroke-opacity": final ? 0.35 : 0.6,
        "stroke-width": 1, "vector-effect": "non-scaling-stroke" }),
      ...(final ? [svg("path", { d: g.smooth, fill: "none", stroke: "var(--p-primary-color, #4a9)",
        "stroke-width": 2, "vector-effect": "non-scaling-stroke" })] : []),
    );
    axes.textContent = g.raw ? `loss ${formatLoss(g.yMin)} – ${formatLoss(g.yMax)} · steps ${g.xMin}–${g.xMax}` : "";
  }

  function update(state) {
    label.textContent = `LoRA training: ${progressText(state)}`;
    fill.style.width = state.total ? `${Math.min(100, (100 * state.step) / state.total)}%` : "0";
    const show = state.points.length > 1;
    chart.style.display = show ? "" : "none";
    if (show) draw(state.points, state.done);
    if (show !== hasChart) {
      hasChart = show;
      fitNode(node);
    }
  }

  return { widget, update };
}
