import { useCallback, useEffect, useRef, useState } from "react";
import { ApiError, captionImage, getHealth, getModel } from "../api";
import type { CaptionResult, ModelInfo } from "../api";
import { useImageInput } from "../useImageInput";
import CaptionWords from "./CaptionWords";
import Controls from "./Controls";
import ImageView from "./ImageView";
import ModelFooter from "./ModelFooter";
import WebcamView from "./WebcamView";

type View = "image" | "webcam";

interface Picture {
  blob: Blob;
  url: string;
  name: string;
}

const DEFAULT_BEAM_SIZE = 3;

export default function App() {
  const [view, setView] = useState<View>("image");
  const [picture, setPicture] = useState<Picture | null>(null);
  const [result, setResult] = useState<{ for: string; caption: CaptionResult } | null>(null);
  const [loading, setLoading] = useState(false);
  const [error, setError] = useState<ApiError | null>(null);
  const [model, setModel] = useState<ModelInfo | null>(null);
  const [beamSize, setBeamSize] = useState(DEFAULT_BEAM_SIZE);
  const [layer, setLayer] = useState<number | null>(null);
  const [head, setHead] = useState<number | null>(null);
  const [hovered, setHovered] = useState<number | null>(null);
  const [pinned, setPinned] = useState<number | null>(null);
  const inFlight = useRef<AbortController | null>(null);
  const filePicker = useRef<HTMLInputElement>(null);

  const connect = useCallback(() => {
    getHealth()
      .then(() => getModel())
      .then((info) => {
        setModel(info);
        setError((e) => (e?.kind === "offline" ? null : e));
      })
      .catch((e) => setError(e instanceof ApiError ? e : new ApiError(String(e), "server")));
  }, []);
  useEffect(connect, [connect]);

  const caption = useCallback(async (target: Picture, beam: number) => {
    inFlight.current?.abort();
    const controller = new AbortController();
    inFlight.current = controller;
    setLoading(true);
    setError(null);
    try {
      const answer = await captionImage(target.blob, { beamSize: beam }, controller.signal);
      setResult({ for: target.url, caption: answer });
      setPinned(null);
      setHovered(null);
    } catch (e) {
      if (controller.signal.aborted) return;
      const failure = e instanceof ApiError ? e : new ApiError(String(e), "server");
      setError(failure);
      if (failure.kind === "input") {
        // Not a picture after all: back to the drop target rather than a broken image.
        setPicture((shown) => (shown === target ? null : shown));
        URL.revokeObjectURL(target.url);
      }
    } finally {
      if (inFlight.current === controller) {
        inFlight.current = null;
        setLoading(false);
      }
    }
  }, []);

  const show = useCallback(
    (blob: Blob, name: string) => {
      const next = { blob, url: URL.createObjectURL(blob), name };
      setPicture((previous) => {
        if (previous) URL.revokeObjectURL(previous.url);
        return next;
      });
      void caption(next, beamSize);
    },
    [beamSize, caption],
  );

  const { dragging } = useImageInput((file) => {
    setView("image");
    show(file, file.name);
  });

  const onBeamSize = (beam: number) => {
    setBeamSize(beam);
    if (picture) void caption(picture, beam);
  };

  const chooseButton = (
    <button
      type="button"
      onClick={() => filePicker.current?.click()}
      className="rounded-lg bg-amber-500 px-4 py-2 font-semibold text-slate-950 shadow-sm hover:bg-amber-400 focus-visible:outline-2 focus-visible:outline-offset-2 focus-visible:outline-amber-600"
    >
      {picture ? "Choose another photo" : "Choose a photo"}
    </button>
  );

  const current = result && picture && result.for === picture.url ? result.caption : null;
  const attention = current?.attention ?? null;
  const token = hovered ?? pinned;
  const offline = error?.kind === "offline";

  return (
    <div className="mx-auto flex min-h-screen max-w-6xl flex-col px-4 py-4 sm:px-6">
      <header className="flex flex-wrap items-center justify-between gap-3 pb-4">
        <div>
          <h1 className="text-2xl font-bold tracking-tight">captioner</h1>
          <p className="text-sm text-slate-600">
            Caption a photo, then point at a word to see where the model looked.
          </p>
        </div>
        <div role="group" aria-label="Image source" className="flex rounded-lg bg-slate-200 p-1">
          {(["image", "webcam"] as const).map((v) => (
            <button
              key={v}
              type="button"
              aria-pressed={view === v}
              onClick={() => setView(v)}
              className="rounded-md px-3 py-1.5 text-sm font-semibold text-slate-600 focus-visible:outline-2 focus-visible:outline-amber-500 aria-pressed:bg-white aria-pressed:text-slate-950 aria-pressed:shadow-sm"
            >
              {v === "image" ? "Image" : "Webcam"}
            </button>
          ))}
        </div>
      </header>

      {offline && (
        <div
          role="alert"
          className="mb-4 flex flex-wrap items-center justify-between gap-2 rounded-xl border border-red-200 bg-red-50 px-4 py-3 text-red-800"
        >
          <span>{error.message}</span>
          <button
            type="button"
            onClick={connect}
            className="rounded-lg border border-red-300 bg-white px-3 py-1 text-sm font-semibold hover:bg-red-100"
          >
            Retry
          </button>
        </div>
      )}

      <main className="grid flex-1 gap-6 md:grid-cols-[minmax(0,3fr)_minmax(0,2fr)]">
        <section aria-label={view === "image" ? "Photo" : "Webcam"} className="min-w-0 space-y-4">
          {view === "webcam" && (
            <WebcamView onFrame={(frame) => show(frame, "webcam frame")} busy={loading} />
          )}
          {picture ? (
            <div>
              {view === "webcam" && (
                <p className="mb-1 text-sm font-medium text-slate-600">Last captured frame</p>
              )}
              <ImageView
                maxHeight={view === "webcam" ? "30vh" : "65vh"}
                src={picture.url}
                alt={current ? `Photo: ${current.caption}` : `Photo being captioned: ${picture.name}`}
                attention={attention}
                token={token}
                layer={layer}
                head={head}
              />
            </div>
          ) : (
            view === "image" && (
              <div className="flex min-h-64 flex-col items-center justify-center gap-3 rounded-xl border-2 border-dashed border-slate-300 bg-white p-8 text-center">
                <p className="text-lg font-semibold">Drop a photo anywhere on the page</p>
                <p className="text-sm text-slate-600">or paste one (Ctrl+V), or</p>
                {chooseButton}
              </div>
            )
          )}
          {view === "image" && picture && <div className="flex justify-center">{chooseButton}</div>}
          <input
            ref={filePicker}
            type="file"
            accept="image/*"
            className="sr-only"
            tabIndex={-1}
            aria-label="Photo file"
            onChange={(e) => {
              const file = e.target.files?.[0];
              if (file) show(file, file.name);
              e.target.value = "";
            }}
          />
        </section>

        <section aria-label="Caption" className="min-w-0 space-y-4">
          <div className="rounded-xl bg-white p-4 shadow-sm ring-1 ring-slate-200" aria-live="polite">
            {loading && (
              <p className="flex items-center gap-2 text-slate-600" role="status">
                <span className="h-4 w-4 animate-spin rounded-full border-2 border-amber-500 border-t-transparent" />
                Writing a caption…
              </p>
            )}
            {error && !offline && (
              <p role="alert" className="rounded-lg bg-red-50 p-3 text-red-800">
                {error.kind === "input" ? "That file can't be captioned: " : "Something went wrong: "}
                {error.message}
              </p>
            )}
            {current && (
              <div className="space-y-2">
                <CaptionWords
                  tokens={current.tokens}
                  pinned={pinned}
                  onHover={setHovered}
                  onPin={setPinned}
                />
                <p className="text-xs text-slate-500">
                  {attention
                    ? "Hover, focus or tap a word to see where the model looked."
                    : "No attention maps in this answer."}{" "}
                  {Math.round(current.timings_ms.total)} ms
                  {current.batch_size > 1 && ` (batched with ${current.batch_size - 1} other)`}
                </p>
              </div>
            )}
            {!loading && !error && !current && (
              <p className="text-slate-500">The caption will appear here.</p>
            )}
          </div>
          <div className="rounded-xl bg-white p-4 shadow-sm ring-1 ring-slate-200">
            <Controls
              beamSize={beamSize}
              onBeamSize={onBeamSize}
              layers={attention?.layers ?? 0}
              heads={attention?.heads ?? 0}
              layer={layer}
              head={head}
              onLayer={setLayer}
              onHead={setHead}
            />
          </div>
        </section>
      </main>

      {model && <ModelFooter model={model} />}

      {dragging && (
        <div className="pointer-events-none fixed inset-0 z-10 flex items-center justify-center bg-amber-400/30 backdrop-blur-sm">
          <p className="rounded-2xl bg-white px-8 py-6 text-xl font-semibold shadow-lg">
            Drop the photo to caption it
          </p>
        </div>
      )}
    </div>
  );
}
