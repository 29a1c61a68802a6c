// Shapes of the control server's JSON documents as the views read them (the commands pass
// the server's JSON through; these are the fields the console uses).

export interface ModelRef {
  name: string;
  version: string;
  digest?: string;
}

export interface Device {
  device_id: string;
  tags: Record<string, string>;
  arch: string | null;
  agent_version: string | null;
  active_model: ModelRef | null;
  previous_model: ModelRef | null;
  trust_root_version: number | null;
  last_plan_seq: number | null;
  presence: "online" | "offline" | "unknown" | string;
  presence_changed_ms: number | null;
  first_seen_ms: number;
  last_seen_ms: number;
}

export interface ModelVersionSummary {
  version: string;
  digest: string;
  size: number;
  task?: string;
  pushed_ms: number;
  pushed_by?: string;
  lineage?: Record<string, unknown> | null;
  profile_summary?: ProfileSummary;
}

export interface ProfileFeature {
  name: string;
  bins: number;
  count: number;
  mean: number;
  std: number;
  min: number;
  max: number;
}

export interface ProfileSummary {
  reference_count: number;
  inputs: ProfileFeature[];
  outputs: ProfileFeature[];
  classifier?: { output: string; classes: number; class_counts: number[] } | null;
}

export interface BundleRecord {
  digest: string;
  name: string;
  version: string;
  size: number;
  task: string;
  manifest: Record<string, unknown>;
  signers: string[];
  profile_summary: ProfileSummary;
  manifest_created_ms: number;
  pushed_ms: number;
  pushed_by: string;
}

export type Verdict = "ok" | "warn" | "alert" | "insufficient" | string;

export interface FeatureDrift {
  feature: string;
  kind: "numeric" | "categorical";
  reference_count: number;
  current_count: number;
  bins: { edges?: number[]; categories?: string[] };
  reference_counts: number[];
  current_counts: number[];
  psi: number | null;
  js_distance: number | null;
  normed_mean_shift?: number | null;
  verdict: Verdict;
  reasons: string[];
}

export interface DatasetDrift {
  features: FeatureDrift[];
  judged: number;
  alerting: number;
  drift_share: number;
  verdict: Verdict;
}

export interface WindowDrift {
  windows: number;
  requests: number;
  inputs: DatasetDrift;
  outputs: DatasetDrift;
  not_comparable: string[];
}

export interface DriftReport {
  model: string;
  kind: string;
  key: string;
  from_ms: number;
  to_ms: number;
  verdict: Verdict;
  total: WindowDrift | null;
  buckets: { bucket_start_ms: number; bucket_ms: number; drift: WindowDrift }[];
}

export interface DriftOverviewEntry {
  key: string;
  windows: number;
  requests: number;
  verdict: Verdict;
  alerting_inputs: string[];
  alerting_outputs: string[];
  warning_inputs: string[];
  warning_outputs: string[];
}

export interface DriftAlert {
  id: number;
  model_digest?: string;
  model?: string;
  scope_kind?: string;
  scope_key?: string;
  feature: string;
  opened_ms: number;
  closed_ms: number | null;
  detail: Record<string, unknown>;
  review: string;
  reviewed_by: string | null;
  reviewed_ms: number | null;
  notes: { by?: string; ms?: number; note?: string; text?: string }[];
}

export interface AuditEvent {
  id: number;
  ts_ms: number;
  actor: string;
  action: string;
  subject: string;
  outcome: string;
  reason: string;
  source: string;
  device?: string | null;
  model?: string | null;
}

export interface Moments {
  count: number;
  mean: number;
  m2: number;
  min: number;
  max: number;
}

export interface AggregateWindow {
  windows: number;
  start_ms: number;
  end_ms: number;
  count: number;
  errors: Record<string, number>;
  latency: { counts: number[]; overflow: number; moments: Moments };
  inputs: { name: string; moments: Moments }[];
  outputs: { name: string; moments: Moments }[];
  classifier?: { class_counts: number[] } | null;
}

export interface AggregatesReport {
  buckets?: { bucket_start_ms: number; bucket_ms?: number; aggregate: AggregateWindow }[];
  total?: AggregateWindow | null;
  models?: unknown[];
}
