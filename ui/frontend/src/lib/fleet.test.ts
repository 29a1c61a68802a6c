import { describe, expect, it } from "vitest";
import { cohortCounts, filterDevices, parseTags, visibleRange, emptyFilter, models } from "./fleet";
import { device } from "./testing";

const fleet = Array.from({ length: 10_000 }, (_, i) => device(i));

describe("fleet filters", () => {
  it("parses tag selectors and names a malformed pair", () => {
    expect(parseTags("site=berlin, hw=rpi4").pairs).toEqual([
      ["site", "berlin"],
      ["hw", "rpi4"],
    ]);
    expect(parseTags("site").error).toContain('"site" is not key=value');
    expect(parseTags("").pairs).toEqual([]);
  });

  it("filters 10,000 devices by tags, status and model quickly", () => {
    const started = performance.now();
    const shown = filterDevices(fleet, {
      ...emptyFilter,
      tags: "site=berlin",
      status: "online",
      model: "fraud@2.0.0",
    });
    const took = performance.now() - started;
    expect(shown.length).toBeGreaterThan(0);
    for (const d of shown) {
      expect(d.tags.site).toBe("berlin");
      expect(d.presence).toBe("online");
      expect(d.active_model?.version).toBe("2.0.0");
    }
    expect(shown.length).toBe(
      fleet.filter((d, i) => i % 3 === 0 && i % 5 !== 0 && i % 4 === 0).length,
    );
    expect(took).toBeLessThan(100);
  });

  it("matches a model by name alone or by name@version", () => {
    expect(filterDevices(fleet, { ...emptyFilter, model: "fraud" }).length).toBe(10_000);
    expect(filterDevices(fleet, { ...emptyFilter, model: "fraud@1.0.0" }).length).toBe(7_500);
    expect(models(fleet)).toEqual(["fraud@1.0.0", "fraud@2.0.0"]);
  });

  it("counts devices per cohort, biggest first", () => {
    const counts = cohortCounts(fleet.slice(0, 10), "site");
    expect(counts).toEqual([
      { cohort: "munich", total: 6, online: 5, offline: 1 },
      { cohort: "berlin", total: 4, online: 3, offline: 1 },
    ]);
    expect(cohortCounts([device(1, { tags: {} })], "site")[0].cohort).toBe("(none)");
  });

  it("renders only the rows in view", () => {
    expect(visibleRange(0, 480, 32, 10_000)).toEqual({ start: 0, end: 23 });
    expect(visibleRange(32 * 5000, 480, 32, 10_000)).toEqual({ start: 4992, end: 5023 });
    expect(visibleRange(32 * 9990, 480, 32, 10_000).end).toBe(10_000);
  });
});
