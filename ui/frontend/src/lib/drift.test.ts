import { describe, expect, it } from "vitest";
import { featureNames, overlay, psiGrid, trend } from "./drift";
import type { DriftReport, FeatureDrift, WindowDrift } from "./types";

function feature(name: string, psi: number): FeatureDrift {
  return {
    feature: name,
    kind: "numeric",
    reference_count: 100,
    current_count: 50,
    bins: { edges: [0, 1] },
    reference_counts: [10, 80, 10],
    current_counts: [0, 25, 25],
    psi,
    js_distance: 0.1,
    verdict: psi >= 0.25 ? "alert" : "ok",
    reasons: [],
  };
}

function window(features: FeatureDrift[]): WindowDrift {
  const dataset = { features, judged: features.length, alerting: 0, drift_share: 0, verdict: "ok" };
  return {
    windows: 1,
    requests: 10,
    inputs: dataset,
    outputs: { ...dataset, features: [] },
    not_comparable: [],
  };
}

const report: DriftReport = {
  model: "sha256:ab",
  kind: "cohort",
  key: "*",
  from_ms: 0,
  to_ms: 10,
  verdict: "alert",
  total: window([feature("f1", 0.01), feature("f2", 0.4)]),
  buckets: [
    {
      bucket_start_ms: 1000,
      bucket_ms: 60000,
      drift: window([feature("f1", 0.02), feature("f2", 0.3)]),
    },
    { bucket_start_ms: 61000, bucket_ms: 60000, drift: window([feature("f1", 0.03)]) },
  ],
};

describe("drift views", () => {
  it("lists features and builds the PSI grid with gaps", () => {
    expect(featureNames(report)).toEqual(["f1", "f2"]);
    const grid = psiGrid(report);
    expect(grid("f2", 1000)).toBe(0.3);
    expect(grid("f2", 61000)).toBeNull();
  });

  it("gives a feature's trend per bucket", () => {
    expect(trend(report, "f1")).toEqual([0.02, 0.03]);
    expect(trend(report, "f2")).toEqual([0.3, null]);
  });

  it("overlays reference and current as shares with bin labels", () => {
    const o = overlay(feature("f2", 0.4));
    expect(o.labels).toEqual(["< 0", "0–1", "≥ 1"]);
    expect(o.reference).toEqual([0.1, 0.8, 0.1]);
    expect(o.current).toEqual([0, 0.5, 0.5]);
  });
});
