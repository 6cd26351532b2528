import { useEffect, useState } from "react";
import { asCaptionError } from "../backend";
import type { CaptionError, CaptioningBackend } from "../backend";
import { findDeviceModel, MODEL_DIR } from "../device/deviceBackend";

export type DeviceState =
  | { status: "checking" }
  /** this page was not exported with a model (`captioner export --web` writes one) */
  | { status: "absent" }
  | { status: "ready"; backend: CaptioningBackend }
  | { status: "failed"; error: CaptionError };

/** The model exported beside the page, captioning in this browser, if there is one. `wanted`:
 * whether to look for it (false: the page has none; null: not known yet). Only its description
 * is read here; the weights load on the first caption. */
export function useDeviceModel(wanted: boolean | null, directory = MODEL_DIR): DeviceState {
  const [state, setState] = useState<DeviceState>({ status: "checking" });
  useEffect(() => {
    if (wanted === null) return;
    if (!wanted) return setState({ status: "absent" });
    let current = true;
    findDeviceModel(directory)
      .then((backend) => current && setState(backend ? { status: "ready", backend } : { status: "absent" }))
      .catch((error) => current && setState({ status: "failed", error: asCaptionError(error) }));
    return () => {
      current = false;
    };
  }, [wanted, directory]);
  return state;
}
