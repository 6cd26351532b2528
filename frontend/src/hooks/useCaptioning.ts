import { useCallback, useEffect, useState } from "react";
import type { CaptionResult } from "../api";
import { asCaptionError } from "../backend";
import type { CaptionError, CaptioningBackend } from "../backend";

/** Where a picture came from: a photo (dropped, pasted, picked) or the webcam. */
export type PictureSource = "image" | "webcam";

export interface Picture {
  blob: Blob;
  url: string;
  name: string;
  source: PictureSource;
}

export interface Captioning {
  picture: Picture | null;
  /** the caption of `picture` by the current backend and beam, once it is written */
  caption: CaptionResult | null;
  loading: boolean;
  error: CaptionError | null;
  /** show a new photo (or webcam frame) and caption it */
  show: (blob: Blob, name: string, source: PictureSource) => void;
}

/** The photo on show and its caption: captioned again whenever the photo, the backend or the
 * beam changes; an answer for anything but the latest of the three is dropped. A photo shown
 * before any backend is ready is captioned as soon as one is. */
export function useCaptioning(backend: CaptioningBackend | null, numBeams: number): Captioning {
  const [picture, setPicture] = useState<Picture | null>(null);
  const [result, setResult] = useState<{ for: Picture; caption: CaptionResult } | null>(null);
  const [loading, setLoading] = useState(false);
  const [error, setError] = useState<CaptionError | null>(null);

  useEffect(() => {
    if (!picture || !backend) return;
    const controller = new AbortController();
    setLoading(true);
    setError(null);
    backend
      .caption(picture.blob, { numBeams }, controller.signal)
      .then((caption) => {
        if (!controller.signal.aborted) setResult({ for: picture, caption });
      })
      .catch((e) => {
        if (controller.signal.aborted) return;
        const failure = asCaptionError(e);
        setError(failure);
        if (failure.kind === "input") {
          // Not a picture after all: back to the drop target rather than a broken image.
          setPicture((shown) => (shown === picture ? null : shown));
          URL.revokeObjectURL(picture.url);
        }
      })
      .finally(() => {
        if (!controller.signal.aborted) setLoading(false);
      });
    return () => controller.abort();
  }, [picture, backend, numBeams]);

  const show = useCallback((blob: Blob, name: string, source: PictureSource) => {
    const next = { blob, url: URL.createObjectURL(blob), name, source };
    setPicture((previous) => {
      if (previous) URL.revokeObjectURL(previous.url);
      return next;
    });
  }, []);

  const caption = result && result.for === picture ? result.caption : null;
  return { picture, caption, loading, error, show };
}
