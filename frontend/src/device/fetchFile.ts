/** The site's big files (ONNX Runtime's WASM, the model's graphs) are stored gzip-compressed
 * (`captioner export --web`, the page's build): a name ending in `.gz` is decompressed here, by
 * the browser's own gzip. */

/** Where the page's build puts ONNX Runtime Web's WASM, gzip-compressed (a quarter of its 14
 * MB), relative to the page (vite.config.ts writes it). */
export const ORT_WASM_FILE = "assets/ort-wasm-simd-threaded.wasm.gz";

export const GZIP_SUFFIX = ".gz";

/** Whether `bytes` start as every gzip member does. */
export function isGzip(bytes: Uint8Array): boolean {
  return bytes.length >= 2 && bytes[0] === 0x1f && bytes[1] === 0x8b;
}

/** `bytes` decompressed; an error when they are not whole gzip data. */
export async function gunzip(bytes: Uint8Array<ArrayBuffer>): Promise<Uint8Array<ArrayBuffer>> {
  const stream = new Response(bytes).body!.pipeThrough(new DecompressionStream("gzip"));
  return new Uint8Array(await new Response(stream).arrayBuffer());
}

/** Called as a file arrives: bytes so far, and all of them (null when the server does not say). */
export type OnBytes = (loaded: number, total: number | null) => void;

/** The file at `url`, decompressed when its name ends in `.gz` (unless the server already did,
 * as one that sends such files with `Content-Encoding: gzip` does). `onBytes` follows the
 * download. Errors name the file. */
export async function fetchFile(url: string, onBytes?: OnBytes): Promise<Uint8Array<ArrayBuffer>> {
  const response = await fetch(url);
  if (!response.ok) throw new Error(`${url} answered ${response.status}`);
  const bytes = onBytes ? await readCounting(response, onBytes) : new Uint8Array(await response.arrayBuffer());
  if (!new URL(url).pathname.endsWith(GZIP_SUFFIX) || !isGzip(bytes)) return bytes;
  try {
    return await gunzip(bytes);
  } catch (error) {
    throw new Error(`${url} is not whole gzip data: ${(error as Error)?.message ?? error}`);
  }
}

/** The body of `response`, telling `onBytes` as it arrives. The size is the Content-Length
 * unless the server compressed the body on the way (the length then counts other bytes). */
async function readCounting(response: Response, onBytes: OnBytes): Promise<Uint8Array<ArrayBuffer>> {
  const length = Number(response.headers.get("content-length") ?? NaN);
  const total = Number.isSafeInteger(length) && !response.headers.has("content-encoding") ? length : null;
  onBytes(0, total);
  if (!response.body) {
    const bytes = new Uint8Array(await response.arrayBuffer());
    onBytes(bytes.length, total);
    return bytes;
  }
  const chunks: Uint8Array[] = [];
  let loaded = 0;
  const reader = response.body.getReader();
  for (let read = await reader.read(); !read.done; read = await reader.read()) {
    chunks.push(read.value);
    loaded += read.value.length;
    onBytes(loaded, total);
  }
  const bytes = new Uint8Array(loaded);
  let at = 0;
  for (const chunk of chunks) {
    bytes.set(chunk, at);
    at += chunk.length;
  }
  return bytes;
}
