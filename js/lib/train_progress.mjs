// Train LoRA progress in the editor: the state kept per node from the server's
// `lora_lab.train_progress` events ({node, step, total, loss, eta}), its text line, and the
// loss chart's geometry (an SVG path), all pure.

export const MAX_POINTS = 4000; // kept per run; the chart downsamples to its width

export function emptyRun() {
  return { step: 0, total: 0, loss: null, eta: null, points: [], done: false, startedAt: null };
}

/** The next state after one event; a step lower than the last one starts a new run. */
export function addProgress(state, event, now = Date.now()) {
  const step = Number(event.step) || 0;
  const total = Number(event.total) || 0;
  let s = state && step >= state.step && total === state.total ? state : { ...emptyRun(), startedAt: now };
  const loss = Number.isFinite(event.loss) ? event.loss : null;
  let points = s.points;
  if (loss !== null) {
    points = points.length && points[points.length - 1][0] === step ? points.slice(0, -1) : points.slice();
    points.push([step, loss]);
    if (points.length > MAX_POINTS) points = thin(points);
  }
  const eta = Number.isFinite(event.eta) ? event.eta : etaFromRate(step, total, (now - (s.startedAt ?? now)) / 1000);
  return { ...s, step, total, loss: loss ?? s.loss, eta, points, done: total > 0 && step >= total };
}

/** Every other point, keeping the last one (bounded memory for very long runs). */
function thin(points) {
  const out = points.filter((_, i) => i % 2 === 0);
  if (out[out.length - 1] !== points[points.length - 1]) out.push(points[points.length - 1]);
  return out;
}

/** Seconds left at the average rate so far; null before the first step. */
export function etaFromRate(step, total, elapsedSeconds) {
  if (!(step > 0) || !(total > 0) || !(elapsedSeconds > 0)) return null;
  return Math.max(0, ((total - step) * elapsedSeconds) / step);
}

/** 75 -> "1:15", 3725 -> "1:02:05", null -> "--". */
export function formatEta(seconds) {
  if (seconds == null || !Number.isFinite(seconds) || seconds < 0) return "--";
  const t = Math.round(seconds);
  const h = Math.floor(t / 3600);
  const m = Math.floor((t % 3600) / 60);
  const s = String(t % 60).padStart(2, "0");
  return h ? `${h}:${String(m).padStart(2, "0")}:${s}` : `${m}:${s}`;
}

export function formatLoss(loss) {
  if (loss == null || !Number.isFinite(loss)) return "--";
  return Math.abs(loss) >= 0.001 && Math.abs(loss) < 1000 ? loss.toFixed(4) : loss.toExponential(2);
}

export function progressText(state) {
  if (!state || !state.total) return "waiting for the first step";
  const pct = Math.floor((100 * state.step) / state.total);
  const tail = state.done ? "done" : `ETA ${formatEta(state.eta)}`;
  return `step ${state.step}/${state.total} (${pct}%) · loss ${formatLoss(state.loss)} · ${tail}`;
}

/** Exponential moving average of the losses (the chart's second, smoothed line). */
export function smooth(points, weight = 0.9) {
  let acc = null;
  return points.map(([x, y]) => {
    acc = acc === null ? y : weight * acc + (1 - weight) * y;
    return [x, acc];
  });
}

/** At most 2·n points: the lowest and the highest point of each of n equal runs, in step
 * order (spikes and the first/last values survive, unlike averaging). */
export function downsample(points, n) {
  if (points.length <= 2 * n || n < 1) return points;
  const out = [];
  for (let b = 0; b < n; b++) {
    const lo = Math.floor((b * points.length) / n);
    const hi = Math.floor(((b + 1) * points.length) / n);
    let iMin = lo, iMax = lo;
    for (let i = lo; i < hi; i++) {
      if (points[i][1] < points[iMin][1]) iMin = i;
      if (points[i][1] > points[iMax][1]) iMax = i;
    }
    if (iMin === iMax) out.push(points[iMin]);
    else out.push(points[Math.min(iMin, iMax)], points[Math.max(iMin, iMax)]);
  }
  return out;
}

/**
 * The chart's geometry in a width × height box: {raw, smooth} SVG path strings, the axis
 * ranges and tick labels. Empty paths for fewer than one point.
 */
export function chartGeometry(points, width, height, pad = 4) {
  const finite = points.filter(([x, y]) => Number.isFinite(x) && Number.isFinite(y));
  if (!finite.length) return { raw: "", smooth: "", xMin: 0, xMax: 0, yMin: 0, yMax: 0 };
  const pts = downsample(finite, Math.max(1, Math.floor((width - 2 * pad) / 2)));
  const xs = finite.map((p) => p[0]);
  const ys = finite.map((p) => p[1]);
  const xMin = Math.min(...xs), xMax = Math.max(...xs);
  let yMin = Math.min(...ys), yMax = Math.max(...ys);
  if (yMax === yMin) { yMin -= 0.5; yMax += 0.5; }
  const sx = (x) => pad + (xMax === xMin ? 0.5 : (x - xMin) / (xMax - xMin)) * (width - 2 * pad);
  const sy = (y) => pad + (1 - (y - yMin) / (yMax - yMin)) * (height - 2 * pad);
  const path = (ps) => ps.map(([x, y], i) => `${i ? "L" : "M"}${sx(x).toFixed(1)} ${sy(y).toFixed(1)}`).join(" ");
  return { raw: path(pts), smooth: path(smooth(pts)), xMin, xMax, yMin, yMax };
}
