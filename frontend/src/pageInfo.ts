/** `page.json` beside the page says where it runs (src/captioner/page.py writes and serves it):
 * `captioner serve` answers that a server is behind it, `captioner export --web` writes that the
 * site is static with the model beside it. The page then asks only for what is there, so no host
 * logs a 404 for the other's files. */

export const PAGE_FILE = "page.json";
export const PAGE_FORMAT = "captioner-page";

export interface PageInfo {
  /** whether the `captioner serve` API is behind the page */
  server: boolean;
  /** whether an exported model is beside the page (model/captioner.json) */
  deviceModel: boolean;
}

/** What a page without `page.json` does (`npm run dev`, the bare build on another host): try
 * both. */
export const UNKNOWN_PAGE: PageInfo = { server: true, deviceModel: true };

/** The page's `page.json`, or `UNKNOWN_PAGE` when it has none that reads as one. */
export async function readPageInfo(): Promise<PageInfo> {
  try {
    const response = await fetch(new URL(PAGE_FILE, document.baseURI).href, { cache: "no-cache" });
    const body = response.ok ? await response.json() : null;
    if (body?.format === PAGE_FORMAT && typeof body.server === "boolean" && typeof body.device_model === "boolean") {
      return { server: body.server, deviceModel: body.device_model };
    }
  } catch {
    // not reachable, or not JSON (a dev server's index.html fallback): as if there were none
  }
  return UNKNOWN_PAGE;
}
