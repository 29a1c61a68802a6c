// Hash routing: `#/fleet`, `#/device/<id>`, `#/models/<name>`, `#/rollouts`, `#/drift`,
// `#/audit`, `#/connect`. The hash keeps views linkable and the back button working.

export interface Route {
  view: string;
  param: string | null;
}

export function parseHash(hash: string): Route {
  const parts = hash.replace(/^#\/?/, "").split("/");
  const view = parts[0] || "fleet";
  const param = parts.length > 1 ? decodeURIComponent(parts.slice(1).join("/")) : null;
  return { view, param };
}

export const route = $state<Route>(parseHash(typeof location === "undefined" ? "" : location.hash));

if (typeof window !== "undefined") {
  window.addEventListener("hashchange", () => {
    const next = parseHash(location.hash);
    route.view = next.view;
    route.param = next.param;
  });
}

export function go(view: string, param?: string) {
  location.hash = param ? `#/${view}/${encodeURIComponent(param)}` : `#/${view}`;
}
