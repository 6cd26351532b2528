import { useEffect, useRef, useState } from "react";
import type { AttentionMaps } from "../api";
import { drawHeatmap, selectMap } from "../attention";

interface Props {
  src: string;
  alt: string;
  attention: AttentionMaps | null;
  /** the word whose attention to lay over the image, or null for the bare image */
  token: number | null;
  layer: number | null;
  head: number | null;
  /** the tallest the image may be drawn, as a CSS length */
  maxHeight?: string;
}

const HEATMAP_SIZE = 256; // canvas pixels; CSS stretches it over the crop box

/** The photo, with one word's attention heatmap over the part of it the model saw. */
export default function ImageView(props: Props) {
  const { src, alt, attention, token, layer, head, maxHeight = "65vh" } = props;
  const canvas = useRef<HTMLCanvasElement>(null);
  const [aspect, setAspect] = useState<number | null>(null); // width / height, once loaded
  const shown = attention !== null && token !== null && token < attention.mean.length;

  useEffect(() => {
    if (!canvas.current || !attention) return;
    const values = shown ? selectMap(attention, token, layer, head) : null;
    drawHeatmap(canvas.current, values, attention.grid_h, attention.grid_w);
  }, [attention, token, layer, head, shown]);

  const crop = attention?.crop;
  return (
    // Small photos are scaled up to the column, tall ones down to `maxHeight`; the figure wraps
    // the image exactly, so the heatmap's percentages land on the right pixels.
    <figure
      className="relative mx-auto"
      style={{ width: aspect ? `min(100%, calc(${maxHeight} * ${aspect}))` : "100%" }}
    >
      <img
        src={src}
        alt={alt}
        onLoad={(e) => setAspect(e.currentTarget.naturalWidth / e.currentTarget.naturalHeight)}
        className="block h-auto w-full rounded-xl shadow-sm"
      />
      {crop && (
        <canvas
          ref={canvas}
          width={HEATMAP_SIZE}
          height={HEATMAP_SIZE}
          data-testid="heatmap"
          data-token={shown ? token : ""}
          aria-hidden="true"
          className={`pointer-events-none absolute rounded-sm ${shown ? "visible" : "invisible"}`}
          style={{
            left: `${crop.x * 100}%`,
            top: `${crop.y * 100}%`,
            width: `${crop.width * 100}%`,
            height: `${crop.height * 100}%`,
          }}
        />
      )}
    </figure>
  );
}
