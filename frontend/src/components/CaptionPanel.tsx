import type { CaptionResult } from "../api";
import type { BackendKind, CaptionError, ModelLoad } from "../backend";
import type { Sentence } from "../sentence";
import CaptionWords from "./CaptionWords";
import CopyButton from "./CopyButton";

interface Props {
  caption: CaptionResult | null;
  /** the caption as a sentence (sentenceOf) */
  sentence: Sentence | null;
  loading: boolean;
  /** a problem with this photo (an unreachable server is shown above the page instead) */
  error: CaptionError | null;
  /** where the caption was written */
  kind: BackendKind | null;
  /** the model's load in this page (device backend), else null */
  modelLoad: ModelLoad | null;
  pinned: number | null;
  onHover: (token: number | null) => void;
  onPin: (token: number | null) => void;
}

const megabytes = (bytes: number) => `${(bytes / 1e6).toFixed(1)} MB`;

/** How long the caption took; on the device, and the model's load apart from it. */
function timing(caption: CaptionResult, kind: BackendKind | null, load: ModelLoad | null): string {
  const total = `${Math.round(caption.timings_ms.total)} ms`;
  if (kind === "device") {
    const loaded =
      load?.phase === "ready"
        ? ` · model (${megabytes(load.loadedBytes)}) loaded in ${(load.ms / 1000).toFixed(1)} s`
        : "";
    return `${total} on this device${loaded}`;
  }
  return caption.batch_size > 1 ? `${total} (batched with ${caption.batch_size - 1} other)` : total;
}

/** What is happening while a caption is written: the model's download and start-up first,
 * when it is loading in this page. */
function Progress({ load }: { load: ModelLoad | null }) {
  const downloading = load?.phase === "downloading";
  const starting = load?.phase === "starting";
  const percent = downloading
    ? load.totalBytes
      ? Math.min(100, Math.round((100 * load.loadedBytes) / load.totalBytes))
      : null
    : 100;
  // The figures change with every chunk: out of the live region's announcements (the bar
  // carries them as its value).
  const figures = downloading
    ? load.totalBytes
      ? `${(load.loadedBytes / 1e6).toFixed(1)} of ${megabytes(load.totalBytes)}`
      : megabytes(load.loadedBytes)
    : null;
  const label = downloading
    ? "Downloading the model"
    : starting
      ? `Starting the model (${megabytes(load.loadedBytes)})…`
      : "Writing a caption…";
  return (
    <div role="status" className="space-y-2">
      <p className="flex items-center gap-2 text-slate-600">
        <span className="h-4 w-4 shrink-0 animate-spin rounded-full border-2 border-amber-500 border-t-transparent" />
        <span>
          {label}
          {figures && <span aria-hidden="true">: {figures}</span>}
        </span>
      </p>
      {(downloading || starting) && (
        <div
          role="progressbar"
          aria-label="Loading the model"
          aria-valuemin={0}
          aria-valuemax={100}
          aria-valuenow={percent ?? undefined}
          aria-valuetext={figures ?? undefined}
          className="h-2 overflow-hidden rounded-full bg-slate-200"
        >
          <div
            className={`h-full rounded-full bg-amber-500 transition-[width] ${percent === null ? "w-1/3 animate-pulse" : ""}`}
            style={percent === null ? undefined : { width: `${percent}%` }}
          />
        </div>
      )}
    </div>
  );
}

/** The caption as a sentence of words to point at, to copy, or what is happening instead. */
export default function CaptionPanel(props: Props) {
  const { caption, sentence, loading, error, kind, modelLoad } = props;
  return (
    <div className="rounded-xl bg-white p-4 shadow-sm ring-1 ring-slate-200" aria-live="polite">
      {loading && <Progress load={modelLoad} />}
      {error && (
        <p role="alert" className="rounded-lg bg-red-50 p-3 text-red-800">
          {error.kind === "input" ? "That file can't be captioned: " : "Something went wrong: "}
          {error.message}
        </p>
      )}
      {caption && sentence && (
        <div className="space-y-2">
          <div className="flex items-start justify-between gap-3">
            <CaptionWords sentence={sentence} pinned={props.pinned} onHover={props.onHover} onPin={props.onPin} />
            <CopyButton text={sentence.text} />
          </div>
          <p className="text-xs text-slate-500">
            {caption.attention
              ? "Hover, focus or tap a word to see where the model looked."
              : "No attention maps in this answer."}{" "}
            {timing(caption, kind, modelLoad)}
          </p>
        </div>
      )}
      {!loading && !error && !caption && <p className="text-slate-500">The caption will appear here.</p>}
    </div>
  );
}
