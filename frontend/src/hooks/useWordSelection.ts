import { useState } from "react";

interface Selection {
  for: unknown;
  hovered: number | null;
  pinned: number | null;
}

/** Which word of `caption` shows its heatmap: the one hovered (or focused), else the one pinned
 * by a click or tap. A new caption starts with none. */
export function useWordSelection(caption: unknown) {
  const [state, setState] = useState<Selection>({ for: null, hovered: null, pinned: null });
  const fresh = { for: caption, hovered: null, pinned: null };
  const own = state.for === caption ? state : fresh;
  const update = (change: Partial<Selection>) =>
    setState((s) => ({ ...(s.for === caption ? s : fresh), ...change }));
  return {
    token: own.hovered ?? own.pinned,
    pinned: own.pinned,
    hover: (hovered: number | null) => update({ hovered }),
    pin: (pinned: number | null) => update({ pinned }),
  };
}
