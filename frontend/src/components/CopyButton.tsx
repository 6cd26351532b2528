import { useEffect, useState } from "react";
import { copyText } from "../clipboard";

/** How long "Copied" stays on the button. */
const CONFIRM_MS = 2000;

/** Copies `text`; the button itself says "Copied" (or that it could not) for a moment. */
export default function CopyButton({ text }: { text: string }) {
  const [outcome, setOutcome] = useState<{ for: string; copied: boolean } | null>(null);
  useEffect(() => {
    if (!outcome) return;
    const timer = setTimeout(() => setOutcome(null), CONFIRM_MS);
    return () => clearTimeout(timer);
  }, [outcome]);
  const shown = outcome?.for === text ? outcome : null;
  return (
    <button
      type="button"
      onClick={async () => setOutcome({ for: text, copied: await copyText(text) })}
      title="Copy the caption (alt text, a data set's caption)"
      className="shrink-0 rounded-lg border border-slate-300 bg-white px-3 py-1 text-sm font-semibold text-slate-700 shadow-sm hover:bg-slate-50 focus-visible:outline-2 focus-visible:outline-offset-2 focus-visible:outline-amber-600"
    >
      {shown ? (shown.copied ? "Copied" : "Copy failed: select the text") : "Copy caption"}
    </button>
  );
}
