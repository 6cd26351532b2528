import { useCallback, useEffect, useState } from "react";
import { getHealth, getModel, serverBackend } from "../api";
import type { ModelInfo } from "../api";
import { asCaptionError } from "../backend";
import type { CaptionError, CaptioningBackend } from "../backend";

export type ServerState =
  | { status: "connecting" }
  | { status: "online"; info: ModelInfo; backend: CaptioningBackend }
  /** not reachable (`offline`), or no captioner server at all (`input`) */
  | { status: "unavailable"; error: CaptionError }
  /** the page knows it has no server (a static site): none is asked for */
  | { status: "absent" };

/** The `captioner serve` API behind the page, if any: its model, and a backend captioning there.
 * `wanted`: whether to look for it (false: the page has none; null: not known yet). `retry` asks
 * again (the server may have been started since). */
export function useServerInfo(wanted: boolean | null): { server: ServerState; retry: () => void } {
  const [server, setServer] = useState<ServerState>({ status: "connecting" });

  const retry = useCallback(() => {
    if (wanted === null) return;
    if (!wanted) return setServer({ status: "absent" });
    let current = true;
    getHealth()
      .then(() => getModel())
      .then((info) => current && setServer({ status: "online", info, backend: serverBackend(info) }))
      .catch((error) => current && setServer({ status: "unavailable", error: asCaptionError(error) }));
    return () => {
      current = false;
    };
  }, [wanted]);
  useEffect(retry, [retry]);

  return { server, retry };
}
