import { useRef } from "react";
import type { CaptionResult } from "../api";
import type { Picture, PictureSource } from "../hooks/useCaptioning";
import ImageView from "./ImageView";
import WebcamView from "./WebcamView";

export type View = PictureSource;

interface Props {
  view: View;
  /** the picture to show: one from this view's source, or null */
  picture: Picture | null;
  caption: CaptionResult | null;
  /** the word whose heatmap to show, and which layer and head (null: the mean) */
  token: number | null;
  layer: number | null;
  head: number | null;
  onPhoto: (blob: Blob, name: string, source: PictureSource) => void;
  /** a caption is being written (live mode waits for it) */
  busy: boolean;
  liveIntervalMs: number;
}

/** The left column: the drop target or the photo with its heatmap, or the webcam. */
export default function PhotoPanel(props: Props) {
  const { view, picture, caption, onPhoto } = props;
  const filePicker = useRef<HTMLInputElement>(null);
  const chooseButton = (
    <button
      type="button"
      onClick={() => filePicker.current?.click()}
      className="rounded-lg bg-amber-500 px-4 py-2 font-semibold text-slate-950 shadow-sm hover:bg-amber-400 focus-visible:outline-2 focus-visible:outline-offset-2 focus-visible:outline-amber-600"
    >
      {picture ? "Choose another photo" : "Choose a photo"}
    </button>
  );

  return (
    <section aria-label={view === "image" ? "Photo" : "Webcam"} className="min-w-0 space-y-4">
      {view === "webcam" && (
        <WebcamView
          onFrame={(frame) => onPhoto(frame, "webcam frame", "webcam")}
          busy={props.busy}
          intervalMs={props.liveIntervalMs}
        />
      )}
      {picture ? (
        <div>
          {view === "webcam" && (
            <p className="mb-1 text-sm font-medium text-slate-600">Last captured frame</p>
          )}
          <ImageView
            maxHeight={view === "webcam" ? "30vh" : "65vh"}
            src={picture.url}
            alt={caption ? `Photo: ${caption.caption}` : `Photo being captioned: ${picture.name}`}
            attention={caption?.attention ?? null}
            token={props.token}
            layer={props.layer}
            head={props.head}
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
          if (file) onPhoto(file, file.name, "image");
          e.target.value = "";
        }}
      />
    </section>
  );
}
