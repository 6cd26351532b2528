/** The server could not be reached: say so, with a way to try again. */
export default function OfflineBanner({ message, onRetry }: { message: string; onRetry: () => void }) {
  return (
    <div
      role="alert"
      className="mb-4 flex flex-wrap items-center justify-between gap-2 rounded-xl border border-red-200 bg-red-50 px-4 py-3 text-red-800"
    >
      <span>{message}</span>
      <button
        type="button"
        onClick={onRetry}
        className="rounded-lg border border-red-300 bg-white px-3 py-1 text-sm font-semibold hover:bg-red-100"
      >
        Retry
      </button>
    </div>
  );
}
