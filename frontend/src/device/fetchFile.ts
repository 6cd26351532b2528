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

/** The file at `url`, decompressed when its name ends in `.gz` (unless the server already did,
 * as one that sends such files with `Content-Encoding: gzip` does). Errors name the file. */
export async function fetchFile(url: string): Promise<Uint8Array<ArrayBuffer>> {
  const response = await fetch(url);
  if (!response.ok) throw new Error(`${url} answered ${response.status}`);
  const bytes = new Uint8Array(await response.arrayBuffer());
  if (!new URL(url).pathname.endsWith(GZIP_SUFFIX) || !isGzip(bytes)) return bytes;
  try {
    return await gunzip(bytes);
  } catch (error) {
    throw new Error(`${url} is not whole gzip data: ${(error as Error)?.message ?? error}`);
  }
}
