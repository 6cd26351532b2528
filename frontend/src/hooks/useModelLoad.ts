import { useEffect, useState } from "react";
import type { CaptioningBackend, ModelLoad } from "../backend";

/** The load of `backend`'s model in this page, or null for a backend that loads none (the
 * server). */
export function useModelLoad(backend: CaptioningBackend | null): ModelLoad | null {
  const [load, setLoad] = useState<{ for: CaptioningBackend; load: ModelLoad } | null>(null);
  useEffect(() => {
    if (!backend?.watchLoad) return;
    return backend.watchLoad((next) => setLoad({ for: backend, load: next }));
  }, [backend]);
  return load && load.for === backend ? load.load : null;
}
