import type { CaptionResult } from "../api";
import type { BackendKind, CaptionError } from "../backend";
import CaptionWords from "./CaptionWords";

interface Props {
  caption: CaptionResult | null;
  loading: boolean;
  /** a problem with this photo (an unreachable server is shown above the page instead) */
  error: CaptionError | null;
  /** where the caption was written */
  kind: BackendKind | null;
  pinned: number | null;
  onHover: (token: number | null) => void;
  onPin: (token: number | null) => void;
}

function timing(caption: CaptionResult, kind: BackendKind | null): string {
  const total = `${Math.round(caption.timings_ms.total)} ms`;
  if (kind === "device") return `${total} on this device`;
  return caption.batch_size > 1 ? `${total} (batched with ${caption.batch_size - 1} other)` : total;
}

/** The caption as words to point at, or what is happening instead. */
export default function CaptionPanel({ caption, loading, error, kind, pinned, onHover, onPin }: Props) {
  return (
    <div className="rounded-xl bg-white p-4 shadow-sm ring-1 ring-slate-200" aria-live="polite">
      {loading && (
        <p className="flex items-center gap-2 text-slate-600" role="status">
          <span className="h-4 w-4 animate-spin rounded-full border-2 border-amber-500 border-t-transparent" />
          Writing a caption…
        </p>
      )}
      {error && (
        <p role="alert" className="rounded-lg bg-red-50 p-3 text-red-800">
          {error.kind === "input" ? "That file can't be captioned: " : "Something went wrong: "}
          {error.message}
        </p>
      )}
      {caption && (
        <div className="space-y-2">
          <CaptionWords tokens={caption.tokens} pinned={pinned} onHover={onHover} onPin={onPin} />
          <p className="text-xs text-slate-500">
            {caption.attention
              ? "Hover, focus or tap a word to see where the model looked."
              : "No attention maps in this answer."}{" "}
            {timing(caption, kind)}
          </p>
        </div>
      )}
      {!loading && !error && !caption && <p className="text-slate-500">The caption will appear here.</p>}
    </div>
  );
}
