import assert from "node:assert/strict";
import { test } from "node:test";

import {
  MAX_POINTS, addProgress, chartGeometry, downsample, etaFromRate, formatEta, formatLoss, progressText, smooth,
} from "../lib/train_progress.mjs";

test("ETA and loss formatting", () => {
  assert.equal(formatEta(75), "1:15");
  assert.equal(formatEta(3725), "1:02:05");
  assert.equal(formatEta(0.4), "0:00");
  assert.equal(formatEta(null), "--");
  assert.equal(formatEta(NaN), "--");
  assert.equal(formatLoss(0.123456), "0.1235");
  assert.equal(formatLoss(0.00001234), "1.23e-5");
  assert.equal(formatLoss(null), "--");
  assert.equal(etaFromRate(10, 100, 5), 45);
  assert.equal(etaFromRate(0, 100, 5), null);
});

test("a run's state from its events", () => {
  let s = addProgress(null, { step: 1, total: 4, loss: 0.5, eta: null }, 1000);
  s = addProgress(s, { step: 2, total: 4, loss: 0.4, eta: null }, 3000); // 2 steps in 2 s: 2 s left
  assert.equal(s.eta, 2);
  s = addProgress(s, { step: 2, total: 4, loss: 0.35, eta: 9 }, 3500); // same step: replaced
  assert.deepEqual(s.points, [[1, 0.5], [2, 0.35]]);
  assert.equal(s.eta, 9);
  assert.equal(progressText(s), "step 2/4 (50%) · loss 0.3500 · ETA 0:09");
  s = addProgress(s, { step: 4, total: 4, loss: null, eta: 0 }, 4000);
  assert.ok(s.done && s.loss === 0.35);
  assert.match(progressText(s), /done$/);
  const again = addProgress(s, { step: 1, total: 4, loss: 0.9 }, 5000); // a new run
  assert.deepEqual(again.points, [[1, 0.9]]);
  assert.equal(progressText(null), "waiting for the first step");
});

test("memory stays bounded on long runs", () => {
  let s = null;
  for (let i = 1; i <= MAX_POINTS * 3; i++) s = addProgress(s, { step: i, total: MAX_POINTS * 3, loss: 1 / i, eta: 1 });
  assert.ok(s.points.length <= MAX_POINTS);
  assert.deepEqual(s.points[s.points.length - 1], [MAX_POINTS * 3, 1 / (MAX_POINTS * 3)]);
});

test("chart geometry", () => {
  const pts = Array.from({ length: 500 }, (_, i) => [i + 1, 1 / (i + 1)]);
  const few = downsample(pts, 100);
  assert.ok(few.length <= 200 && few.length >= 100);
  assert.deepEqual(few[0], [1, 1]);
  assert.deepEqual(few[few.length - 1], [500, 1 / 500]);
  assert.deepEqual(downsample([[1, 2]], 100), [[1, 2]]);
  assert.equal(smooth([[1, 1], [2, 0]], 0.5)[1][1], 0.5);
  const g = chartGeometry(pts, 200, 80);
  assert.equal(g.xMin, 1);
  assert.equal(g.xMax, 500);
  assert.equal(g.yMax, 1);
  assert.match(g.raw, /^M4\.0 4\.0 L/); // the first (highest) loss at the top left
  assert.ok(g.raw.split("L").length <= 193);
  const flat = chartGeometry([[1, 0.2], [2, 0.2]], 100, 50);
  assert.ok(!flat.raw.includes("NaN"));
  assert.equal(chartGeometry([], 100, 50).raw, "");
  assert.equal(chartGeometry([[3, 0.1]], 100, 50).raw, "M50.0 25.0");
});
