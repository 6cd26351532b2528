import { useCallback, useEffect, useState } from "react";
import { getHealth, getModel, serverBackend } from "../api";
import type { ModelInfo } from "../api";
import { asCaptionError } from "../backend";
import type { CaptionError, CaptioningBackend } from "../backend";

export type ServerState =
  | { status: "connecting" }
  | { status: "online"; info: ModelInfo; backend: CaptioningBackend }
  /** not reachable (`offline`), or no captioner server at all (a static site: `input`) */
  | { status: "unavailable"; error: CaptionError };

/** The `captioner serve` API behind the page, if any: its model, and a backend captioning there.
 * `retry` asks again (the server may have been started since). */
export function useServerInfo(): { server: ServerState; retry: () => void } {
  const [server, setServer] = useState<ServerState>({ status: "connecting" });

  const retry = useCallback(() => {
    let current = true;
    getHealth()
      .then(() => getModel())
      .then((info) => current && setServer({ status: "online", info, backend: serverBackend(info) }))
      .catch((error) => current && setServer({ status: "unavailable", error: asCaptionError(error) }));
    return () => {
      current = false;
    };
  }, []);
  useEffect(retry, [retry]);

  return { server, retry };
}
