import { useEffect, useMemo, useState } from "react";
import { decodingChoices, modelName } from "../backend";
import type { BackendKind } from "../backend";
import { useBackendChoice } from "../hooks/useBackendChoice";
import { useCaptioning } from "../hooks/useCaptioning";
import { useDeviceModel } from "../hooks/useDeviceModel";
import { useImageInput } from "../hooks/useImageInput";
import { useModelLoad } from "../hooks/useModelLoad";
import { usePageInfo } from "../hooks/usePageInfo";
import { useServerInfo } from "../hooks/useServerInfo";
import { useWordSelection } from "../hooks/useWordSelection";
import { sentenceOf } from "../sentence";
import CaptionPanel from "./CaptionPanel";
import Controls from "./Controls";
import ModelFooter from "./ModelFooter";
import OfflineBanner from "./OfflineBanner";
import PhotoPanel from "./PhotoPanel";
import type { View } from "./PhotoPanel";
import ToggleGroup from "./ToggleGroup";
import { LIVE_INTERVAL_MS } from "./WebcamView";

const VIEWS = [
  { value: "image", label: "Image" },
  { value: "webcam", label: "Webcam" },
] as const;

const BACKENDS = [
  { value: "device", label: "On this device" },
  { value: "server", label: "Server" },
] as const;

const NO_BACKEND =
  "No captioning server answers here, and no model came with this page " +
  "(`captioner export MODEL --web DIR` writes a page that captions on this device).";

export default function App() {
  const page = usePageInfo();
  const { server, retry } = useServerInfo(page && page.server);
  const device = useDeviceModel(page && page.deviceModel);
  const { backend, kinds, choose } = useBackendChoice(server, device);
  const modelLoad = useModelLoad(backend);
  const [view, setView] = useState<View>("image");
  const [beamChoice, setBeamChoice] = useState<number | null>(null); // null: the model's default
  const [layer, setLayer] = useState<number | null>(null);
  const [head, setHead] = useState<number | null>(null);

  const model = backend?.model ?? null;
  const numBeamsChoices = model ? decodingChoices(model) : [];
  const numBeams =
    beamChoice !== null && numBeamsChoices.includes(beamChoice)
      ? beamChoice
      : (model?.generation.num_beams ?? 1);
  const captioning = useCaptioning(backend, numBeams);
  // Each view shows only its own pictures: the webcam view never shows the last photo.
  const shown = !captioning.picture || captioning.picture.source === view ? captioning : null;
  const caption = shown?.caption ?? null;
  const sentence = useMemo(() => caption && sentenceOf(caption.caption, caption.tokens), [caption]);
  const selection = useWordSelection(caption);
  const { dragging } = useImageInput((file) => {
    setView("image");
    captioning.show(file, file.name, "image");
  });

  const title = model ? `captioner: ${modelName(model)}` : "captioner";
  useEffect(() => {
    document.title = title;
  }, [title]);

  // Nothing to caption with: the server is down or absent, and no model came with the page.
  const unreachable =
    !backend && (server.status === "unavailable" || server.status === "absent") && device.status !== "checking"
      ? server.status === "unavailable" && server.error.kind === "offline"
        ? server.error.message
        : NO_BACKEND
      : null;
  const problem = device.status === "failed" && !backend ? device.error : (shown?.error ?? null);
  const attention = caption?.attention ?? null;

  return (
    <div className="mx-auto flex min-h-screen max-w-6xl flex-col px-4 py-4 sm:px-6">
      <header className="flex flex-wrap items-center justify-between gap-3 pb-4">
        <div>
          <h1 className="text-2xl font-bold tracking-tight">captioner</h1>
          <p className="text-sm text-slate-600">
            Caption a photo, then point at a word to see where the model looked.
          </p>
        </div>
        <div className="flex flex-wrap gap-2">
          {kinds.length > 1 && backend && (
            <ToggleGroup<BackendKind>
              label="Where to caption"
              options={BACKENDS}
              value={backend.kind}
              onChange={choose}
            />
          )}
          <ToggleGroup<View> label="Image source" options={VIEWS} value={view} onChange={setView} />
        </div>
      </header>

      {unreachable && <OfflineBanner message={unreachable} onRetry={retry} />}

      <main className="grid flex-1 gap-6 md:grid-cols-[minmax(0,3fr)_minmax(0,2fr)]">
        <PhotoPanel
          view={view}
          picture={shown?.picture ?? null}
          caption={caption}
          token={selection.token}
          layer={layer}
          head={head}
          onPhoto={captioning.show}
          busy={captioning.loading || !backend}
          liveIntervalMs={backend?.kind === "device" ? 0 : LIVE_INTERVAL_MS}
        />
        <section aria-label="Caption" className="min-w-0 space-y-4">
          <CaptionPanel
            caption={caption}
            sentence={sentence}
            loading={shown?.loading ?? false}
            error={problem}
            kind={backend?.kind ?? null}
            modelLoad={modelLoad}
            pinned={selection.pinned}
            onHover={selection.hover}
            onPin={selection.pin}
          />
          <div className="rounded-xl bg-white p-4 shadow-sm ring-1 ring-slate-200">
            <Controls
              numBeamsChoices={numBeamsChoices}
              numBeams={numBeams}
              onNumBeams={setBeamChoice}
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
