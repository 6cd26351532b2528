interface Props<T extends string> {
  label: string;
  options: readonly { value: T; label: string }[];
  value: T;
  onChange: (value: T) => void;
}

/** A row of mutually exclusive buttons (a segmented control); the chosen one is pressed. */
export default function ToggleGroup<T extends string>({ label, options, value, onChange }: Props<T>) {
  return (
    <div role="group" aria-label={label} className="flex rounded-lg bg-slate-200 p-1">
      {options.map((option) => (
        <button
          key={option.value}
          type="button"
          aria-pressed={value === option.value}
          onClick={() => onChange(option.value)}
          className="rounded-md px-3 py-1.5 text-sm font-semibold text-slate-600 focus-visible:outline-2 focus-visible:outline-amber-500 aria-pressed:bg-white aria-pressed:text-slate-950 aria-pressed:shadow-sm"
        >
          {option.label}
        </button>
      ))}
    </div>
  );
}
