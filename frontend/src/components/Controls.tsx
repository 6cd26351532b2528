interface Props {
  /** the beam sizes offered (1 is greedy) */
  numBeamsChoices: number[];
  numBeams: number;
  onNumBeams: (numBeams: number) => void;
  /** layer and head counts of the current attention maps; 0 hides those selectors */
  layers: number;
  heads: number;
  layer: number | null;
  head: number | null;
  onLayer: (layer: number | null) => void;
  onHead: (head: number | null) => void;
}

const decodingLabel = (numBeams: number) => (numBeams === 1 ? "Greedy" : `Beam search (${numBeams})`);

const selectClass =
  "mt-1 block w-full rounded-lg border border-slate-300 bg-white px-2 py-1.5 text-sm focus:outline-2 focus:outline-amber-500";

function Choice(props: {
  label: string;
  value: number | null;
  count: number;
  name: string;
  all: string;
  onChange: (value: number | null) => void;
}) {
  const { label, value, count, name, all, onChange } = props;
  return (
    <label className="block text-sm font-medium text-slate-600">
      {label}
      <select
        className={selectClass}
        value={value === null ? "mean" : String(value)}
        onChange={(e) => onChange(e.target.value === "mean" ? null : Number(e.target.value))}
      >
        <option value="mean">{all}</option>
        {Array.from({ length: count }, (_, i) => (
          <option key={i} value={i}>
            {name} {i + 1}
          </option>
        ))}
      </select>
    </label>
  );
}

/** Decoding (greedy or beam) and which attention layer and head to show (mean by default). */
export default function Controls(props: Props) {
  return (
    <div className="grid grid-cols-2 gap-3">
      <label className="col-span-2 block text-sm font-medium text-slate-600">
        Decoding
        <select
          className={selectClass}
          value={props.numBeams}
          onChange={(e) => props.onNumBeams(Number(e.target.value))}
        >
          {props.numBeamsChoices.map((numBeams) => (
            <option key={numBeams} value={numBeams}>
              {decodingLabel(numBeams)}
            </option>
          ))}
        </select>
      </label>
      {props.layers > 0 && (
        <>
          <Choice
            label="Attention layer"
            value={props.layer}
            count={props.layers}
            name="Layer"
            all="All layers (mean)"
            onChange={props.onLayer}
          />
          <Choice
            label="Attention head"
            value={props.head}
            count={props.heads}
            name="Head"
            all="All heads (mean)"
            onChange={props.onHead}
          />
        </>
      )}
    </div>
  );
}
