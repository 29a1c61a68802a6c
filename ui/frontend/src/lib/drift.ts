// Turning drift reports into what the Drift view draws: the feature × bucket PSI grid, a
// feature's trend, and its reference vs current histogram (as shares, so both sides compare).
import type { DriftReport, FeatureDrift, WindowDrift } from "./types";

/** Every feature (inputs, then outputs) of a window's drift. */
export function allFeatures(drift: WindowDrift | null | undefined): FeatureDrift[] {
  if (!drift) return [];
  return [...drift.inputs.features, ...drift.outputs.features];
}

/** Feature names across the report, in order of first appearance. */
export function featureNames(report: DriftReport): string[] {
  const names: string[] = [];
  const add = (f: FeatureDrift) => {
    if (!names.includes(f.feature)) names.push(f.feature);
  };
  allFeatures(report.total).forEach(add);
  report.buckets.forEach((b) => allFeatures(b.drift).forEach(add));
  return names;
}

/** PSI of `feature` in each bucket (null where the bucket has no figure). */
export function trend(
  report: DriftReport,
  feature: string,
  metric: "psi" | "js_distance" = "psi",
): (number | null)[] {
  return report.buckets.map((b) => {
    const f = allFeatures(b.drift).find((x) => x.feature === feature);
    const v = f?.[metric];
    return typeof v === "number" && Number.isFinite(v) ? v : null;
  });
}

/** A lookup `psi(feature, bucketStart)` for the heatmap. */
export function psiGrid(report: DriftReport): (feature: string, bucket: number) => number | null {
  const grid = new Map<string, number>();
  for (const b of report.buckets) {
    for (const f of allFeatures(b.drift)) {
      if (typeof f.psi === "number") grid.set(`${f.feature}\u0000${b.bucket_start_ms}`, f.psi);
    }
  }
  return (feature, bucket) => grid.get(`${feature}\u0000${bucket}`) ?? null;
}

export interface Overlay {
  labels: string[];
  reference: number[];
  current: number[];
}

/** Reference and current histogram of a feature as shares of their totals, with bin labels
 * (`< e0`, `e0–e1`, …, `≥ ek` for numeric features; the categories otherwise). */
export function overlay(feature: FeatureDrift): Overlay {
  const share = (counts: number[]) => {
    const total = counts.reduce((s, c) => s + c, 0);
    return counts.map((c) => (total > 0 ? c / total : 0));
  };
  let labels: string[];
  const edges = feature.bins.edges;
  if (edges && feature.reference_counts.length === edges.length + 1) {
    const fmt = (v: number) => Number(v.toPrecision(3)).toString();
    labels = feature.reference_counts.map((_, i) =>
      i === 0
        ? `< ${fmt(edges[0])}`
        : i === edges.length
          ? `≥ ${fmt(edges[edges.length - 1])}`
          : `${fmt(edges[i - 1])}–${fmt(edges[i])}`,
    );
  } else if (feature.bins.categories) {
    labels = [...feature.bins.categories];
  } else {
    labels = feature.reference_counts.map((_, i) => `bin ${i}`);
  }
  return {
    labels,
    reference: share(feature.reference_counts),
    current: share(feature.current_counts),
  };
}
