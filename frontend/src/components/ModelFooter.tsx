import { modelName } from "../backend";
import type { ModelDescription } from "../backend";

/** Numbers recorded with the model (dev-set metrics and the like), at most two levels deep. */
export function metrics(metadata: Record<string, unknown>): [string, number][] {
  const found: [string, number][] = [];
  for (const [key, value] of Object.entries(metadata)) {
    if (typeof value === "number") found.push([key, value]);
    else if (value && typeof value === "object") {
      for (const [inner, v] of Object.entries(value)) {
        if (typeof v === "number") found.push([inner, v]);
      }
    }
  }
  return found;
}

export default function ModelFooter({ model }: { model: ModelDescription }) {
  const numbers = metrics(model.metadata);
  return (
    <footer className="mt-8 border-t border-slate-200 pt-3 text-xs text-slate-500">
      Model: {modelName(model)} ({model.decoder.heads} heads, width {model.decoder.d_model})
      {numbers.length > 0 &&
        ` · dev ${numbers.map(([k, v]) => `${k} ${Number(v.toFixed(3))}`).join(", ")}`}
    </footer>
  );
}
