// Reading a rollout document for the view: gate results per wave, the actions its state
// allows, and the wizard's defaults.
import type { GateDraft, RolloutAction, RolloutDraft, WaveDraft } from "./bindings";

export interface GateResult {
  gate: string;
  value: number | null;
  threshold: number | null;
  passed: boolean | null;
  /** `<=` or `>=`: how the value must compare with the threshold. */
  comparison: string;
  /** pass, fail, no_data, waiting, … */
  status: string;
  detail?: string;
}

/** Gate results from the rollout's `gates` field, whatever of the known shapes it has:
 * a list of `{gate|name, value, threshold, passed|ok|status}` or an object keyed by gate. */
export function gateResults(gates: unknown): GateResult[] {
  const toResult = (name: string, g: Record<string, unknown>): GateResult => {
    const n = (v: unknown) => (typeof v === "number" && Number.isFinite(v) ? v : null);
    let passed: boolean | null = null;
    if (typeof g.passed === "boolean") passed = g.passed;
    else if (typeof g.ok === "boolean") passed = g.ok;
    else if (typeof g.status === "string")
      passed =
        g.status === "pass" || g.status === "passed"
          ? true
          : g.status === "fail" || g.status === "failed"
            ? false
            : null;
    else if (typeof g.verdict === "string")
      passed = g.verdict === "pass" ? true : g.verdict === "fail" ? false : null;
    return {
      gate: String(g.gate ?? g.name ?? name),
      value: n(g.value ?? g.actual),
      threshold: n(g.threshold ?? g.limit),
      passed,
      comparison: typeof g.comparison === "string" ? g.comparison : "",
      status:
        typeof g.status === "string"
          ? g.status
          : passed === true
            ? "pass"
            : passed === false
              ? "fail"
              : "waiting",
      detail:
        typeof g.detail === "string"
          ? g.detail
          : typeof g.reason === "string"
            ? g.reason
            : typeof g.status === "string"
              ? g.status
              : undefined,
    };
  };
  if (Array.isArray(gates))
    return gates
      .filter((g) => g && typeof g === "object")
      .map((g, i) => toResult(`gate ${i + 1}`, g as Record<string, unknown>));
  if (gates && typeof gates === "object") {
    const object = gates as Record<string, unknown>;
    if (Array.isArray(object.results)) return gateResults(object.results);
    if (Array.isArray(object.gates)) return gateResults(object.gates);
    return Object.entries(object)
      .filter(([, g]) => g && typeof g === "object")
      .map(([name, g]) => toResult(name, g as Record<string, unknown>));
  }
  return [];
}

/** The operator actions a rollout in `state` allows. */
export function allowedActions(state: string): RolloutAction[] {
  switch (state) {
    case "approved":
      return ["start", "abort"];
    case "running":
      return ["pause", "abort", "rollback", "advance"];
    case "paused":
      return ["resume", "abort", "rollback"];
    case "awaiting_approval":
      return ["abort"];
    case "completed":
      return ["rollback"];
    default:
      return [];
  }
}

/** What each action does, for its confirmation. */
export const consequences: Record<RolloutAction, string> = {
  start: "Devices of the first wave receive the signed plan and install the new model.",
  pause: "No more devices are admitted and no gate is judged until you resume.",
  resume: "Admissions continue; the current wave soaks again before it is judged.",
  abort: "The rollout stops for good. Devices keep the model they run now.",
  rollback: "Every admitted device is sent back to the plan's fallback model.",
  advance: "The next wave starts now (its devices install the new model).",
};

export function defaultGates(): GateDraft {
  return {
    min_devices_reporting: 1,
    min_requests: 20,
    max_install_failure_rate: 0,
    max_error_rate: 0.05,
    max_p95_latency_ratio: 2,
    max_output_psi: null,
    max_drift_psi: null,
    max_prediction_drift_psi: null,
    min_shadow_agreement: null,
  };
}

export function defaultWave(size: string): WaveDraft {
  return { size, soak_seconds: 600, gates: defaultGates() };
}

export function defaultDraft(): RolloutDraft {
  return {
    id: null,
    bundle: "",
    fallback: null,
    cohort: "*",
    waves: [defaultWave("1"), defaultWave("10%"), defaultWave("50%"), defaultWave("100%")],
    holdout_percent: 0,
    health: {
      watch_seconds: 300,
      min_requests: 20,
      max_error_rate: 0.05,
      max_p95_latency_ratio: 2,
    },
    expires_in_hours: 72,
    advance: "auto",
    on_gate_fail: "pause",
  };
}
