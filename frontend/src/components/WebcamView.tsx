import { useCallback, useEffect, useRef, useState } from "react";

/** How often live mode sends a frame to the server; captioning on the device goes frame after
 * frame (0). */
export const LIVE_INTERVAL_MS = 2000;

interface Props {
  /** a captured frame (JPEG) to caption */
  onFrame: (frame: Blob) => void;
  /** true while a caption is being written: live mode waits for it instead of queueing */
  busy: boolean;
  /** live mode's least time from one frame to the next */
  intervalMs?: number;
}

/** How many captions live mode has written since it was switched on, and how fast. */
function useLiveRate(live: boolean, busy: boolean): { captions: number; perSecond: number } | null {
  const [stats, setStats] = useState<{ since: number; captions: number; last: number } | null>(null);
  const wasBusy = useRef(busy);
  useEffect(() => {
    setStats(live ? { since: performance.now(), captions: 0, last: performance.now() } : null);
  }, [live]);
  useEffect(() => {
    if (wasBusy.current && !busy) {
      setStats((s) => s && { ...s, captions: s.captions + 1, last: performance.now() });
    }
    wasBusy.current = busy;
  }, [busy]);
  if (!stats || stats.captions === 0) return null;
  return { captions: stats.captions, perSecond: (stats.captions * 1000) / (stats.last - stats.since) };
}

/** The camera: capture a frame on click, or keep captioning frames in live mode. */
export default function WebcamView({ onFrame, busy, intervalMs = LIVE_INTERVAL_MS }: Props) {
  const video = useRef<HTMLVideoElement>(null);
  const lastFrame = useRef(0);
  const [ready, setReady] = useState(false);
  const [problem, setProblem] = useState<string | null>(null);
  const [live, setLive] = useState(false);
  const rate = useLiveRate(live, busy);

  useEffect(() => {
    if (!navigator.mediaDevices?.getUserMedia) {
      setProblem("This browser has no camera access (it needs HTTPS or localhost).");
      return;
    }
    let stream: MediaStream | null = null;
    let cancelled = false;
    navigator.mediaDevices
      .getUserMedia({ video: { width: { ideal: 640 }, height: { ideal: 480 } }, audio: false })
      .then((s) => {
        stream = s;
        if (cancelled || !video.current) return s.getTracks().forEach((t) => t.stop());
        video.current.srcObject = s;
        return video.current.play();
      })
      .catch((error: Error) =>
        setProblem(
          error.name === "NotAllowedError"
            ? "Camera permission was refused. Allow it in the browser's site settings."
            : `No camera available (${error.message || error.name}).`,
        ),
      );
    return () => {
      cancelled = true;
      stream?.getTracks().forEach((t) => t.stop());
    };
  }, []);

  const capture = useCallback(() => {
    const v = video.current;
    if (!v || !v.videoWidth) return;
    lastFrame.current = performance.now();
    const canvas = document.createElement("canvas");
    canvas.width = v.videoWidth;
    canvas.height = v.videoHeight;
    canvas.getContext("2d")?.drawImage(v, 0, 0);
    canvas.toBlob((blob) => blob && onFrame(blob), "image/jpeg", 0.9);
  }, [onFrame]);

  // The next frame once the caption of the last one is written and `intervalMs` have passed.
  useEffect(() => {
    if (!live || !ready || busy) return;
    const wait = Math.max(0, lastFrame.current + intervalMs - performance.now());
    const timer = setTimeout(capture, wait);
    return () => clearTimeout(timer);
  }, [live, ready, busy, intervalMs, capture]);

  if (problem) {
    return (
      <p role="alert" className="rounded-xl border border-red-200 bg-red-50 p-4 text-red-800">
        {problem}
      </p>
    );
  }
  return (
    <div className="space-y-3">
      <video
        ref={video}
        muted
        playsInline
        onLoadedData={() => setReady(true)}
        aria-label="Live camera view"
        className="block w-full rounded-xl bg-slate-900 shadow-sm"
      />
      <div className="flex flex-wrap items-center gap-3">
        <button
          type="button"
          onClick={capture}
          disabled={!ready}
          className="rounded-lg bg-amber-500 px-4 py-2 font-semibold text-slate-950 shadow-sm hover:bg-amber-400 focus-visible:outline-2 focus-visible:outline-offset-2 focus-visible:outline-amber-600 disabled:opacity-50"
        >
          Capture frame
        </button>
        <label className="flex cursor-pointer items-center gap-2 text-sm font-medium">
          <input
            type="checkbox"
            role="switch"
            checked={live}
            disabled={!ready}
            onChange={(e) => setLive(e.target.checked)}
            className="h-4 w-4 accent-amber-500"
          />
          {intervalMs > 0
            ? `Live: caption every ${intervalMs / 1000} seconds`
            : "Live: caption frame after frame"}
        </label>
        {!ready && <span className="text-sm text-slate-500">Starting the camera…</span>}
        {rate && (
          <span className="text-sm text-slate-500" data-testid="live-rate">
            {rate.captions} captions, {rate.perSecond.toFixed(1)} a second
          </span>
        )}
      </div>
    </div>
  );
}
