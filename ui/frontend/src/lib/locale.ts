// Under LANG=C (servers, CI, a bare X session) WebKitGTK reports "C" as navigator.language,
// which Intl refuses ("invalid language tag"); uPlot formats with it as soon as it loads. This
// module is imported first and replaces such a tag with en-US before anything formats.
function valid(tag: string | undefined): boolean {
  if (!tag) return false;
  try {
    new Intl.NumberFormat(tag);
    return true;
  } catch {
    return false;
  }
}

if (typeof navigator !== "undefined" && !valid(navigator.language)) {
  Object.defineProperty(navigator, "language", { value: "en-US", configurable: true });
  Object.defineProperty(navigator, "languages", { value: ["en-US"], configurable: true });
}

export const locale = typeof navigator !== "undefined" ? navigator.language : "en-US";
