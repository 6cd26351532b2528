import { Fragment } from "react";
import type { Sentence, SentencePart } from "../sentence";

interface Props {
  sentence: Sentence;
  /** the token pinned by a click or tap (stays shown), or null */
  pinned: number | null;
  onHover: (token: number | null) => void;
  onPin: (token: number | null) => void;
}

/** The parts a space comes before: a word with its punctuation and word pieces, kept on one
 * line. */
function words(parts: SentencePart[]): SentencePart[][] {
  const grouped: SentencePart[][] = [];
  for (const part of parts) {
    if (part.space || grouped.length === 0) grouped.push([part]);
    else grouped.at(-1)!.push(part);
  }
  return grouped;
}

/** The caption as a sentence whose tokens are buttons: hover or focus shows a token's heatmap,
 * click or tap pins it. */
export default function CaptionWords({ sentence, pinned, onHover, onPin }: Props) {
  const grouped = words(sentence.parts);
  return (
    <p role="group" aria-label="Caption words" className="min-w-0 text-xl leading-relaxed text-slate-800">
      {grouped.map((word, w) => (
        <Fragment key={word[0].token}>
          {w > 0 && " "}
          <span className="whitespace-nowrap">
            {word.map(({ token, text }) => (
              <button
                key={token}
                type="button"
                aria-pressed={pinned === token}
                title={`Show where the model looked for “${text}”`}
                onMouseEnter={() => onHover(token)}
                onMouseLeave={() => onHover(null)}
                onFocus={() => onHover(token)}
                onBlur={() => onHover(null)}
                onClick={() => onPin(pinned === token ? null : token)}
                className="-mx-px rounded px-px font-medium hover:bg-amber-100 focus-visible:bg-amber-100 focus-visible:outline-2 focus-visible:outline-amber-500 aria-pressed:bg-amber-300 aria-pressed:text-slate-950"
              >
                {text || "·"}
              </button>
            ))}
            {w === grouped.length - 1 && sentence.tail}
          </span>
        </Fragment>
      ))}
    </p>
  );
}
