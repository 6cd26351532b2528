interface Props {
  tokens: string[];
  /** the word pinned by a click or tap (stays shown), or null */
  pinned: number | null;
  onHover: (token: number | null) => void;
  onPin: (token: number | null) => void;
}

/** The caption as buttons, one per token: hover or focus shows its heatmap, click or tap pins it. */
export default function CaptionWords({ tokens, pinned, onHover, onPin }: Props) {
  return (
    <div role="group" aria-label="Caption words" className="flex flex-wrap gap-1.5 text-xl leading-relaxed">
      {tokens.map((token, i) => (
        <button
          key={i}
          type="button"
          aria-pressed={pinned === i}
          title={`Show where the model looked for “${token}”`}
          onMouseEnter={() => onHover(i)}
          onMouseLeave={() => onHover(null)}
          onFocus={() => onHover(i)}
          onBlur={() => onHover(null)}
          onClick={() => onPin(pinned === i ? null : i)}
          className="rounded-md px-1.5 py-0.5 font-medium text-slate-800 hover:bg-amber-100 focus-visible:bg-amber-100 focus-visible:outline-2 focus-visible:outline-amber-500 aria-pressed:bg-amber-300 aria-pressed:text-slate-950"
        >
          {token || "·"}
        </button>
      ))}
    </div>
  );
}
