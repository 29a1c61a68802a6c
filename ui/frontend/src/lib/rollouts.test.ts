import { describe, expect, it } from "vitest";
import { allowedActions, gateResults, defaultDraft } from "./rollouts";

describe("rollout helpers", () => {
  it("reads the server's gate evaluation", () => {
    const gates = gateResults({
      gates: [
        {
          gate: "error_rate",
          value: 0.01,
          comparison: "<=",
          threshold: 0.05,
          status: "pass",
          detail: "1 of 100",
        },
        {
          gate: "p95_latency_ratio",
          value: null,
          comparison: "<=",
          threshold: 2,
          status: "no_data",
          detail: "",
        },
        {
          gate: "install_failure_rate",
          value: 0.5,
          comparison: "<=",
          threshold: 0,
          status: "fail",
          detail: "1 of 2",
        },
      ],
      judgement: { verdict: "fail", reasons: [] },
    });
    expect(gates.map((g) => [g.gate, g.status, g.passed])).toEqual([
      ["error_rate", "pass", true],
      ["p95_latency_ratio", "no_data", null],
      ["install_failure_rate", "fail", false],
    ]);
    expect(gates[0].comparison).toBe("<=");
    expect(gateResults(null)).toEqual([]);
  });

  it("offers only the actions a state allows", () => {
    expect(allowedActions("running")).toEqual(["pause", "abort", "rollback", "advance"]);
    expect(allowedActions("paused")).toContain("resume");
    expect(allowedActions("aborted")).toEqual([]);
  });

  it("starts the wizard with canary, 10 %, 50 % and 100 % waves", () => {
    expect(defaultDraft().waves.map((w) => w.size)).toEqual(["1", "10%", "50%", "100%"]);
  });
});
