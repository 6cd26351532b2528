import { useState } from "react";
import type { BackendKind, CaptioningBackend } from "../backend";
import type { DeviceState } from "./useDeviceModel";
import type { ServerState } from "./useServerInfo";

export interface BackendChoice {
  /** the backend captioning now, or null while none is ready */
  backend: CaptioningBackend | null;
  /** the backends this page can use: a switch is offered when there are two */
  kinds: BackendKind[];
  choose: (kind: BackendKind) => void;
}

/** Server or this device: the one the user picked while both are there; otherwise the server
 * when it answers (the page as `captioner serve` serves it), else the model beside the page. */
export function useBackendChoice(server: ServerState, device: DeviceState): BackendChoice {
  const [preferred, setPreferred] = useState<BackendKind | null>(null);
  const ready: Record<BackendKind, CaptioningBackend | null> = {
    device: device.status === "ready" ? device.backend : null,
    server: server.status === "online" ? server.backend : null,
  };
  const kinds = (["device", "server"] as const).filter((kind) => ready[kind]);
  const fallback = ready.server ? "server" : ready.device ? "device" : null;
  const kind = preferred && ready[preferred] ? preferred : fallback;
  return { backend: kind && ready[kind], kinds, choose: setPreferred };
}
