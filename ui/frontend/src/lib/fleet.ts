// The fleet table's filtering and cohort counts, kept free of Svelte so they are unit tested
// and run fast on 10,000 devices.
import type { Device } from "./types";

export interface FleetFilter {
  /** `key=value` pairs separated by commas or spaces; every pair must match. */
  tags: string;
  /** "" for any, else "online", "offline" or "unknown". */
  status: string;
  /** "" for any, else `name` or `name@version` of the active model. */
  model: string;
  /** Free text matched against the device id. */
  text: string;
}

export const emptyFilter: FleetFilter = { tags: "", status: "", model: "", text: "" };

/** Parses `site=berlin, hw=rpi4` into pairs; returns an error text for a malformed pair. */
export function parseTags(text: string): { pairs: [string, string][]; error: string | null } {
  const pairs: [string, string][] = [];
  for (const part of text.split(/[,\s]+/).filter((p) => p.length > 0)) {
    const eq = part.indexOf("=");
    if (eq <= 0 || eq === part.length - 1) {
      return { pairs, error: `"${part}" is not key=value (e.g. site=berlin)` };
    }
    pairs.push([part.slice(0, eq), part.slice(eq + 1)]);
  }
  return { pairs, error: null };
}

export function modelLabel(device: Device): string {
  const m = device.active_model;
  return m ? `${m.name}@${m.version}` : "";
}

/** The devices that match every condition of `filter`. */
export function filterDevices(devices: Device[], filter: FleetFilter): Device[] {
  const { pairs } = parseTags(filter.tags);
  const text = filter.text.trim().toLowerCase();
  const model = filter.model.trim();
  return devices.filter((d) => {
    if (filter.status && d.presence !== filter.status) return false;
    if (model) {
      const label = modelLabel(d);
      if (model.includes("@") ? label !== model : d.active_model?.name !== model) return false;
    }
    for (const [k, v] of pairs) if (d.tags?.[k] !== v) return false;
    if (text && !d.device_id.toLowerCase().includes(text)) return false;
    return true;
  });
}

export interface CohortCount {
  cohort: string;
  total: number;
  online: number;
  offline: number;
}

/** Devices per value of the tag `key` (devices without it count under "(none)"). */
export function cohortCounts(devices: Device[], key: string): CohortCount[] {
  const counts = new Map<string, CohortCount>();
  for (const d of devices) {
    const cohort = d.tags?.[key] ?? "(none)";
    let c = counts.get(cohort);
    if (!c) {
      c = { cohort, total: 0, online: 0, offline: 0 };
      counts.set(cohort, c);
    }
    c.total += 1;
    if (d.presence === "online") c.online += 1;
    else c.offline += 1;
  }
  return [...counts.values()].sort((a, b) => b.total - a.total || a.cohort.localeCompare(b.cohort));
}

/** Every tag key used in the fleet, sorted. */
export function tagKeys(devices: Device[]): string[] {
  const keys = new Set<string>();
  for (const d of devices) for (const k of Object.keys(d.tags ?? {})) keys.add(k);
  return [...keys].sort();
}

/** Every active model label used in the fleet, sorted. */
export function models(devices: Device[]): string[] {
  const labels = new Set<string>();
  for (const d of devices) {
    const label = modelLabel(d);
    if (label) labels.add(label);
  }
  return [...labels].sort();
}

/** The rows visible in a scrolled window of fixed-height rows, with an overscan margin. */
export function visibleRange(
  scrollTop: number,
  viewport: number,
  rowHeight: number,
  total: number,
  overscan = 8,
): { start: number; end: number } {
  const start = Math.max(0, Math.floor(scrollTop / rowHeight) - overscan);
  const end = Math.min(total, Math.ceil((scrollTop + viewport) / rowHeight) + overscan);
  return { start, end };
}
